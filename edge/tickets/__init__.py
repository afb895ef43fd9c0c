"""Tickets: signed format, issuer keys, gate-side verification, revocation, ledger, codes, scanners.

The public names of the format, keys, verifier and revocation modules are re-exported here, so
callers write `from edge import tickets as tk` and `tk.Verifier(...)`.
"""

from edge.tickets.format import (
    ALREADY_USED,
    ANTI_PASSBACK,
    CLOCK_BEHIND,
    EXPIRED,
    INVALID_SIGNATURE,
    LEDGER_ERROR,
    MALFORMED,
    MAX_TEXT,
    NOT_YET_VALID,
    OK,
    PREFIX,
    REASONS,
    REVOKED,
    UNKNOWN_KEY,
    VERSION,
    WRONG_GATE,
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
    "ALREADY_USED",
    "ANTI_PASSBACK",
    "CLOCK_BEHIND",
    "EXPIRED",
    "INVALID_SIGNATURE",
    "LEDGER_ERROR",
    "MALFORMED",
    "MAX_TEXT",
    "NOT_YET_VALID",
    "OK",
    "PREFIX",
    "REASONS",
    "REVOKED",
    "Reason",
    "UNKNOWN_KEY",
    "VERSION",
    "WRONG_GATE",
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
