"""Gate-side ticket verification: signature, key, validity window, product, revocation; no I/O."""

from __future__ import annotations

from dataclasses import dataclass, replace

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.tickets.format import (
    Reason,
    Ticket,
    decode_payload,
    key_id,
    signed_text,
    split_text,
)


@dataclass(frozen=True)
class Verdict:
    """A ticket decision with its reason, for the gate, the desk and the audit log."""

    valid: bool
    reason: str
    ticket: Ticket | None = None
    detail: str = ""

    @property
    def ticket_id(self) -> str | None:
        """The ticket id when the payload was readable, for logs and the ledger."""
        return self.ticket.ticket_id if self.ticket else None


class Verifier:
    """Checks signature, key, validity window, product and revocation. No I/O after construction."""

    def __init__(
        self,
        pubkeys: list[Ed25519PublicKey],
        products: tuple[str, ...] = (),
        revoked: frozenset[str] = frozenset(),
        clock_skew_s: float = 300.0,
    ):
        self.keys = {key_id(k): k for k in pubkeys}
        self.products = frozenset(products)
        self.revoked = revoked
        self.skew = clock_skew_s

    def verify(self, text: str, now: float) -> Verdict:
        """Decide offline whether a scanned ticket text is genuine and valid now."""
        try:
            payload, sig = split_text(text)
            kid = payload[1:5] if len(payload) >= 5 else b""
        except ValueError as e:
            return Verdict(False, Reason.MALFORMED, detail=str(e))
        key = self.keys.get(kid)
        if key is None:
            # Parse only to tell an unknown key from garbage; nothing unsigned is trusted.
            try:
                decode_payload(payload)
            except (ValueError, UnicodeDecodeError, IndexError):
                return Verdict(False, Reason.MALFORMED, detail="unparseable payload")
            return Verdict(False, Reason.UNKNOWN_KEY, detail=kid.hex())
        try:
            key.verify(sig, payload)
        except InvalidSignature:
            return Verdict(False, Reason.INVALID_SIGNATURE)
        try:
            t = decode_payload(payload)
        except (
            ValueError,
            UnicodeDecodeError,
            IndexError,
        ) as e:  # signed but unparseable: our bug or old format
            return Verdict(False, Reason.MALFORMED, detail=str(e))
        t = replace(t, text=signed_text(payload, sig))
        if t.ticket_id in self.revoked:
            return Verdict(False, Reason.REVOKED, t)
        if t.valid_from and now + self.skew < t.valid_from:
            return Verdict(False, Reason.NOT_YET_VALID, t)
        if t.valid_until and now - self.skew > t.valid_until:
            return Verdict(False, Reason.EXPIRED, t)
        if self.products and t.product not in self.products:
            return Verdict(False, Reason.WRONG_GATE, t, detail=t.product)
        return Verdict(True, Reason.OK, t)
