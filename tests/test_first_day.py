"""An operator's first day (issue 21): the ordinary mistakes get one clear line, never a crash.

Each test runs the command as a user does, as a process of its own, and checks what they see.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge.cli import main
from edge.gate.audit import AuditLog, AuditRecord

from .helpers import PROJECT_ROOT, edge_gate, make_config


def _one_line_error(p: subprocess.CompletedProcess, *words: str) -> str:
    """The command failed with exit 2 and one line on stderr that names each of `words`."""
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = [x for x in p.stderr.splitlines() if x.startswith("edge-gate")]
    assert len(lines) == 1, p.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


# --- crashes and tracebacks ------------------------------------------------------------------


def test_a_closed_stdout_ends_the_command_quietly(tmp_path):
    """`edge-gate audit export | head -1`: no BrokenPipeError, no traceback."""
    cfg = make_config(tmp_path)
    with AuditLog(cfg.resolve(cfg.audit.path)) as log:
        for i in range(3000):
            log.record(AuditRecord(time.time(), "g", "decision", "deny", "ticket", f"T-{i}"))
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge.cli",
            "audit",
            "export",
            "--config",
            str(tmp_path / "gate.toml"),
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": "/usr/bin:/bin"},
    )
    first = p.stdout.readline()
    p.stdout.close()  # what `head -1` does after its line
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141
    assert first.startswith(b"1\t")
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err


def test_a_negative_count_is_one_line_naming_the_flag(tmp_path):
    _one_line_error(edge_gate("bench", "--gallery", "-5", cwd=tmp_path), "--gallery", "-5")
    _one_line_error(edge_gate("enroll", "--templates", "0", "--consent-version", "v", "x.jpg",
                              cwd=tmp_path), "--templates")  # fmt: skip


def test_an_internal_error_is_one_line_and_its_traceback_behind_debug(
    tmp_path, monkeypatch, capsys
):
    make_config(tmp_path)
    cfg = str(tmp_path / "gate.toml")

    def boom(self):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(AuditLog, "verify", boom)
    AuditLog(tmp_path / "audit.db").close()
    assert main(["audit", "verify", "--config", cfg]) == 70
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: RuntimeError: disk on fire" in err
    assert "--debug" in err
    with pytest.raises(RuntimeError, match="disk on fire"):
        main(["--debug", "audit", "verify", "--config", cfg])


def test_bench_on_a_video_without_a_readable_frame_is_one_line(tmp_path):
    import cv2

    empty = tmp_path / "empty.avi"  # a real container holding no frame
    w = cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 64))
    w.release()
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(bytes(range(256)) * 40)
    for clip in (empty, garbage):
        _one_line_error(edge_gate("bench", "--clip", str(clip), "--threads", "1", cwd=tmp_path),
                        str(clip))  # fmt: skip


def test_eval_on_a_folder_without_any_face_is_an_error(tmp_path):
    import cv2
    import numpy as np

    for person in ("a", "b"):
        (tmp_path / "d" / person).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "d" / person / "wall.png"), np.full((64, 64, 3), 90, np.uint8))
    for extra in ([], ["--open-set"]):
        p = edge_gate("eval", str(tmp_path / "d"), *extra, cwd=tmp_path)
        _one_line_error(p, "no usable face", "2 image(s)")


def test_qr_hit_rate_without_arguments_or_dependencies_is_one_line(tmp_path):
    script = str(PROJECT_ROOT / "scripts" / "qr_hit_rate.py")
    env = {"PYTHONPATH": "", "PATH": "/usr/bin:/bin", "EDGE_FIXTURES": str(tmp_path / "none")}
    p = subprocess.run([sys.executable, script], capture_output=True, text=True, env=env)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.count("\n") == 1 and str(tmp_path / "none" / "qr") in p.stderr
    # a Python without the project's packages (-S: no site-packages), as `python script` may be
    p = subprocess.run([sys.executable, "-S", script], capture_output=True, text=True, env=env)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "is not installed for" in p.stderr and "scripts/setup.sh" in p.stderr


# --- data loss or the wrong person enrolled ---------------------------------------------------


def test_demo_never_deletes_a_folder_it_did_not_make(tmp_path):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("precious")
    p = edge_gate("demo", "--fast", "--workdir", str(keep), cwd=tmp_path)
    _one_line_error(p, str(keep), "not empty")
    assert (keep / "notes.txt").read_text() == "precious"
    assert sorted(x.name for x in keep.iterdir()) == ["notes.txt"]


def test_demo_reruns_in_its_own_folder_and_prints_each_decision_once(tmp_path):
    work = tmp_path / "demo"
    env = {"EDGE_FIXTURES": str(tmp_path / "none")}  # the ticket clip only: quick
    first = edge_gate("demo", "--fast", "--workdir", str(work), cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    p = edge_gate("demo", "--fast", "--workdir", str(work), cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    assert (work / ".edge-gate-demo").is_file()
    both = p.stdout + p.stderr
    for frame in (8, 33, 58, 83, 108):  # the ticket clip's five decisions
        assert len(re.findall(rf"frame[ =]+{frame}\b", both)) == 1, both
    assert "ERROR" not in p.stderr  # no face path to degrade: the demo is ticket-only then
    assert "1 grants, 4 refusals" in p.stdout  # a fresh ledger: the valid ticket grants again


def _gallery_args(tmp_path) -> list[str]:
    cfg = tmp_path / "gate.toml"
    if not cfg.exists():
        make_config(tmp_path)
    key = tmp_path / "gallery.key"
    if not key.exists():
        from edge.gallery.crypto import init_key

        init_key(key)
    return ["--config", str(cfg), "--consent-version", "v1", "--min-templates", "1"]


@pytest.mark.fixtures
def test_enroll_refuses_a_photo_of_two_people_with_the_boxes(tmp_path, fixtures):
    photo = str(fixtures / "groups" / "two_people.jpg")
    g = _gallery_args(tmp_path)
    p = edge_gate("enroll", *g, "--name", "Who", photo, cwd=tmp_path)
    line = _one_line_error(p, photo, "2 faces", "--pick largest")
    assert re.search(r"\d+x\d+ at \(\d+, \d+\), \d+x\d+ at \(\d+, \d+\)", line)
    assert "enrolled" not in p.stdout
    p = edge_gate("enroll", *g, "--name", "Who", "--pick", "largest", photo, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "pick=largest" in p.stderr and "2 faces" in p.stderr  # logged, with the boxes
    rec = AuditLog(tmp_path / "audit.db").records("enroll")[-1]
    assert "--pick largest" in rec.detail


def test_enroll_names_a_file_that_is_not_an_image(tmp_path):
    junk = tmp_path / "photo.jpg"
    junk.write_text("these are my notes, not a photo\n")
    p = edge_gate("enroll", *_gallery_args(tmp_path), "--name", "X", str(junk), cwd=tmp_path)
    line = _one_line_error(p, str(junk), "not a readable image")
    assert "no usable face" not in line


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A small, valid JPEG whose frame header claims width x height."""
    import cv2
    import numpy as np

    ok, buf = cv2.imencode(".jpg", np.zeros((64, 64, 3), np.uint8))
    data = bytearray(buf.tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def test_a_header_claiming_30000_squared_pixels_is_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.jpg"
    bomb.write_bytes(_jpeg_claiming(30000, 30000))
    g = _gallery_args(tmp_path)
    for args in (
        ["enroll", *g, "--name", "X", str(bomb)],
        ["run", "--config", str(tmp_path / "gate.toml"), "--source", str(bomb), "--fast"],
    ):
        _one_line_error(
            edge_gate(*args, cwd=tmp_path), str(bomb), "30000x30000", "max_image_pixels"
        )
    p = edge_gate("qr", "read", str(bomb), cwd=tmp_path)
    assert p.returncode == 1 and "30000x30000" in p.stdout
    # The limit is the config's: a file claiming 1200x1000 gets as far as the decoder by
    # default and is refused under the lowest limit (the bomb under a raised one would be
    # decoded whole: gigabytes, for the same check)
    small = tmp_path / "small.jpg"
    small.write_bytes(_jpeg_claiming(1200, 1000))
    p = edge_gate("qr", "read", str(small), cwd=tmp_path)
    assert "1200x1000" not in p.stdout
    (tmp_path / "low.toml").write_text("[vision]\nmax_image_pixels = 1000000\n")
    p = edge_gate("qr", "read", "--config", str(tmp_path / "low.toml"), str(small), cwd=tmp_path)
    assert p.returncode == 1 and "1200x1000" in p.stdout and "max_image_pixels" in p.stdout


def test_run_on_an_unreadable_image_is_an_error_not_an_empty_run(tmp_path):
    make_config(tmp_path)
    junk = tmp_path / "gate-photo.jpg"
    junk.write_bytes(b"\xff\xd8 not really a jpeg")
    cfg = str(tmp_path / "gate.toml")
    p = edge_gate("run", "--config", cfg, "--source", str(junk), "--fast", cwd=tmp_path)
    _one_line_error(p, str(junk), "not a readable image")
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video")
    p = edge_gate("run", "--config", cfg, "--source", str(notes), "--fast", cwd=tmp_path)
    _one_line_error(p, str(notes))


def test_fd_lines_are_bounded_and_skip_overlong_lines():
    import os

    from edge.tickets.scanner import MAX_SCAN, fd_lines, lines_from

    r, w = os.pipe()
    os.write(w, b"EGA\n" + b"x" * 20_000 + b"\nEGB\r\n\xff\xfe\nEGC")  # < a pipe's buffer
    os.close(w)
    raw = list(fd_lines(r))
    os.close(r)
    assert raw[0] == b"EGA\n" and None in raw
    assert all(x is None or len(x) <= MAX_SCAN + 2 for x in raw)
    assert list(lines_from(iter(raw))) == ["EGA", "EGB", "EGC"]


def test_run_with_a_stdin_scanner_stops_cleanly_on_sigterm(tmp_path):
    """systemd's stop: exit 0, the decision in the audit log, no 'Fatal Python error' (134)."""

    from edge import tickets as tk
    from edge.lab.synth import Segment, write_clip

    cfg = make_config(tmp_path, 'mode = "ticket-only"\n')
    clip = tmp_path / "nobody.mp4"
    write_clip(clip, [Segment(30.0)], fps=5.0, size=(160, 120))
    key = tk.load_private(tmp_path / "office" / "issuer.key")
    ticket = tk.sign(tk.Ticket("SCAN-1", valid_until=int(time.time()) + 3600), key)
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge.cli",
            "run",
            "--config",
            cfg.source_file,
            "--source",
            str(clip),
            "--scanner",
            "stdin",
        ],  # fmt: skip
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": "/usr/bin:/bin"},
    )
    p.stdin.write(ticket.encode() + b"\n")
    p.stdin.flush()  # stdin stays open: the reader thread is blocked reading it
    line = p.stdout.readline().decode()
    assert "GRANT" in line and "SCAN-1" in line
    p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=60)
    err = p.stderr.read().decode()
    p.stdin.close()
    assert rc == 0, err
    assert "Fatal Python error" not in err
    with AuditLog(tmp_path / "audit.db") as log:
        decisions = [r for r in log.records("decision") if r.subject == "SCAN-1"]
    assert [(r.decision, r.reason) for r in decisions] == [("grant", "ok")]


