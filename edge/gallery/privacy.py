"""The privacy report: what the gallery stores, where, for how long, why and under which key.

Its lists of sealed and clear fields come from the schema declaration (`edge.gallery.schema`),
so a column added there shows up here; the CLI only prints this.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from edge.config import Config
from edge.gallery.crypto import load_key
from edge.gallery.rules import describe, expected_for
from edge.gallery.schema import clear_fields, describe_fields, sealed_fields
from edge.gallery.store import FILING_THRESHOLD, Gallery
from edge.keyfiles import credential_path
from edge.timeutil import iso

ALGORITHM = (
    "AES-256-GCM; the key file wraps the gallery data key, which wraps one key per person;"
    " associated data binds table, row, column and model"
)
WITHDRAWAL = (
    "`edge-gate forget PERSON_ID` erases a person at once: their key is destroyed (rows of"
    " theirs restored from an older copy no longer open), then secure_delete, WAL checkpoint"
    " and VACUUM; it fails loudly if another process keeps old pages. A whole-file backup taken"
    " before still opens with the key file of that time: `edge-gate keys rotate` after erasures"
    " (and destroying old key copies) makes such backups unreadable"
)


FORGET_LIST_PURPOSE = (
    "the pseudonymous ids of people erased (never a name, a template or a key), each with the"
    " gallery generation it reached: a gallery restored from a backup taken before an erasure"
    " is told apart and admits nobody by face until a replay of this list erases those people"
    " again; kept as long as gallery backups from before those erasures may be restored"
)
FLEET_FORGET_LIST = (
    "; the fleet state {path} also keeps the office's forget list ({held}): the office sends"
    " it to every lane, so an enrollment of someone forgotten is refused and a restored lane"
    " replays it"
)


def forget_list_facts(g: Gallery, cfg: Config, fleet_ids: int | None = None) -> dict:
    """Where the gallery's forget list is, how many pseudonymous ids it holds, and why; on a
    fleet lane also the office's list kept in the fleet state (`fleet_ids`, counted by the
    caller: the gallery does not read fleet files; None = it could not be read)."""
    facts: dict = {"path": str(g.forgets.path), "ids": len(g.forgets.forgotten())}
    purpose = FORGET_LIST_PURPOSE
    if cfg.fleet.enabled:
        held = "unreadable" if fleet_ids is None else f"{fleet_ids} pseudonymous ids, never names"
        state = cfg.resolve(cfg.fleet.state_db)
        purpose += FLEET_FORGET_LIST.format(path=state, held=held)
        facts |= {"fleet_path": str(state), "fleet_ids": fleet_ids}
    return {**facts, "purpose": purpose}


def privacy_report(cfg: Config, db: Path, key: Path, fleet_ids: int | None = None) -> dict:
    """What is stored, where, for how long and under which key: derived from the schema.
    `fleet_ids`: how many ids the fleet state's copy of the office's forget list holds."""
    kek = load_key(key)
    now = time.time()
    with Gallery(db, kek, create=False) as g:
        s = g.stats()
        overdue = len(g.due_for_purge(now, cfg.gallery.purge_after_days))
        restored = g.forget_state().reason
        forget_list = forget_list_facts(g, cfg, fleet_ids)
    real_key = credential_path(key)
    mode = stat.S_IMODE(os.stat(real_key).st_mode)
    files = [db, db.with_name(db.name + "-wal")]
    return {
        "generated": iso(now),
        "gate": cfg.gate.id,
        "purpose": (
            "open the entrance gate for enrolled pass holders who consented;"
            " a ticket is always accepted instead"
        ),
        "stored": {
            "database": str(db),
            "database_bytes": sum(f.stat().st_size for f in files if f.exists()),
            "people": s["people"],
            "minors": s["minors"],
            "templates": s["templates"],
            "templates_by_model": s["templates_by_model"],
            "consent_records": s["consents"],
            "fields_encrypted": sealed_fields(),
            "fields_in_clear": list(clear_fields()),
            "field_descriptions": describe_fields(),
            "never_stored": [
                "face images or video (enrollment frames are embedded in memory and dropped)",
                "the key-encryption key (kept outside the database)",
            ],
            "forget_list": forget_list,
            "audit_log": str(cfg.resolve(cfg.audit.path)),
            "audit_log_contents": (
                "time, gate, grant/deny, face/ticket, pseudonymous person id or ticket id,"
                " score, reason"
            ),
        },
        "consent": {
            "oldest": iso(s["oldest_consent"]),
            "newest": iso(s["newest_consent"]),
            "notice_versions": s["notice_versions"],
        },
        "retention": {
            "purge_after_pass_expiry_days": cfg.gallery.purge_after_days,
            "people_without_expiry": s["people_without_expiry"],
            "people_past_retention": overdue,
            "audit_retention_days": cfg.audit.retention_days,
            "schedule": "edge-gate-purge.timer runs `edge-gate purge` daily",
            "withdrawal": WITHDRAWAL,
            "erasure_pending": s["pending_erasure"],
            "forget_replay_needed": restored,
        },
        "encryption": {
            "algorithm": ALGORITHM,
            "key_file": str(real_key),
            "key_file_mode": oct(mode),
            "key_file_ok": not (mode & 0o077),
            "from_systemd_credential": real_key != key,
            "key_id": kek.kid,
            "data_key_wrappings": s["key_ids"],
            "schema_version": s["schema_version"],
        },
        "filing_threshold": {
            "people": s["people"],
            "threshold": FILING_THRESHOLD,
            "share": round(s["people"] / FILING_THRESHOLD, 6),
            "above": s["people"] >= FILING_THRESHOLD,
        },
        "presentation_attack_detection": (
            f"on ({cfg.liveness.mode}): a face grant needs the face judged live; a photo or "
            "screen of a pass holder is refused as presentation_attack"
            if cfg.liveness.mode != "off"
            else "OFF ([liveness] mode = off): a printed photo or a phone showing a pass holder "
            "opens the gate"
        ),
        "recognition": expected_for(cfg, s["people"]),
        "network": "none: the service runs with PrivateNetwork=yes",
    }


def report_markdown(r: dict) -> str:
    """The report as Markdown for the operator's records."""
    st, rt, enc, ft = r["stored"], r["retention"], r["encryption"], r["filing_threshold"]
    d = st["field_descriptions"]
    lines = [
        f"# Privacy report: {r['gate']}",
        "",
        f"Generated {r['generated']}.",
        "",
        f"**Purpose.** {r['purpose']}.",
        "",
        "## What is stored, and where",
        "",
        f"- Gallery `{st['database']}` ({st['database_bytes']} bytes):"
        f" {st['people']} people ({st['minors']} minors), "
        f"{st['templates']} face templates, {st['consent_records']} consent records.",
        f"- Encrypted: {', '.join(st['fields_encrypted'])}.",
        f"- In clear: {', '.join(f'{k} ({d[k]})' for k in st['fields_in_clear'])}.",
        f"- Never stored: {'; '.join(st['never_stored'])}.",
        f"- Forget list `{st['forget_list']['path']}`: {st['forget_list']['ids']} pseudonymous"
        f" ids of erased people; {st['forget_list']['purpose']}.",
        f"- Audit log `{st['audit_log']}`: {st['audit_log_contents']}.",
        "",
        "## Consent",
        "",
        f"- Oldest consent {r['consent']['oldest']}, newest {r['consent']['newest']};"
        " notice versions "
        f"{r['consent']['notice_versions']}.",
        "",
        "## Retention",
        "",
        f"- People are purged {rt['purge_after_pass_expiry_days']} days after their pass expires"
        f" ({rt['schedule']}); "
        f"{rt['people_without_expiry']} people have no expiry date.",
        *(
            [
                f"- **{rt['people_past_retention']} people are kept past retention** (their pass"
                " expired longer ago, or their validity cannot be read): run `edge-gate purge`"
                " and check that edge-gate-purge.timer is enabled."
            ]
            if rt["people_past_retention"]
            else []
        ),
        f"- Audit records are kept {rt['audit_retention_days']} days.",
        f"- Withdrawal: {rt['withdrawal']}.",
        *(
            ["- **An erasure is still pending on disk**: run `edge-gate purge`."]
            if rt["erasure_pending"]
            else []
        ),
        *(
            [
                f"- **{rt['forget_replay_needed']}**: people the lane's forget list erased may"
                " be in it again (counted above) until `edge-gate forget --replay --config C`"
                " (with the office's list: `--replay FILE`)."
            ]
            if rt["forget_replay_needed"]
            else []
        ),
        "",
        "## Encryption and keys",
        "",
        f"- {enc['algorithm']}.",
        f"- Key file `{enc['key_file']}` mode {enc['key_file_mode']}"
        f" ({'ok' if enc['key_file_ok'] else 'TOO OPEN'})"
        f"{', from a systemd credential' if enc['from_systemd_credential'] else ''};"
        f" key id {enc['key_id']}.",
        "",
        "## Filing threshold",
        "",
        f"- {ft['people']} of {ft['threshold']} people ({ft['share'] * 100:.3f}%): "
        f"{'ABOVE' if ft['above'] else 'below'} the threshold.",
        "",
        f"Presentation-attack detection: {r['presentation_attack_detection']}.",
        "",
        "## Recognition errors expected at this size",
        "",
        f"- {describe(r['recognition'])}.",
        "",
        f"Network: {r['network']}.",
    ]
    return "\n".join(lines) + "\n"
