"""The lane's forget list: which people were forgotten, and the gallery generation each reached.

`forget` destroys a person's key, but a backup of the gallery taken before holds that key too:
restored, it would bring the person back. So every erasure (and every change of a pass's
validity) moves the gallery to a new generation (a new data key; every person key rewrapped,
edge/gallery/store.py), and this list, kept beside the gallery file, records the generation
reached and the pseudonymous ids erased. A gallery file older than the list's newest
generation was restored: nobody is admitted by face until the list is replayed on it
(`edge-gate forget --replay`, or the office's list over the fleet).

One JSON object per line, appended and fsync'd *before* the gallery commits (so a crash leaves
at worst a replay to do, never a forgotten person unlisted), each carrying the SHA-256 of the
line before it, so a line edited or removed in the middle is caught. It is not keyed: it must
survive key rotations, and whoever can write beside the gallery can also read the keys the gate
uses; the office's forget list, delivered over the fleet, is the copy a lane cannot rewrite.
Only pseudonymous ids and times are written: never a name.

A last line without its newline was cut by a power loss while a forget was being recorded:
that forget never reached the gallery (its commit comes after the line), so the line is
dropped and cut off, with a warning naming the forget to run again. Any other line that does
not chain is damage, and refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edge.errors import GalleryError
from edge.files import make_private_dirs

FORMAT = "edge-gate-forget-list-v1"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ForgetEntry:
    """One line: the generation the gallery reached, when, and who was erased (maybe nobody)."""

    generation: int
    t: float
    forgot: tuple[str, ...]
    gallery: int  # the gallery's random id: another gallery's list is not this one's


class ForgetList:
    """The append-only forget list of one gallery file (`<gallery.db>.forgotten`)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._cache: tuple[tuple[int, int], list[ForgetEntry]] | None = None

    @staticmethod
    def _mac(prev: str, body: dict) -> str:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(f"{prev}\n{text}".encode()).hexdigest()

    def entries(self) -> list[ForgetEntry]:
        """Every line, checked; a line that does not verify is an error naming the fix."""
        return self._entries(None)

    def _entries(self, held: int | None) -> list[ForgetEntry]:
        """entries(); `held`: this process's descriptor holding the writers' lock (append)."""
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int] | None = (st.st_size, st.st_mtime_ns)
            if self._cache is not None and self._cache[0] == stamp:
                return self._cache[1]
            data = self.path.read_bytes()
            if data[data.rfind(b"\n") + 1 :].strip():  # a last line without its newline
                data, cut = self._cut_torn(held)
                stamp = None if cut else stamp  # the file changed: read it again next time
        except FileNotFoundError:
            return []
        out, prev = [], ""
        # damaged bytes become a line that does not verify (below), not a UnicodeDecodeError
        text = data.decode("utf-8", errors="replace")
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                mac = obj.pop("link")
                ok = obj.get("format") == FORMAT and str(mac) == self._mac(prev, obj)
                entry = ForgetEntry(
                    int(obj["g"]), float(obj["t"]), tuple(map(str, obj["forgot"])),
                    int(obj["gallery"]),
                )  # fmt: skip
            except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
                ok = False
            if not ok:
                raise GalleryError(
                    f"forget list {self.path} line {n} does not chain onto the line before it: "
                    "it was edited or a line was removed",
                    "restore it from the lane's backup (never older than the gallery), or "
                    "replay the office's forget list: edge-gate forget --replay FILE",
                )
            out.append(entry)
            prev = str(mac)
        if stamp is not None:
            self._cache = (stamp, out)
        return out

    def _cut_torn(self, held: int | None) -> tuple[bytes, bool]:
        """(The whole lines, cut), the torn last one cut off the file under the writers' lock (a
        writer still writing it has finished by then; where it cannot be cut, a reader without
        write access, it is only left out). Warns which forget to run again."""
        fd = held
        if fd is None:
            for mode in (os.O_RDWR, os.O_RDONLY):  # read-only, it still waits for a writer
                with contextlib.suppress(OSError):
                    fd = os.open(self.path, mode)
                    break
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            data = self.path.read_bytes()
            keep = data.rfind(b"\n") + 1
            torn = data[keep:]
            if not torn.strip():  # a writer holding the lock has finished the line since
                return data, False
            cut = False
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, keep)
                    os.fsync(fd)
                    cut = True
            warn_torn(
                self.path, torn, "cut off" if cut else "left out (no write access to cut it off)"
            )
            return data[:keep], cut
        finally:
            if fd is not None and held is None:
                os.close(fd)  # and the lock with it

    def _cannot_write(self, e: OSError) -> GalleryError:
        return GalleryError(
            f"forget list {self.path} cannot be written: {e.strerror or e}; nothing was erased",
            "free space on its volume, or run the command as the gate's service user "
            "(sudo -u edge-gate), then run it again",
        )

    def generation(self, gallery: int) -> int:
        """The newest generation this list records for the gallery (0: none)."""
        return max((e.generation for e in self.entries() if e.gallery == gallery), default=0)

    def newest(self) -> ForgetEntry | None:
        """The last line, whichever gallery it names."""
        entries = self.entries()
        return entries[-1] if entries else None

    def forgotten(self, gallery: int | None = None) -> set[str]:
        """Every id this list says was erased (of one gallery, or of any)."""
        return {
            pid for e in self.entries() if gallery is None or e.gallery == gallery
            for pid in e.forgot
        }  # fmt: skip

    def append(self, generation: int, t: float, forgot: Iterable[str], gallery: int) -> None:
        """Add one line, fsync'd, under an exclusive lock (several writers may share a gallery).

        A line that cannot be written whole (a full disk) is taken back: a part line would stop
        the list, and so the gallery, from opening anywhere. GalleryError: the caller's write
        (before its commit) is then undone, nothing erased."""
        try:
            make_private_dirs(self.path.parent)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as e:
            raise self._cannot_write(e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._cache = None
            entries = self._entries(fd)
            prev = ""
            if entries:  # the last line's own hash link, read back from the file
                last = self.path.read_text().rstrip("\n").rsplit("\n", 1)[-1]
                prev = str(json.loads(last)["link"])
            body = {"format": FORMAT, "g": int(generation), "t": float(t),
                    "forgot": sorted(set(forgot)), "gallery": int(gallery)}  # fmt: skip
            line = json.dumps({**body, "link": self._mac(prev, body)}, sort_keys=True)
            end = os.lseek(fd, 0, os.SEEK_END)
            try:
                rest = memoryview((line + "\n").encode())
                while rest:  # a full disk first writes part of it
                    rest = rest[os.write(fd, rest) :]
                os.fsync(fd)
            except OSError as e:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, end)
                    os.fsync(fd)
                raise self._cannot_write(e) from None
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        self._cache = None


