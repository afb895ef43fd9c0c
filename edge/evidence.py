"""Evidence that cannot be edited silently: the lane's evidence key, keyed chains, the witness.

The audit log and the redemption ledger are hash chains twice over. A plain SHA-256 chain
(`link`) that anyone can recompute, so the office checks a lane's published records against
the head the lane signed; and an HMAC-SHA256 chain (`EvidenceKey.mac`) under a per-lane key
that only the gate's own processes read (`audit.evidence_key`, 0600, never `edge-gate sync`),
so rows edited or removed with `sqlite3`, a forged purge checkpoint, or a chain recomputed
after an edit no longer verify.

A chain proves order, not freshness: an older copy of a whole file is a valid chain. So the
newest keyed head of each store is also written to the `Witness`, a small keyed file beside
the key (not beside the data, so restoring a data file from a backup does not restore it);
a file whose chain stops short of the witnessed head, or whose head differs, was restored or
rewritten. Whoever can read the key (root, the service user) can forge both: the office's
copy of the signed heads is what catches that (docs/FLEET.md, threat model).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import hashlib
import hmac
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edge.errors import KeyFileError
from edge.files import write_atomic
from edge.keyfiles import check_private_key, write_secret

GENESIS = "0" * 64
KEY_HEADER = "edge-gate-evidence-v1:"


def link(prev: str, body: str) -> str:
    """The plain chain: SHA-256 over the previous hash and one entry's canonical text."""
    return hashlib.sha256(f"{prev}\n{body}".encode()).hexdigest()


@dataclass(frozen=True)
class EvidenceKey:
    """The lane's HMAC key for its evidence chains (never logged, never sent)."""

    key: bytes
    path: Path

    @functools.cached_property
    def kid(self) -> str:
        """Public fingerprint: tells which key a chain was keyed with, reveals nothing."""
        return hashlib.sha256(b"edge-gate-evidence-kid" + self.key).hexdigest()[:16]

    def sign(self, *parts: str) -> str:
        """HMAC-SHA256 over the parts, one per line."""
        return hmac.new(self.key, "\n".join(parts).encode(), hashlib.sha256).hexdigest()

    def mac(self, prev_mac: str, h: str) -> str:
        """The keyed chain: each entry's MAC covers the previous MAC and the entry's plain hash."""
        return self.sign("link", prev_mac, h)

    def genesis(self, chain_id: str) -> str:
        """Where a keyed chain starts: bound to the file's random id, so chains can't be swapped."""
        return self.sign("genesis", chain_id)


def create_key(path: Path) -> EvidenceKey:
    """A new evidence key (0600); refused if the file exists (a new key orphans every chain)."""
    key = os.urandom(32)
    write_secret(
        path,
        KEY_HEADER + base64.b64encode(key).decode() + "\n",
        "keep it: a new evidence key cannot verify the chains the old one keyed",
    )
    check_private_key(path, "evidence key")
    return EvidenceKey(key, Path(path))


def load_key(path: Path) -> EvidenceKey:
    """Read the evidence key; missing, loose permissions or damaged is a KeyFileError."""
    path = Path(path)
    try:
        check_private_key(path, "evidence key")
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        raise KeyFileError(
            f"evidence key {path} does not exist",
            "restore it from the lane's backup; on a new lane `edge-gate ledger init --config C` "
            "creates it",
        ) from None
    except PermissionError:
        raise KeyFileError(
            f"evidence key {path} cannot be read by this user",
            "run the command as the gate's service user (or root)",
        ) from None
    try:
        key = base64.b64decode(text.removeprefix(KEY_HEADER), validate=True)
    except ValueError:
        key = b""
    if not text.startswith(KEY_HEADER) or len(key) != 32:
        raise KeyFileError(f"evidence key {path} is damaged", "restore it from the lane's backup")
    return EvidenceKey(key, path)


def load_or_create_key(path: Path) -> EvidenceKey:
    """The lane's evidence key, created on its first run (the gate, `ledger init`); a key that
    cannot be written (a full disk, a folder this user may not write) is that error."""
    if not Path(path).exists():
        try:
            return create_key(path)
        except KeyFileError:
            if not Path(path).exists():  # not created meanwhile by another process
                raise
    return load_key(path)


@dataclass(frozen=True)
class Mark:
    """The newest keyed head of one store: its file's random id, entries keyed, last MAC; for
    the ledger also its own redemptions counted (`local`: the rest are other lanes')."""

    id: str
    n: int
    mac: str
    local: int | None = None


