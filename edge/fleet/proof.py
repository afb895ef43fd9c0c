"""Which ticket a redemption message names: the ticket's own signed bytes, checked on arrival.

A lane names the ticket it redeemed by the text it scanned ("EG" + payload + issuer signature),
not by an id: the receiver verifies the issuer's signature and takes the id, kind and entries
from the verified ticket. So a redemption cannot be pointed at another ticket, even by a lane
whose key was stolen: it can only claim tickets whose signed text it has seen. Validity windows
and revocations are not checked here: they were the redeeming lane's decision at the time.
"""

from __future__ import annotations

from dataclasses import replace

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.fleet.messages import MessageError
from edge.tickets.format import Ticket, decode_payload, key_id, signed_text, split_text


def verify_proof(text: str, keys: list[Ed25519PublicKey]) -> Ticket:
    """The ticket a redemption proves, or MessageError saying why it proves nothing."""
    try:
        payload, sig = split_text(text)
    except ValueError as e:
        raise MessageError(f"redemption names no signed ticket ({e})") from None
    by_id = {key_id(k): k for k in keys}
    key = by_id.get(payload[1:5])
    if key is None:
        raise MessageError(f"redemption's ticket is signed by unknown key {payload[1:5].hex()}")
    try:
        key.verify(sig, payload)
        t = decode_payload(payload)
    except InvalidSignature:
        raise MessageError("redemption's ticket has a bad issuer signature") from None
    except (ValueError, UnicodeDecodeError, IndexError) as e:
        raise MessageError(f"redemption's ticket is malformed: {e}") from None
    return replace(t, text=signed_text(payload, sig))