# --- quietly wrong ---------------------------------------------------------------------------


def test_revoke_refuses_a_list_no_gate_reads_unless_told_to_create_it(tmp_path):
    make_config(tmp_path)  # tickets.revocation_list = "revoked.txt"
    cfg = str(tmp_path / "gate.toml")
    p = edge_gate("ticket", "revoke", "--config", cfg, "--list", "revokd.txt", "T-1", cwd=tmp_path)
    _one_line_error(p, "revokd.txt", str(tmp_path / "revoked.txt"), "--create")
    assert not (tmp_path / "revokd.txt").exists()
    # the gate's own list missing (lost, or never made) is not started anew without --create:
    # it would let in every ticket revoked before
    (tmp_path / "revoked.txt").unlink()
    p = edge_gate("ticket", "revoke", "--config", cfg, "--list", "revoked.txt", "T-1", cwd=tmp_path)
    _one_line_error(p, "revoked.txt", "backup", "--create")
    assert not (tmp_path / "revoked.txt").exists()
    p = edge_gate("ticket", "revoke", "--config", cfg, "--list", "revoked.txt", "--create", "T-1",
                  cwd=tmp_path)  # fmt: skip
    assert p.returncode == 0 and (tmp_path / "revoked.txt").read_text() == "T-1\n"
    p = edge_gate("ticket", "revoke", "--list", "office.txt", "--create", "T-2", cwd=tmp_path)
    assert p.returncode == 0 and (tmp_path / "office.txt").read_text() == "T-2\n"
    p = edge_gate("ticket", "unrevoke", "--list", "revokd.txt", "T-1", cwd=tmp_path)
    _one_line_error(p, "revokd.txt", "does not exist")


