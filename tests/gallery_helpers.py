"""Helpers for the gallery tests: generated templates, raw file bytes, the CLI in-process."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import numpy as np

from edge.gallery.crypto import Kek, aad, seal
from edge.gallery.store import Consent

CONSENT = Consent("notice-v1", operator="Desk Clerk Ondine")


def unit(rng: np.random.Generator, n: int, d: int = 128) -> np.ndarray:
    """n random L2-normalised templates."""
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def file_bytes(path: Path) -> bytes:
    """Everything SQLite keeps on disk for a database: the file, its WAL and journal."""
    return b"".join(
        p.read_bytes()
        for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-journal"))
        if p.exists()
    )


def config(tmp_path: Path, extra: str = "") -> Path:
    """A gate.toml whose audit log lives in tmp_path."""
    cfg = tmp_path / "gate.toml"
    cfg.write_text(f'[audit]\npath = "{tmp_path / "audit.db"}"\n' + extra)
    return cfg


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run `edge-gate ARGV` in-process; (exit code, stdout, stderr)."""
    from edge.cli import main

    capsys.readouterr()
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def make_v1_gallery(path: Path, kek: Kek, people: list[tuple[str, str, int | None, np.ndarray]]):
    """A gallery as edge-gate schema 1 wrote it: one data key sealing everything."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(
        "CREATE TABLE data_keys (kid TEXT PRIMARY KEY, wrapped BLOB, created INTEGER);"
        "CREATE TABLE people (id TEXT PRIMARY KEY, name BLOB, pass_ref BLOB, valid_until INTEGER,"
        " minor INTEGER, created INTEGER);"
        "CREATE TABLE consents (id TEXT PRIMARY KEY, person_id TEXT, notice_version TEXT,"
        " notice_sha256 TEXT, method TEXT, time INTEGER, operator BLOB, guardian BLOB);"
        "CREATE TABLE templates (id TEXT PRIMARY KEY, person_id TEXT, model_id TEXT,"
        " model_version TEXT, quality REAL, created INTEGER, embedding BLOB);"
    )
    dek = os.urandom(32)
    now = int(time.time())
    conn.execute(
        "INSERT INTO data_keys VALUES (?,?,?)",
        (kek.kid, seal(kek.key, dek, aad("data_keys", kek.kid, "wrapped")), now),
    )
    for i, (pid, name, vu, embs) in enumerate(people):
        conn.execute(
            "INSERT INTO people VALUES (?,?,?,?,?,?)",
            (pid, seal(dek, name.encode(), aad("people", pid, "name")), None, vu, 0, now),
        )
        cid = f"C-{i}"
        conn.execute(
            "INSERT INTO consents VALUES (?,?,?,?,?,?,?,?)",
            (cid, pid, "v1", "", "written", now,
             seal(dek, b"Desk Clerk Ondine", aad("consents", cid, "operator")), None),
        )  # fmt: skip
        for j, e in enumerate(embs):
            tid = f"T-{i}-{j}"
            blob = seal(dek, e.tobytes(), aad("templates", tid, "embedding", f"m|{pid}"))
            conn.execute(
                "INSERT INTO templates VALUES (?,?,?,?,?,?,?)", (tid, pid, "m", "v", 1.0, now, blob)
            )
    conn.execute("PRAGMA user_version=1")
    conn.close()
    return dek
