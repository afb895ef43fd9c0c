"""One person's gallery record, exported at the office and imported at a lane.

Export reads the person through the gallery's public reads (person, templates, consent fields);
import enrolls them under the same id (`NewPerson.person_id`), so a later deletion by id reaches
every lane. The record is plaintext only in memory: it leaves the office sealed with the site key
(edge/fleet/messages.py). The gallery has no export/import of one person of its own yet; when it
does, this module should call it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
from pathlib import Path

import numpy as np

from edge.config import Config
from edge.errors import GalleryError
from edge.fleet.messages import MessageError
from edge.gallery.crypto import load_key
from edge.gallery.erase import ErasureIncomplete
from edge.gallery.schema import Consent, NewPerson
from edge.gallery.store import Gallery

log = logging.getLogger(__name__)


def site_key(cfg: Config) -> bytes:
    """The site key (same file format as a gallery key) shared by the office and its lanes."""
    if not cfg.fleet.site_key_file:
        raise MessageError(
            "a person record arrived but fleet.site_key_file is not set",
            "give this lane the site key"
            " (edge-gate keys init --key-file at the office, copied 0600)",
        )
    return load_key(cfg.resolve(cfg.fleet.site_key_file)).key


def _gallery(cfg: Config) -> Gallery:
    return Gallery(cfg.resolve(cfg.gallery.db), load_key(cfg.resolve(cfg.gallery.key_file)))


def export_record(db: Path, key_file: Path, person_id: str) -> bytes:
    """Everything needed to enroll this person elsewhere: fields, consent, templates."""
    with Gallery(db, load_key(key_file), create=False) as g:
        person = g.person(person_id)
        consent = g.latest_consent(person_id)
        templates = []
        for model_id, version in g.template_models(person_id):
            t = g.templates(model_id, person_id)
            templates += [
                {
                    "model_id": model_id,
                    "model_version": version,
                    "embedding": base64.b64encode(np.asarray(r, np.float32).tobytes()).decode(),
                }
                for r in t.matrix
            ]
    if not person.intact:
        raise GalleryError(f"person {person_id} failed authentication", "re-enroll them")
    record = {
        "name": person.name,
        "pass_ref": person.pass_ref,
        "valid_until": person.valid_until,
        "minor": person.minor,
        "consent": consent,
        "templates": templates,
    }
    return json.dumps(record).encode()


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
        by_model: dict[tuple[str, str], list[np.ndarray]] = {}
        for t in r["templates"]:
            emb = np.frombuffer(base64.b64decode(t["embedding"]), np.float32)
            by_model.setdefault((t["model_id"], t["model_version"]), []).append(emb)
        if not by_model:
            raise ValueError("no templates")
        if any(len({e.size for e in embs}) != 1 for embs in by_model.values()):
            raise ValueError("templates of one model differ in length")
        if not isinstance(r["name"], str) or not all(
            np.isfinite(e).all() for embs in by_model.values() for e in embs
        ):
            raise ValueError("a name that is not text, or a template that is not finite")
        valid_until = r.get("valid_until")
        valid_until = None if valid_until is None else int(valid_until)
        ((first, version), embs), *rest = by_model.items()
        new = NewPerson(
            r["name"],
            consent,
            embs,
            pass_ref=str(r.get("pass_ref") or ""),
            valid_until=valid_until,
            minor=bool(r.get("minor")),
            person_id=person_id,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        # checked whole before the person here is touched: a bad record replaces nobody
        raise MessageError(f"person record {person_id!r} is malformed: {e}") from None
    with _gallery(cfg) as g:
        if any(p.id == person_id for p in g.people()):
            with contextlib.suppress(ErasureIncomplete):  # replaced: the old key is destroyed
                g.forget(person_id)
        g.add_people([new], first, version)
        for (model_id, model_version), more in rest:
            g.add_templates(person_id, consent, more, model_id, model_version)


def forget(cfg: Config, person_id: str) -> bool:
    """Erase the person at this lane (False: they were not here)."""
    with _gallery(cfg) as g:
        try:
            return g.forget(person_id)
        except ErasureIncomplete as e:  # key destroyed, rows gone; the gate still holds old pages
            log.warning("fleet forget person=%s erasure pending on disk: %s", person_id, e)
            return True


def forget_many(cfg: Config, person_ids: list[str], generation: int = 0) -> list[str]:
    """Apply the office's forget list (its message seq as the generation): everyone listed who
    is in this lane's gallery is erased, and a gallery restored from an older copy is current
    again (edge/gallery/store.py, `apply_forget_list`). Returns who was here."""
    db = cfg.resolve(cfg.gallery.db)
    if not db.exists() or db.stat().st_size == 0:
        return []
    with _gallery(cfg) as g:
        here = sorted({p.id for p in g.people()} & set(person_ids))
        try:
            return g.apply_forget_list(person_ids, generation)
        except ErasureIncomplete as e:
            log.warning("fleet forget list: erasure pending on disk: %s", e)
            return here