def test_issue_refuses_an_expiry_in_the_past_unless_asked(tmp_path):
    from edge import tickets as tk

    tk.keygen(tmp_path / "office")
    issue = ["ticket", "issue", "--key", str(tmp_path / "office" / "issuer.key"), "--id"]
    past = ["--valid-from", "2019-01-01", "--valid-until", "2020-01-01", "--out", "t"]
    p = edge_gate(*issue, "T-1", *past, cwd=tmp_path)
    _one_line_error(p, "--valid-until 2020-01-01", "already past", "--allow-expired")
    assert not (tmp_path / "t").exists()
    p = edge_gate(*issue, "T-1", *past, "--allow-expired", cwd=tmp_path)
    assert p.returncode == 0 and (tmp_path / "t" / "T-1.png").is_file()
    # without --valid-from (README's "common mistakes" row): the same answer, the same way out
    only_end = ["--valid-until", "2020-01-01", "--out", "t"]
    p = edge_gate(*issue, "T-2", *only_end, cwd=tmp_path)
    _one_line_error(p, "--valid-until 2020-01-01", "already past", "--allow-expired")
    p = edge_gate(*issue, "T-2", *only_end, "--allow-expired", cwd=tmp_path)
    assert p.returncode == 0 and (tmp_path / "t" / "T-2.png").is_file(), p.stderr


