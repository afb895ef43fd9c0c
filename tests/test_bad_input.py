"""Bad input gets a clear error or a Deny, never a crash, never lost data.

Each test feeds one kind of bad input to the real command (`main(argv)`, or a process of its
own where the gate runs) and checks what the operator sees: exit 2 and one `edge-gate: error`
line naming what to fix, or a refusal, and no internal error (exit 70) or traceback.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import time
from pathlib import Path

import pytest

from edge.cli import main

from .helpers import edge_gate, make_config

INTERNAL = "internal error"


def _error_line(capsys, rc: int, *words: str) -> str:
    """Exit 2 and one `edge-gate` error line on stderr naming each of `words`."""
    err = capsys.readouterr().err
    assert rc == 2, err
    assert INTERNAL not in err and "Traceback" not in err, err
    lines = [x for x in err.splitlines() if x.startswith("edge-gate")]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def test_a_code_longer_than_a_file_name_is_judged_not_looked_up(tmp_path, capsys):
    """`ticket verify TEXT` asks whether TEXT names a file: a long code is no file name."""
    cfg = make_config(tmp_path)
    text = "EG" + "A" * 400  # longer than a file name may be (255 bytes)
    rc = main(["ticket", "verify", "--config", cfg.source_file, text])
    out, err = capsys.readouterr()
    assert rc == 1, err
    assert INTERNAL not in err
    assert '"reason": "malformed"' in out
    rc = main(["run", "--config", cfg.source_file, "--source", "v" * 400 + ".mp4", "--fast"])
    _error_line(capsys, rc, "does not exist", "--source")
    rc = main(["run", "--config", cfg.source_file, "--source", str(tmp_path), "--fast"])
    _error_line(capsys, rc, "is a folder, not a video", "--source")  # not "does not exist"


def test_a_pipe_named_like_an_image_is_refused_not_waited_on(tmp_path, capsys):
    """`ticket verify` and `enroll` opened a FIFO named x.png and waited for a writer for ever
    (`qr read` refused it); each now says what it is, as `run` does of a pipe given as its
    video (it said "does not exist") and `ticket verify` of a folder (it said "no ticket
    prefix")."""
    cfg = make_config(tmp_path)
    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    rc = main(["ticket", "verify", "--config", cfg.source_file, str(fifo)])
    out, err = capsys.readouterr()
    assert rc == 1, err
    assert '"reason": "malformed"' in out and "is a device or a pipe" in out
    assert main(["keys", "init", "--config", cfg.source_file]) == 0
    capsys.readouterr()
    rc = main(["enroll", "--config", cfg.source_file, "--name", "A", "--consent-version", "v1",
               str(fifo)])  # fmt: skip
    _error_line(capsys, rc, "is a device or a pipe, not an image file")
    os.mkfifo(tmp_path / "x.mp4")
    rc = main(["run", "--config", cfg.source_file, "--source", str(tmp_path / "x.mp4"), "--fast"])
    _error_line(capsys, rc, "is a device or a pipe, not a video file")  # not "does not exist"
    rc = main(["ticket", "verify", "--config", cfg.source_file, str(tmp_path)])
    out, _ = capsys.readouterr()
    assert rc == 1 and "is a folder; give an image file or the ticket text" in out, out


def _tables(db) -> set[str]:
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as c:
        return {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_a_gallery_path_naming_another_database_writes_no_gallery_into_it(tmp_path, capsys):
    """`--db audit.db` (or gallery.db set to the ledger): refused, never a gallery inside it."""
    import cv2
    import numpy as np

    from edge.gallery.crypto import init_key
    from edge.gate.audit import AuditLog

    cfg = make_config(tmp_path)
    init_key(tmp_path / "gallery.key")
    audit = tmp_path / "audit.db"
    AuditLog(audit).close()
    before = _tables(audit)
    photo = tmp_path / "wall.png"
    cv2.imwrite(str(photo), np.full((64, 64, 3), 90, np.uint8))
    g = ["--config", cfg.source_file, "--db", str(audit)]
    rc = main(["enroll", *g, "--consent-version", "v1", "--name", "X", str(photo)])
    _error_line(capsys, rc, str(audit), "another database", "--db")
    assert _tables(audit) == before

    photo = _ticket_photo(tmp_path, capsys, "DB-1")
    p = edge_gate("run", *g, "--source", photo, "--fast", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "another database" in p.stderr  # the face path is off (DEGRADED), loudly
    assert "GRANT" in p.stdout and "DB-1" in p.stdout  # tickets still work
    assert _tables(audit) == before


def _unwritable_folder(tmp_path) -> Path:
    """A folder this user cannot create files in (root writes anywhere but /proc)."""
    if os.geteuid() != 0:
        d = tmp_path / "read-only"
        d.mkdir()
        d.chmod(0o555)
        return d
    if not Path("/proc/self").is_dir():
        pytest.skip("needs /proc as a folder root cannot create files in")
    return Path("/proc")


def test_revoke_into_a_folder_it_cannot_write_is_one_line_and_changes_nothing(tmp_path, capsys):
    folder = _unwritable_folder(tmp_path)
    target = folder / "edge-gate-revoked.txt"
    rc = main(["ticket", "revoke", "--list", str(target), "--create", "T-1"])
    _error_line(capsys, rc, str(target), "cannot be written", "writable folder")
    assert not target.exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(".edge-gate-revoked")]


def _ticket_photo(tmp_path, capsys, tid: str) -> str:
    out = tmp_path / "tickets"
    rc = main(["ticket", "issue", "--key", str(tmp_path / "office" / "issuer.key"), "--id", tid,
               "--valid-until", "2099-12-31", "--out", str(out)])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    capsys.readouterr()
    return str(out / f"{tid}.png")


def test_an_events_file_on_a_full_disk_never_stops_the_gate_or_hides_a_decision(tmp_path, capsys):
    if not Path("/dev/full").is_char_device():
        pytest.skip("needs /dev/full (a file whose every write fails: disk full)")
    cfg = make_config(tmp_path)
    photo = _ticket_photo(tmp_path, capsys, "FULL-1")
    p = edge_gate("run", "--config", cfg.source_file, "--source", photo, "--fast",
                  "--events", "/dev/full", cwd=tmp_path)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert INTERNAL not in p.stderr
    assert "GRANT" in p.stdout and "FULL-1" in p.stdout  # the console still shows it
    errors = [x for x in p.stderr.splitlines() if "ERROR" in x]
    assert any("output error" in x and "No space left" in x for x in errors), p.stderr


def test_a_pretix_token_file_that_is_not_one_ascii_token_is_one_line(tmp_path, capsys):
    """A token pasted with an accent or saved as UTF-16 cannot go into an HTTP header."""
    from edge.lab.broker import free_port

    token = tmp_path / "pretix.token"
    cfg = make_config(
        tmp_path,
        f'[pretix]\ndir = "pretix"\nurl = "http://127.0.0.1:{free_port()}"\norganizer = "zoo"\n'
        f'event = "e"\ncheckin_list = 1\ntoken_file = "{token}"\n',
    )
    for content in ("tok\u20acn\n".encode(), "token\n".encode("utf-16"), b"\xff\xfe"):
        token.write_bytes(content)
        token.chmod(0o600)
        rc = main(["pretix", "sync", "--config", cfg.source_file, "--once"])
        _error_line(capsys, rc, str(token), "not one token")
    token.write_text("sometoken\n")
    for p in tmp_path.glob("ledger.db*"):
        p.unlink()  # no ledger: nothing to count ("None waiting" was printed)
    rc = main(["pretix", "sync", "--config", cfg.source_file, "--once"])
    out = capsys.readouterr().out
    assert rc == 1 and "NOT reached" in out and "none counted (no ledger read)" in out, out
    assert "None" not in out


def _gallery(tmp_path):
    from edge.gallery.crypto import init_key
    from edge.gallery.store import Gallery

    cfg = make_config(tmp_path)
    with Gallery(tmp_path / "gallery.db", init_key(tmp_path / "gallery.key")):
        pass
    return cfg


@pytest.mark.parametrize(
    "content",
    [
        "P-1\n\xff\n".encode("latin-1"),  # not UTF-8
        "token\n".encode("utf-16"),
        b'{"forgot": ["P-1"], "g": 1e400}\n',  # a generation no whole number holds
        b'{"forgot": ["P-1"], "g": 99999999999999999999999}\n',  # more than SQLite holds
        b'{"forgot": "P-1", "g": 1}\n',  # ids not a list
    ],
    ids=["latin-1", "utf-16", "infinite-g", "huge-g", "ids-not-a-list"],
)
def test_forget_replay_of_a_damaged_list_is_one_line(tmp_path, capsys, content):
    cfg = _gallery(tmp_path)
    listing = tmp_path / "office.forgotten"
    listing.write_bytes(content)
    rc = main(["forget", "--config", cfg.source_file, "--replay", str(listing)])
    _error_line(capsys, rc, str(listing))


def test_a_damaged_forget_list_beside_the_gallery_is_one_line(tmp_path, capsys):
    """The lane's own `.forgotten` file with damaged bytes: it does not verify, never a crash."""
    cfg = _gallery(tmp_path)
    own = tmp_path / "gallery.db.forgotten"
    for damage in (b"\xff\xfe garbage\n", b'{"g": 1e400, "t": 1, "forgot": [], "link": "x"}\n'):
        own.write_bytes(damage)
        rc = main(["people", "--config", cfg.source_file])
        _error_line(capsys, rc, str(own), "does not chain")


def test_purge_with_more_days_than_time_has_purges_nobody(tmp_path, capsys):
    """`purge --days 99999999999999999999` (or gallery.purge_after_days so set): no one."""
    cfg = _gallery(tmp_path)
    rc = main(["purge", "--config", cfg.source_file, "--days", "9" * 20])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert out.startswith("purged 0 people")


def test_the_screen_and_the_console_on_a_port_in_use_are_one_line(tmp_path):
    """A port another program holds: one line naming it, not an internal error (screen) or
    uvicorn's own exit status 3 (console); the screen leaves no notice socket behind."""
    import socket

    notices = tmp_path / "run" / "notices.sock"
    cfg = make_config(tmp_path, f'[screen]\nsocket = "{notices}"\n')
    with socket.create_server(("127.0.0.1", 0)) as busy:
        where = f"127.0.0.1:{busy.getsockname()[1]}"
        commands = [["screen"]]
        if importlib.util.find_spec("uvicorn") is not None:  # the console extra
            commands.append(["console"])
        for cmd in commands:
            p = edge_gate(*cmd, "--config", cfg.source_file, "--listen", where, cwd=tmp_path)
            assert p.returncode == 2, (cmd, p.returncode, p.stderr)
            last = p.stderr.strip().splitlines()[-1]
            assert last.startswith("edge-gate: error: cannot listen on " + where), last
            assert "--listen" in last and INTERNAL not in p.stderr
    assert not notices.exists()


def test_bench_on_a_still_photo_counts_one_frame(tmp_path, capsys):
    """OpenCV reports a still photo's frame count as -2**63: the progress total is unknown."""
    import cv2
    import numpy as np

    photo = tmp_path / "wall.png"
    cv2.imwrite(str(photo), np.full((64, 64, 3), 90, np.uint8))
    rc = main(["bench", "--clip", str(photo), "--threads", "1"])
    err = capsys.readouterr().err
    assert rc == 0, err
    summary = [x for x in err.splitlines() if x.startswith("bench threads=1:")]
    assert len(summary) == 1 and summary[0].startswith("bench threads=1: 1 frame(s)"), err


# Bytes that are not UTF-8 (a Latin-1 terminal, a folder from an old USB stick) reach Python as
# lone surrogates: "Bob\xff" on the command line is the str "Bob\udcff".
NOT_UTF8 = os.fsdecode(b"Bob\xff")


def _enroll_args(tmp_path) -> list[str]:
    from edge.gallery.crypto import init_key

    cfg = make_config(tmp_path)
    init_key(tmp_path / "gallery.key")
    return ["enroll", "--config", cfg.source_file, "--min-templates", "1"]


def test_enroll_details_that_are_not_utf8_are_one_line_before_any_face_work(tmp_path, capsys):
    enroll = _enroll_args(tmp_path)
    for flag in ("--consent-version", "--operator", "--consent-method"):
        args = {"--consent-version": "v1", flag: NOT_UTF8}
        given = [x for kv in args.items() for x in kv]
        rc = main([*enroll, *given, "--name", "X", str(tmp_path / "none.jpg")])
        _error_line(capsys, rc, flag, "not UTF-8")


def test_enroll_folder_refuses_a_folder_whose_name_is_not_utf8_and_says_so(tmp_path, capsys):
    import cv2
    import numpy as np

    enroll = _enroll_args(tmp_path)
    person = Path(os.fsdecode(bytes(tmp_path / "people") + b"/Bob\xff"))
    person.mkdir(parents=True)
    (person / "wall.png").write_bytes(cv2.imencode(".png", np.full((64, 64, 3), 90, np.uint8))[1])
    rc = main([*enroll, "--consent-version", "v1", "--folder", str(tmp_path / "people")])
    out, err = capsys.readouterr()
    assert rc == 1, err
    assert INTERNAL not in err
    assert "refused 1: name_not_utf8: Bob\\xff" in out


@pytest.mark.fixtures
def test_enroll_with_a_name_that_is_not_utf8_is_one_line_and_stores_nobody(
    tmp_path, capsys, fixtures, monkeypatch
):
    """`--name-file -` from a terminal in another encoding: the gallery refuses to store it."""
    import io

    enroll = _enroll_args(tmp_path)
    photo = str(fixtures / "faces" / "obama" / "obama.jpg")
    monkeypatch.setattr("sys.stdin", io.StringIO(NOT_UTF8 + "\n"))
    rc = main([*enroll, "--consent-version", "v1", "--name-file", "-", photo])
    _error_line(capsys, rc, "the name is not UTF-8")
    assert main(["people", "--config", str(tmp_path / "gate.toml")]) == 0
    assert capsys.readouterr().out.strip() == ""


def test_a_video_whose_name_is_not_utf8_is_one_line_not_a_segmentation_fault(tmp_path):
    """OpenCV's video functions end the process (SIGSEGV) on such a name: the gate, bench,
    enroll from a clip and demo's clips all go through one check first."""
    from edge.lab.synth import Segment, write_clip

    cfg = make_config(tmp_path)
    clip = tmp_path / "clip.mp4"
    write_clip(clip, [Segment(1.0)], fps=5.0, size=(160, 120))
    odd = os.fsdecode(bytes(tmp_path) + b"/caf\xe9.mp4")  # Latin-1 "café.mp4"
    os.rename(clip, odd)
    shown = str(tmp_path / "caf\\xe9.mp4")  # as the error line prints it
    for args in (["run", "--config", cfg.source_file, "--source", odd, "--fast"],
                 ["bench", "--clip", odd, "--threads", "1"]):  # fmt: skip
        p = edge_gate(*args, cwd=tmp_path)
        assert p.returncode == 2, (args[0], p.returncode, p.stderr[-500:])
        last = p.stderr.strip().splitlines()[-1]
        assert last.startswith("edge-gate: error: ") and shown in last, last
        assert "not UTF-8" in last and "rename" in last


def test_text_arguments_that_are_not_utf8_are_one_line_and_file_names_still_work(tmp_path, capsys):
    """Ids, products, holders and gate names are signed, stored or compared as UTF-8; a file
    name may hold any bytes the file system does."""
    cfg = make_config(tmp_path)
    key = str(tmp_path / "office" / "issuer.key")
    c = ["--config", cfg.source_file]
    for argv, flag in (
        (["ticket", "revoke", *c, "--list", str(tmp_path / "revoked.txt"), NOT_UTF8], "ids"),
        (["ticket", "issue", "--key", key, "--id", "A-1", "--valid-until", "2099-12-31",
          "--holder", NOT_UTF8, "--out", str(tmp_path / "t")], "--holder"),
        (["ticket", "verify", *c, "--redeem", "--gate", NOT_UTF8, "EGX"], "--gate"),
        (["forget", *c, "P-" + NOT_UTF8], "person-id"),
    ):  # fmt: skip
        rc = main(argv)
        _error_line(capsys, rc, f"argument {flag}: ", "Bob\\xff", "not UTF-8")
    assert (tmp_path / "revoked.txt").read_text() == ""
    photo = _ticket_photo(tmp_path, capsys, "LATIN-1")
    odd = os.fsdecode(os.fsencode(photo)[: -len(".png")] + b"-caf\xe9.png")
    os.rename(photo, odd)
    assert main(["ticket", "verify", *c, odd]) == 0, capsys.readouterr().err
    assert '"ticket_id": "LATIN-1"' in capsys.readouterr().out


def test_run_on_a_clip_whose_every_frame_is_unusable_is_an_error_not_an_empty_run(tmp_path, capsys):
    import numpy as np

    from edge.lab.synth import write_video

    cfg = make_config(tmp_path)
    clip = tmp_path / "tiny.mp4"
    frames = [np.full((8, 8, 3), 40 * i, np.uint8) for i in range(5)]
    assert write_video(clip, frames, 10.0, (8, 8)) == 5
    rc = main(["run", "--config", cfg.source_file, "--source", str(clip), "--fast"])
    _error_line(capsys, rc, str(clip), "none of its 5 frame(s)", "too small", "16px")


def test_keys_and_accounts_in_a_folder_it_cannot_write_are_one_line(tmp_path, capsys, monkeypatch):
    """keys init, ticket keygen and console adduser where the user may not create files."""
    folder = _unwritable_folder(tmp_path)
    key = folder / "edge-gate-test.key"
    rc = main(["keys", "init", "--key-file", str(key)])
    _error_line(capsys, rc, str(key))
    out = folder / "edge-gate-test-keys"
    rc = main(["ticket", "keygen", "--out", str(out)])
    _error_line(capsys, rc, str(out))
    assert not key.exists() and not out.exists()
    if importlib.util.find_spec("argon2") is None:  # the console extra
        return
    import io

    users = folder / "edge-gate-test" / "console.db"
    cfg = make_config(tmp_path, f'[console]\nusers_db = "{users}"\n')
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough passphrase\n"))
    rc = main(["console", "adduser", "rita", "--role", "admin", "--password-stdin",
               "--config", cfg.source_file])  # fmt: skip
    _error_line(capsys, rc, str(users), "cannot be opened")


def test_output_to_a_full_disk_is_one_line_not_an_internal_error(tmp_path):
    """`edge-gate audit export > export.tsv` on a full disk: the site's to fix, not a bug."""
    import subprocess
    import sys

    from edge.gate.audit import AuditLog, AuditRecord

    from .helpers import PROJECT_ROOT

    if not Path("/dev/full").is_char_device():
        pytest.skip("needs /dev/full (a file whose every write fails: disk full)")
    cfg = make_config(tmp_path)
    with AuditLog(tmp_path / "audit.db") as log:
        log.record(AuditRecord(time.time(), "g", "decision", "deny", "ticket", "T-1"))
    with open("/dev/full", "w") as full:
        p = subprocess.run(
            [sys.executable, "-m", "edge.cli", "audit", "export", "--config", cfg.source_file],
            cwd=tmp_path, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        )  # fmt: skip
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1, p.stderr  # no "Exception ignored" at exit either
    assert p.stderr.startswith("edge-gate: error: No space left on device")
    assert "free space" in p.stderr


def test_forget_with_an_overlong_reason_is_one_line_before_anything_is_erased(tmp_path, capsys):
    """The reason is kept in the audit log whole or not at all: checked before the gallery is
    opened (before, 200,000 characters went into the log as they were)."""
    from .helpers import empty_gallery

    cfg = make_config(tmp_path)
    empty_gallery(cfg)
    c = ["--config", cfg.source_file]
    rc = main(["forget", *c, "--reason", "x" * 200_000, "P-1234abcd"])
    _error_line(capsys, rc, "--reason is 200,000 characters long, more than 200")
    rc = main(["forget", *c, "--reason", " ", "P-1234abcd"])
    _error_line(capsys, rc, "--reason is empty")
    rc = main(["forget", *c, "--reason", "deletion_request", "P-1234abcd"])
    assert rc != 70 and "internal error" not in capsys.readouterr().err
