"""Typed errors. Each one says what the operator must fix, so a log line is actionable."""

from __future__ import annotations

import dataclasses
import time

REPEAT_EVERY_S = 60.0  # the same error said again at most this often


class EdgeGateError(Exception):
    """Base class: every error the product raises on purpose derives from this."""

    hint: str = ""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        msg = super().__str__()
        return f"{msg} (fix: {self.hint})" if self.hint else msg


class ConfigError(EdgeGateError):
    """A configuration file or value is wrong; names file, key and value."""


class ModelError(EdgeGateError):
    """A model file is missing, corrupt or has an unexpected shape."""


class RuntimeMissingError(ModelError):
    """Neither ai-edge-litert nor tflite-runtime is importable."""


class ImageError(EdgeGateError):
    """An image or frame cannot be decoded or has an unsupported layout."""


class SourceError(EdgeGateError):
    """A frame source (file or camera) cannot be opened or read."""


class KeyFileError(EdgeGateError):
    """A key file is missing, has loose permissions, or does not open the data."""


class GalleryError(EdgeGateError):
    """The gallery database is unreadable, from a newer schema, or inconsistent."""


class GalleryGoneError(GalleryError):
    """The gallery file was deleted under a running process that had it: it is never made anew,
    empty, in its place (every enrolment in it would be lost without a word)."""


class ConsentError(EdgeGateError):
    """Enrollment was attempted without the consent the law requires."""


class EnrollError(EdgeGateError):
    """Enrollment could not produce a usable template."""


class NotTextError(EnrollError):
    """A name or other detail to store is not UTF-8 text (typed in a terminal, or named by a
    folder or file, in another encoding)."""


class SeveralFacesError(EnrollError):
    """A photo to enroll from shows more than one face: whose pass it is cannot be told."""


class TicketError(EdgeGateError):
    """A ticket could not be issued or the ticket key material is wrong."""


class RelayError(EdgeGateError):
    """The relay or GPIO pin factory cannot be set up."""


class LedgerError(EdgeGateError):
    """The redemption ledger is missing, unreadable, replaced or older than the gate last saw."""


class AuditError(EdgeGateError):
    """The audit log is unreadable, cannot be written, or its chain does not verify."""


class ReasonError(EdgeGateError):
    """A reason typed for the audit log (an override, a deletion) is empty or too long to keep
    whole."""


class FleetStateError(EdgeGateError):
    """The lane's fleet state file (written by `edge-gate sync`) is unreadable."""


class ClockError(EdgeGateError):
    """The clock cannot be trusted for an irreversible step (the retention purge): it is off
    from the fleet's, its measure cannot be read, or it jumped far forward since the last purge.
    Nothing was erased; the fix is to set the time (NTP)."""


class Unforeseen:
    """Errors no step of a long-running loop expects (sync, pretix sync): each is logged and the
    loop goes on; `seen` tells whether this error is new, so its traceback is logged once, and
    whether to say it now: the same error at most once a minute, with the count since."""

    LIMIT = 100  # distinct errors remembered: a loop failing in ever new ways stays bounded

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lines = Repeats()

    def seen(self, e: BaseException, now: float | None = None) -> tuple[str, bool, int | None]:
        """(the error in one line, whether it is the first time it is seen, None: say nothing
        now, else how many times it came unsaid since its last line)."""
        kind = f"{type(e).__name__}: {e}"[:300]
        first = kind not in self._seen
        if first and len(self._seen) < self.LIMIT:
            self._seen.add(kind)
        unsaid = self._lines.seen(kind, time.monotonic() if now is None else now)
        return kind, first, unsaid


@dataclasses.dataclass
class Repeats:
    """Which lines an error that comes back again and again says (a gallery that cannot be
    read again fails every frame with a face; a step of sync fails each second): the first at
    once, the same again at most once per `window_s` with the count of times unsaid since, an
    error not said within the window at once. Pure: times are given (a clock set back says at
    once)."""

    window_s: float = REPEAT_EVERY_S
    said: dict[str, float] = dataclasses.field(default_factory=dict)  # error -> last said
    unsaid: dict[str, int] = dataclasses.field(default_factory=dict)  # error -> since then

    LIMIT = 100  # errors remembered: bounded however many kinds come

    def seen(self, error: str, now: float) -> int | None:
        """None: say nothing now; else say it, with this many times unsaid since its last line."""
        last = self.said.get(error)
        if last is not None and 0 <= now - last < self.window_s:
            self.unsaid[error] = self.unsaid.get(error, 0) + 1
            return None
        if last is None and len(self.said) >= self.LIMIT:
            self.said = {e: t for e, t in self.said.items() if 0 <= now - t < self.window_s}
            self.unsaid = {e: n for e, n in self.unsaid.items() if e in self.said}
        if error in self.said or len(self.said) < self.LIMIT:
            self.said[error] = now
        return self.unsaid.pop(error, 0)