def test_out_never_makes_a_folder_named_like_a_file(tmp_path):
    from edge import tickets as tk

    tk.keygen(tmp_path / "office")
    key = str(tmp_path / "office" / "issuer.key")
    p = edge_gate("ticket", "issue", "--key", key, "--id", "T-1", "--valid-until", "2099-12-31",
                  "--out", "T-1.png", cwd=tmp_path)  # fmt: skip
    _one_line_error(p, "--out", "T-1.png", "folder")
    assert not (tmp_path / "T-1.png").exists()
    p = edge_gate("ticket", "keygen", "--out", "issuer.key", cwd=tmp_path)
    _one_line_error(p, "--out", "issuer.key")
    assert not (tmp_path / "issuer.key").exists()


# --- progress on long work --------------------------------------------------------------------


class _Terminal:
    """A stream that says it is a terminal, keeping what was written."""

    def __init__(self):
        self.text = ""

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


def test_progress_is_a_live_bar_on_a_terminal_and_one_line_otherwise(monkeypatch):
    import io

    from edge.progress import Progress, progress

    monkeypatch.delenv("EDGE_PROGRESS", raising=False)
    tty = _Terminal()
    assert list(progress(range(40), "embedding", unit="image", stream=tty)) == list(range(40))
    assert "\r" in tty.text and "40/40" in tty.text and "image/s" in tty.text

    log = io.StringIO()
    assert sum(progress(range(40), "embedding", unit="image", stream=log)) == sum(range(40))
    lines = log.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("embedding: 40/40 image(s) in ")

    monkeypatch.setenv("EDGE_PROGRESS", "lines")  # a pipe that ends on a terminal
    piped = io.StringIO()
    p = Progress("building", 4, unit="step", stream=piped)
    p(1)
    p(4)
    out = piped.getvalue()
    assert "\r" not in out and "1/4" in out and "<" in out  # count, then ETA, one line each
    assert out.splitlines()[-1].startswith("building: 4/4 step(s)")


