"""One person's sealed record, moved between galleries (e.g. lanes of one site) without opening it.

The record carries the person's rows exactly as sealed, and their key wrapped under a transport
key the two galleries share; the receiving gallery rewraps that key under its own data key. No
name, pass reference or template is ever in the clear on the way.
"""

from __future__ import annotations

import base64
from typing import Any

from edge.errors import GalleryError
from edge.gallery import schema
from edge.gallery.crypto import SealError, aad, open_sealed, seal
from edge.gallery.store import Gallery

FORMAT = "edge-gate-person-v1"
_TABLES = {t.name: t for t in schema.TABLES}


def _b64(v: Any) -> Any:
    return {"b64": base64.b64encode(v).decode()} if isinstance(v, bytes) else v


def _unb64(v: Any) -> Any:
    return base64.b64decode(v["b64"]) if isinstance(v, dict) else v


def _rows(g: Gallery, table: str, where: str, pid: str) -> list[dict[str, Any]]:
    cols = [c.name for c in _TABLES[table].columns]
    q = f"SELECT {', '.join(cols)} FROM {table} WHERE {where} = ? ORDER BY rowid"
    return [{c: _b64(v) for c, v in zip(cols, r, strict=True)} for r in g.conn.execute(q, (pid,))]


def export_person(g: Gallery, person_id: str, transport_key: bytes) -> dict[str, Any]:
    """A JSON-ready sealed record of one person; their key is wrapped under transport_key."""
    g.person(person_id)  # unknown id: GalleryError naming the fix
    pk = g.person_keys().get(person_id)
    if pk is None:
        raise GalleryError(
            f"person {person_id} failed authentication; not exported",
            "forget them and enroll again, or restore the gallery from backup",
        )
    return {
        "format": FORMAT,
        "person_id": person_id,
        "key": _b64(seal(transport_key, pk.key, aad("transport", person_id, "key"))),
        "people": _rows(g, "people", "id", person_id),
        "consents": _rows(g, "consents", "person_id", person_id),
        "templates": _rows(g, "templates", "person_id", person_id),
    }


def import_person(g: Gallery, record: dict[str, Any], transport_key: bytes) -> str:
    """Insert an exported person; refused whole if anything fails to authenticate."""
    try:
        pid = record["person_id"]
        if record.get("format") != FORMAT or len(record["people"]) != 1:
            raise ValueError("not an edge-gate person record")
        key = open_sealed(transport_key, _unb64(record["key"]), aad("transport", pid, "key"))
        rows = {t: [{c: _unb64(v) for c, v in r.items()} for r in record[t]]
                for t in ("people", "consents", "templates")}  # fmt: skip
        p = rows["people"][0]
        if p["id"] != pid:
            raise ValueError("person record does not match its id")
        open_sealed(key, p["attrs"], schema.attrs_aad(pid, p["valid_until"], bool(p["minor"])))
        for t in rows["templates"]:
            model = f"{t['model_id']}|{pid}"
            open_sealed(key, t["embedding"], aad("templates", t["id"], "embedding", model))
    except (SealError, KeyError, ValueError, TypeError) as e:
        raise GalleryError(
            f"person record refused: {e}", "export it again with the shared transport key"
        ) from None
    if g.people(pid):
        raise GalleryError(f"person {pid} is already in {g.path}", "forget them first to replace")

    def write(c):
        for table in ("people", "consents", "templates"):
            for r in rows[table]:
                allowed = [col.name for col in _TABLES[table].columns if col.name in r]
                q = (
                    f"INSERT INTO {table} ({', '.join(allowed)})"
                    f" VALUES ({','.join('?' * len(allowed))})"
                )
                c.execute(q, [r[k] for k in allowed])
            if table == "people":
                c.execute(
                    "INSERT INTO person_keys (person_id, wrapped) VALUES (?, ?)",
                    (pid, g.wrap_person_key(pid, key)),
                )

    g.write(write)
    return pid
