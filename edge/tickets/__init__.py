"""Tickets: signed format, issuer keys, gate-side verification, revocation, ledger, codes, scanners.

The public names of the format, keys, verifier and revocation modules are re-exported here, so
callers write `from edge import tickets as tk` and `tk.Verifier(...)`.
"""

from edge.tickets.format import (
    MAX_TEXT,
    PREFIX,
    REASONS,
    VERSION,
    Kind,
    Reason,
    Ticket,
    decode_payload,
    encode_payload,
    key_id,
    sign,
    split_text,
)
from edge.tickets.keys import keygen, load_private, load_public
from edge.tickets.revocation import load_revocations, revoke
from edge.tickets.verifier import Verdict, Verifier

__all__ = [
    "MAX_TEXT",
    "PREFIX",
    "REASONS",
    "Reason",
    "VERSION",
    "Kind",
    "Ticket",
    "Verdict",
    "Verifier",
    "decode_payload",
    "encode_payload",
    "key_id",
    "keygen",
    "load_private",
    "load_public",
    "load_revocations",
    "revoke",
    "sign",
    "split_text",
]