@pytest.mark.fixtures
def test_eval_shows_progress_on_a_terminal_and_a_summary_in_a_log(tmp_path, fixtures):
    import os
    import pty

    folder = tmp_path / "two"
    folder.mkdir()
    for person in ("obama", "biden"):
        (folder / person).symlink_to(fixtures / "faces" / person)
    n = sum(len(list((folder / p).iterdir())) for p in ("obama", "biden"))
    p = edge_gate("eval", str(folder), "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    summary = [x for x in p.stderr.splitlines() if x.startswith("eval two:")]
    assert len(summary) == 1 and f"{n}/{n} image(s)" in summary[0]
    primary, secondary = pty.openpty()
    q = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "eval", str(folder), "--json"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=secondary,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )
    os.close(secondary)
    seen = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        seen += chunk
    q.wait(timeout=300)
    os.close(primary)
    text = seen.decode(errors="replace")
    assert q.returncode == 0
    assert "\r" in text and f"{n}/{n}" in text and "image/s" in text


def test_fix_hints_name_the_config_the_user_ran_with(tmp_path):
    import shutil

    from edge import tickets as tk

    site = tmp_path / "my site"
    site.mkdir()
    cfg = make_config(site)
    path = cfg.source_file
    for p in site.glob("ledger.db*"):
        p.unlink()  # a gate whose ledger was never made
    key = tk.load_private(site / "office" / "issuer.key")
    text = tk.sign(tk.Ticket("H-1", valid_until=int(time.time()) + 3600), key)
    p = edge_gate("ticket", "verify", "--config", path, "--redeem", text, cwd=tmp_path)
    assert p.returncode == 2
    assert f"`edge-gate ledger init --config '{path}'`" in p.stderr  # quoted: it has a space
    assert f"`edge-gate ledger init --config '{path}'`" in json.loads(p.stdout)["detail"]
    p = edge_gate("doctor", "--config", path, cwd=tmp_path)
    assert f"`edge-gate keys init --config '{path}'`" in p.stdout
    assert "--config C" not in p.stdout + p.stderr
    shutil.copy(site / "gate.toml", tmp_path / "gate.toml")
    p = edge_gate("ticket", "verify", "--db", "other.db", "--pubkey",
                  str(site / "office" / "issuer.pub"), "--redeem", text, cwd=tmp_path)  # fmt: skip
    assert "`edge-gate ledger init --db other.db`" in p.stderr


def test_a_lost_ledger_hint_says_restore_never_start_an_empty_one(tmp_path):
    from edge import tickets as tk

    cfg = make_config(tmp_path)
    path = cfg.source_file
    key = tk.load_private(tmp_path / "office" / "issuer.key")
    text = tk.sign(tk.Ticket("L-1", valid_until=int(time.time()) + 3600), key)
    assert (
        edge_gate("ticket", "verify", "--config", path, "--redeem", text, cwd=tmp_path).returncode
        == 0
    )
    for p in tmp_path.glob("ledger.db*"):
        p.unlink()  # lost: the audit log remembers 1 redemption
    from edge.tickets.ledger import init_ledger

    init_ledger(tmp_path / "ledger.db")  # someone made a new, empty one
    for args in (["ticket", "verify", "--config", path, "--redeem", text],
                 ["ledger", "init", "--config", path]):  # fmt: skip
        p = edge_gate(*args, cwd=tmp_path)
        assert p.returncode == 2
        assert "restore the newest backup" in p.stderr
        assert "--after-loss" not in p.stderr and "ledger init" not in p.stderr


def test_doctor_labels_each_face_threshold_with_where_it_applies(tmp_path):
    p = edge_gate("doctor", cwd=tmp_path)
    shown = [x for x in p.stdout.splitlines() if re.search(r"threshold \d|cosine >= \d", x)]
    shown = [x for x in shown if "presentation-attack" not in x]  # the liveness model's own
    assert shown, p.stdout
    for line in shown:
        thresholds = re.findall(r"(?:threshold|cosine >=) (\d\.\d+)", line)
        labels = re.findall(r"\b(gate|enrollment)\b", line)
        assert len(labels) >= len(thresholds) >= 1, line
    assert not any("(threshold 0." in x for x in p.stdout.splitlines() if "models" in x)


def _wait_held(lock: Path) -> None:
    """Until another process holds `lock` (a holder just started may not have taken it yet)."""
    deadline = time.monotonic() + 60
    while subprocess.run(["flock", "-n", str(lock), "true"]).returncode == 0:
        assert time.monotonic() < deadline, f"nobody took {lock}"
        time.sleep(0.02)


