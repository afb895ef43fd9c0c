"""One person's gallery record, exported at the office and imported at a lane (adapter).

The gallery's public API has no export/import of one person yet; until it does, this module
reads and writes one person's rows through the Gallery's own transaction and sealing helpers,
keeping the person id, so a later deletion by id reaches every lane. The record is plaintext
only in memory: it leaves the office sealed with the site key (edge/fleet/messages.py).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

from edge.config import Config
from edge.errors import GalleryError
from edge.fleet.messages import MessageError
from edge.gallery.crypto import load_key
from edge.gallery.store import Consent, Gallery


def site_key(cfg: Config) -> bytes:
    """The site key (same file format as a gallery key) shared by the office and its lanes."""
    if not cfg.fleet.site_key_file:
        raise MessageError(
            "a person record arrived but fleet.site_key_file is not set",
            "give this lane the site key (edge-gate keys init --key-file at the office, copied 0600)",
        )
    return load_key(cfg.resolve(cfg.fleet.site_key_file)).key


def _gallery(cfg: Config) -> Gallery:
    return Gallery(cfg.resolve(cfg.gallery.db), load_key(cfg.resolve(cfg.gallery.key_file)))


def export_record(db: Path, key_file: Path, person_id: str) -> bytes:
    """Everything needed to enroll this person elsewhere: fields, consent, templates."""
    g = Gallery(db, load_key(key_file), create=False)
    try:
        person = next((p for p in g.people() if p.id == person_id), None)
        if person is None:
            raise GalleryError(
                f"no person {person_id} in {db}", "check the id with edge-gate people"
            )
        c = g.conn.execute(
            "SELECT notice_version, notice_sha256, method, time FROM consents WHERE person_id = ?"
            " ORDER BY time DESC LIMIT 1",
            (person_id,),
        ).fetchone()
        templates = []
        for model_id, version in g.conn.execute(
            "SELECT DISTINCT model_id, model_version FROM templates WHERE person_id = ?",
            (person_id,),
        ):
            t = g.templates(model_id)
            rows = t.matrix[t.person_ids == person_id] if len(t.person_ids) else []
            templates += [
                {
                    "model_id": model_id,
                    "model_version": version,
                    "embedding": base64.b64encode(np.asarray(r, np.float32).tobytes()).decode(),
                }
                for r in rows
            ]
        record = {
            "name": person.name,
            "pass_ref": person.pass_ref,
            "valid_until": person.valid_until,
            "minor": person.minor,
            "consent": {
                "notice_version": c[0],
                "notice_sha256": c[1],
                "method": c[2],
                "time": c[3],
            }
            if c
            else None,
            "templates": templates,
        }
        return json.dumps(record).encode()
    finally:
        g.close()


def import_record(cfg: Config, person_id: str, record: bytes) -> None:
    """Replace this person at this lane with the office's record, keeping the id."""
    try:
        r = json.loads(record)
        cons = r["consent"] or {}
        consent = Consent(
            cons.get("notice_version", ""),
            cons.get("method", "written"),
            "office",
            "",
            cons.get("notice_sha256", ""),
            int(cons.get("time") or 0),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise MessageError(f"person record {person_id!r} is malformed: {e}") from None
    g = _gallery(cfg)
    try:
        g.forget(person_id)

        def insert(c):
            c.execute(
                "INSERT INTO people (id, name, pass_ref, valid_until, minor, created)"
                " VALUES (?,?,?,?,?,strftime('%s','now'))",
                (
                    person_id,
                    g._seal(r["name"], "people", person_id, "name"),
                    g._seal(r.get("pass_ref", ""), "people", person_id, "pass_ref"),
                    r.get("valid_until"),
                    int(bool(r.get("minor"))),
                ),
            )

        g._tx(insert)
        by_model: dict[tuple[str, str], list[np.ndarray]] = {}
        for t in r["templates"]:
            emb = np.frombuffer(base64.b64decode(t["embedding"]), np.float32)
            by_model.setdefault((t["model_id"], t["model_version"]), []).append(emb)
        for (model_id, version), embs in by_model.items():
            g.add_person("", consent, embs, model_id, version, person_id=person_id)
    finally:
        g.close()


def forget(cfg: Config, person_id: str) -> bool:
    g = _gallery(cfg)
    try:
        return g.forget(person_id)
    finally:
        g.close()