def warn_torn(path: Path, torn: bytes, done: str) -> None:
    """Warn that a list's last line (`torn`, without its newline) was cut and is `done` (cut off,
    left out), naming the forget to run again: the one message for the lane's list and a list
    given to `forget --replay`."""
    ids = [i.decode() for i in re.findall(rb'"(P-[0-9A-Za-z-]+)"', torn)]
    if len(ids) == 1:
        what = f"the forget of {ids[0]}; run it again: edge-gate forget {ids[0]}"
    elif ids:
        what = f"the forget of {', '.join(ids)}; run it again: edge-gate forget "
        what += "--replay FILE (these ids, one a line)"
    elif re.match(rb'\{"forgot": \[\]', torn):
        what = "a purge or a pass change; run it again"
    else:
        what = "a forget whose person id was cut off; run each forget, purge or pass "
        what += "change made just before the power loss again (edge-gate people)"
    log.warning(
        "forget list %s: its last line is cut short (power lost or copied while it was written)"
        " and was %s: %s did not complete",
        path,
        done,
        what,
    )


def read_replay_file(path: Path) -> tuple[list[str], int]:
    """A forget list to replay: this format's lines (any lane's) or plain text, one person id
    per line; (ids, newest generation). Replaying erases, so an edited file can only erase
    more, never bring anyone back."""
    ids: list[str] = []
    generation = 0
    try:
        data = Path(path).read_bytes()
        keep = data.rfind(b"\n") + 1
        if data[keep:].strip() and not _whole_line(data[keep:]):  # a copy taken mid-write
            warn_torn(Path(path), data[keep:], "left out")
            data = data[:keep]
        lines = data.decode("utf-8").splitlines()
    except OSError as e:
        raise GalleryError(f"forget list {path} cannot be read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise GalleryError(
            f"forget list {path} is not text",
            "one pseudonymous id (P-...) per line, or the lines of a .forgotten file",
        ) from None
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            try:
                obj = json.loads(line)
                forgot, g = obj["forgot"], obj.get("g", 0)
            except (ValueError, KeyError, TypeError):
                forgot, g = None, None
            # a generation is a whole number SQLite can hold; the ids a list
            if not (isinstance(forgot, list) and type(g) is int and 0 <= g < 2**63):
                raise GalleryError(f"forget list {path} line {n} is not valid")
            ids += [str(x) for x in forgot]
            generation = max(generation, g)
        elif line.startswith("P-") and line.replace("-", "").isalnum():
            ids.append(line)
        else:
            raise GalleryError(
                f"forget list {path} line {n} is not a person id: {line[:40]!r}",
                "one pseudonymous id (P-...) per line, or the lines of a .forgotten file",
            )
    return ids, generation


def _whole_line(line: bytes) -> bool:
    """A last line without its newline that is still whole: a person id, or a JSON object."""
    text = line.decode("utf-8", errors="replace").strip()
    if not text.startswith("{"):
        return True  # a plain id (or text refused below, as any other line)
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False