def _plain(m: Mark) -> dict:
    """A mark as the witness file holds it (`local` only where it is known)."""
    out: dict = {"id": m.id, "n": m.n, "mac": m.mac}
    if m.local is not None:
        out["local"] = m.local
    return out


def _opt_int(v) -> int | None:
    return None if v is None else int(v)


class WitnessError(KeyFileError):
    """The witness file does not verify under the evidence key."""


class Witness:
    """The newest keyed head of each store, in a keyed file beside the evidence key."""

    def __init__(self, key: EvidenceKey):
        self.key = key
        self.path = key.path.with_name(key.path.stem + ".witness")

    def _read(self) -> dict[str, Mark]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as e:  # damaged to bytes that are not text
            raise WitnessError(
                f"evidence witness {self.path} is unreadable: {e}", self._fix()
            ) from None
        if not text:  # emptied (a witness naming no store: a keyed store beside it is a break)
            return {}
        try:
            data = json.loads(text)
        except ValueError as e:
            raise WitnessError(
                f"evidence witness {self.path} is unreadable: {e}", self._fix()
            ) from None
        marks = data.get("marks") if isinstance(data, dict) else None
        if not isinstance(marks, dict) or not hmac.compare_digest(
            str(data.get("mac", "")), self.key.sign("witness", _canon(marks))
        ):
            raise WitnessError(
                f"evidence witness {self.path} does not verify under evidence key "
                f"{self.key.kid}: it was edited, or the key was replaced",
                self._fix(),
            )
        try:
            return {
                k: Mark(str(v["id"]), int(v["n"]), str(v["mac"]), _opt_int(v.get("local")))
                for k, v in marks.items()
            }
        except (KeyError, TypeError, ValueError) as e:
            raise WitnessError(
                f"evidence witness {self.path} is damaged: {e}", self._fix()
            ) from None

    def _fix(self) -> str:
        return (
            f"if {self.key.path.name} was replaced, put the lane's own key back; if the key is "
            f"lost, or {self.path.name} is damaged, move {self.path.name} aside, then `edge-gate "
            "audit adopt --config C` and `edge-gate ledger recover --config C` (it asks for "
            "--accept-loss: without the witness, what went back with the files cannot be told)"
        )

    def get(self, store: str) -> Mark | None:
        """The newest head witnessed for a store ("audit", "ledger"), or None."""
        return self._read().get(store)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def advance(self, store: str, mark: Mark, replace: bool = False) -> None:
        """Record a newer head (same file id, more entries); `replace` adopts another file
        (`ledger recover`, a new log). Written whole (rename), after the data's own commit."""
        with self._locked():
            try:
                marks = self._read()
            except WitnessError:
                if not replace:
                    raise
                marks = {}  # an explicit adoption rewrites a damaged witness
            old = marks.get(store)
            if not replace and old is not None and old.id == mark.id and old.n >= mark.n:
                return
            if not replace and old is not None and old.id != mark.id:
                return  # another file: only an explicit adoption replaces the witness
            marks[store] = mark
            plain = {k: _plain(m) for k, m in marks.items()}
            body = {"v": 1, "marks": plain, "mac": self.key.sign("witness", _canon(plain))}
            write_atomic(self.path, json.dumps(body, sort_keys=True), 0o600)


def _canon(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def key_path(cfg) -> Path:
    """Where a config keeps the lane's evidence key: `audit.evidence_key`, or "" for
    `evidence.key` in the audit log's folder (the lane's state directory)."""
    if cfg.audit.evidence_key:
        return cfg.resolve(cfg.audit.evidence_key)
    return cfg.resolve(cfg.audit.path).parent / "evidence.key"


def lane_key(path: Path, mode: str) -> EvidenceKey | None:
    """The lane's evidence key for a command: "create" (the gate and its local tools: made on
    the lane's first run), "use" (if it exists and this user may read it, else None: records stay
    unkeyed until the gate keys them), "none" (`edge-gate sync`, which never reads it). A key
    with loose permissions is refused in every mode but "none"."""
    if mode == "create":
        return load_or_create_key(path)
    if mode == "use" and Path(path).exists():
        try:
            return load_key(path)
        except KeyFileError as e:
            if "cannot be read by this user" not in str(e):
                raise
    return None