@pytest.mark.skipif(os.geteuid() != 0, reason="the apt path runs only as root")
def test_setup_waits_for_apts_lock_visibly_and_fails_after_its_timeout(tmp_path):
    lock = tmp_path / "lock-frontend"
    lock.touch()
    fake_apt = tmp_path / "apt-get"
    fake_apt.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "apt.log"}\n')
    fake_apt.chmod(0o755)
    env = {
        **os.environ,
        "EDGE_APT_LOCK": str(lock),
        "EDGE_APT_WAIT_S": "3",
        "EDGE_APT_GET": str(fake_apt),
        "EDGE_DEBIAN_TOOLS": "no-such-tool-for-edge-gate:fake-package",
    }
    script = ["bash", str(PROJECT_ROOT / "scripts" / "debian-tools.sh")]
    # unattended upgrades holding the lock (flock and its sleep: one process group to end)
    holder = subprocess.Popen(["flock", str(lock), "sleep", "30"], start_new_session=True)
    try:
        _wait_held(lock)
        p = subprocess.run(script, env=env, capture_output=True, text=True, timeout=60)
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    assert p.returncode == 1, p.stderr
    assert "waiting for apt's lock" in p.stderr and "still held after 3 s" in p.stderr
    assert not (tmp_path / "apt.log").exists()  # apt was never run while the lock was held

    # released while setup waits: held until the test closes the holder's input
    holder = subprocess.Popen(["flock", str(lock), "cat"], stdin=subprocess.PIPE)
    _wait_held(lock)
    env["EDGE_APT_WAIT_S"] = "60"
    p = subprocess.Popen(script, env=env, stderr=subprocess.PIPE, text=True)
    assert p.stderr is not None and holder.stdin is not None
    first = ""
    while "waiting for apt's lock" not in first and (line := p.stderr.readline()):
        first += line  # until setup says it waits (or ends without waiting)
    holder.stdin.close()
    holder.wait(timeout=60)
    rest = p.communicate(timeout=60)[1]
    assert p.returncode == 0, first + rest
    assert "waiting for apt's lock" in first, first + rest
    calls = (tmp_path / "apt.log").read_text()
    assert "install -y -qq fake-package" in calls and "DPkg::Lock::Timeout=" in calls


def test_sync_says_once_that_the_broker_is_down(tmp_path):
    from edge import tickets as tk
    from edge.lab.broker import free_port
    from edge.lab.workspace import write_member

    _, pub = tk.keygen(tmp_path / "office-keys")
    lane = write_member(tmp_path, "lane1", f"mqtt://127.0.0.1:{free_port()}", "park", pub)
    p = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "sync", "--config", str(lane.dir / "gate.toml")],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": "/usr/bin:/bin"},
    )
    lines: list[str] = []
    said = threading.Event()

    def read() -> None:
        for raw in p.stderr:
            lines.append(raw.decode(errors="replace"))
            if "broker unreachable" in lines[-1]:
                said.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert said.wait(120), "".join(lines)  # the first failed try, however slow the start
        time.sleep(8)  # then several reconnection attempts (1 to 5 s apart) against nobody
    finally:
        p.send_signal(signal.SIGTERM)  # stopped whatever the wait found
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    reader.join(60)
    err = "".join(lines)
    assert p.returncode == 0, err
    down = [x for x in err.splitlines() if "broker unreachable" in x]
    assert len(down) == 1, err
    assert "127.0.0.1" in down[0]


@pytest.mark.fixtures
def test_the_kiosk_refuses_an_uploaded_photo_of_two_people(tmp_path, fixtures):
    pytest.importorskip("starlette")
    from edge.console.actions import ActionError, Kiosk, Office

    office = Office(make_config(tmp_path))
    kiosk = Kiosk(office)
    cid = kiosk.start("rita")
    two = (fixtures / "groups" / "two_people.jpg").read_bytes()
    fb = kiosk.frame(cid, "rita", two, still=True)
    assert (fb.faces, fb.accepted, fb.reasons) == (2, False, ("several_faces",))
    one = (fixtures / "faces" / "obama" / "obama.jpg").read_bytes()
    assert kiosk.frame(cid, "rita", one, still=True).accepted
    with pytest.raises(ActionError, match="30000x30000"):
        kiosk.frame(cid, "rita", _jpeg_claiming(30000, 30000), still=True)
