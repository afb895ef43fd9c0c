"""Forget means forgotten, also from backups (issue 20, row 8, gallery side): rows of a forgotten
person or an older pass copied back with `sqlite3` no longer open, and a gallery restored from a
backup taken before a `forget` admits nobody by face until the forget list is replayed.

The attacks are what a site could do by hand (`cp` of a backup, `sqlite3` with ATTACH); the
checks are the CLI (`people`, `forget --replay`) and the gate's own matcher."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from edge.gallery.crypto import init_key, load_key
from edge.gallery.matcher import LiveMatcher
from edge.gallery.store import Gallery
from tests.gallery_helpers import CONSENT, cli, config, unit

DAY = 86400


@pytest.fixture
def site(tmp_path):
    """A gallery with Ada and Ben (synthetic templates), its key and a config; returns a dict."""
    rng = np.random.default_rng(7)
    kek = init_key(tmp_path / "g.key")
    ada, ben = unit(rng, 3), unit(rng, 3)
    with Gallery(tmp_path / "g.db", kek) as g:
        a = g.add_person(
            "Ada Park", CONSENT, ada, "m", "1", valid_until=int(time.time()) + 90 * DAY
        )
        b = g.add_person("Ben Gate", CONSENT, ben, "m", "1")
    return {
        "dir": tmp_path, "db": tmp_path / "g.db", "key": tmp_path / "g.key",
        "cfg": config(tmp_path), "ada": (a, ada), "ben": (b, ben),
    }  # fmt: skip


def gallery_cli(capsys, s, *argv: str) -> tuple[int, str, str]:
    return cli(capsys, *argv, "--config", str(s["cfg"]), "--db", str(s["db"]),
               "--key-file", str(s["key"]))  # fmt: skip


def who_matches(s, templates: np.ndarray) -> set[str]:
    """The people the gate's matcher would name for these probes (threshold 0.9)."""
    with Gallery(s["db"], load_key(s["key"]), create=False) as g:
        m = LiveMatcher(g, "m", 0.9, 0.0)
        return {i.person_id for i in m.identify(templates) if i.person_id}


def backup(s) -> Path:
    """What a backup tool takes: a consistent copy of the live file."""
    bak = s["dir"] / "g.bak"
    a, b = sqlite3.connect(s["db"]), sqlite3.connect(bak)
    a.backup(b)
    a.close()
    b.close()
    return bak


def copy_rows_back(db: Path, bak: Path, pid: str, replace: bool = False) -> None:
    """`sqlite3 g.db`: ATTACH the backup and copy one person's rows (all of them) back."""
    verb = "INSERT OR REPLACE" if replace else "INSERT"
    c = sqlite3.connect(db)
    c.execute(f"ATTACH '{bak}' AS bak")
    for table, col in (("people", "id"), ("person_keys", "person_id"),
                       ("consents", "person_id"), ("templates", "person_id")):  # fmt: skip
        c.execute(f"{verb} INTO {table} SELECT * FROM bak.{table} WHERE {col} = ?", (pid,))
    c.commit()
    c.close()


def test_forgotten_persons_rows_copied_back_do_not_open(site, capsys):
    """Row 8: a forgotten person's rows restored from a backup; access came back."""
    s = site
    (ada, ada_t), (ben, ben_t) = s["ada"], s["ben"]
    bak = backup(s)
    assert gallery_cli(capsys, s, "forget", ada)[0] == 0
    copy_rows_back(s["db"], bak, ada)
    rc, out, _ = gallery_cli(capsys, s, "people", "--json")
    rows = {r["id"]: r for r in json.loads(out)}
    assert rows[ada]["intact"] is False  # their key was wrapped under the data key forget replaced
    assert rows[ben]["intact"] is True
    assert who_matches(s, ada_t) == set()
    assert who_matches(s, ben_t) == {ben}


def test_an_older_pass_copied_back_does_not_open(site, capsys):
    """Row 8: an old copy of a person's validity rows restored after their pass was cut short."""
    s = site
    (ada, ada_t), _ = s["ada"], s["ben"]
    bak = backup(s)
    soon = time.strftime("%Y-%m-%d", time.localtime(time.time() + DAY))
    assert gallery_cli(capsys, s, "pass", "renew", ada, "--valid-until", soon)[0] == 0
    copy_rows_back(s["db"], bak, ada, replace=True)
    with Gallery(s["db"], load_key(s["key"]), create=False) as g:
        assert ada not in g.person_valid_until()  # neither the old nor any validity is believed
        assert g.person(ada).intact is False
    assert who_matches(s, ada_t) == set()


def test_forget_then_restore_of_an_old_backup_admits_nobody(site, capsys):
    """Issue 20: forget, then the whole gallery restored from a backup taken before."""
    s = site
    (ada, ada_t), (ben, ben_t) = s["ada"], s["ben"]
    bak = backup(s)
    assert gallery_cli(capsys, s, "forget", ada)[0] == 0
    for suffix in ("-wal", "-shm"):
        Path(f"{s['db']}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(bak, s["db"])  # cp g.bak g.db
    with Gallery(s["db"], load_key(s["key"]), create=False) as g:
        assert g.needs_forget_replay()
        assert "restored from an older copy" in g.forget_state().reason
    assert who_matches(s, ada_t) == set()
    assert who_matches(s, ben_t) == set()  # nobody, until the list is replayed
    rc, out, err = gallery_cli(capsys, s, "people", "--json")  # it listed everyone "damaged"
    assert rc == 2 and out == "" and "restored from an older copy" in err, (out, err)
    assert "not damaged" in err
    hint = re.search(r"`edge-gate (forget --replay[^`]*)`", err)  # this run's own gallery
    assert hint, err
    rc, out, _ = cli(capsys, *shlex.split(hint.group(1)))  # the hint, pasted as it is
    assert rc == 0
    assert "1 people erased again" in out
    assert who_matches(s, ada_t) == set()
    assert who_matches(s, ben_t) == {ben}
    rc, out, _ = gallery_cli(capsys, s, "people", "--json")
    assert [r["id"] for r in json.loads(out)] == [ben]


def test_the_office_list_replays_what_the_lane_never_heard_of(site, capsys):
    """A lane without a fleet: the office's forget list, one id per line, is replayed by file."""
    s = site
    (ada, ada_t), (ben, ben_t) = s["ada"], s["ben"]
    office = s["dir"] / "office-forgotten.txt"
    office.write_text(f"# forgotten at the office\n{ben}\n")
    rc, out, _ = gallery_cli(capsys, s, "forget", "--replay", str(office))
    assert rc == 0
    assert who_matches(s, ben_t) == set()
    assert who_matches(s, ada_t) == {ada}
    with Gallery(s["db"], load_key(s["key"]), create=False) as g:
        assert not g.needs_forget_replay()
        assert g.apply_forget_list([ben], generation=7) == []
        assert g.forget_list_generation() == 7


def test_a_running_gate_follows_a_forget_by_another_process(site):
    """The gate's open gallery follows the new data key after `forget` in another process."""
    s = site
    (ada, ada_t), (ben, ben_t) = s["ada"], s["ben"]
    with Gallery(s["db"], load_key(s["key"]), create=False) as gate:
        m = LiveMatcher(gate, "m", 0.9, 0.0)
        assert {i.person_id for i in m.identify(ben_t)} == {ben}
        with Gallery(s["db"], load_key(s["key"]), create=False) as desk:
            desk.apply_forget_list([ada])
        assert {i.person_id for i in m.identify(ben_t)} == {ben}
        assert {i.person_id for i in m.identify(ada_t)} == {None}


def test_a_forget_waits_for_an_unfinished_key_rotation(site):
    """The new data key of a generation can be wrapped only for the key file at hand: while a
    rotation holds a second wrapping, erasure is refused (loudly) rather than locking it out."""
    from edge.errors import GalleryError

    s = site
    (ada, ada_t), _ = s["ada"], s["ben"]
    new = init_key(s["dir"] / "next.key")
    with Gallery(s["db"], load_key(s["key"]), create=False) as g:
        g.rewrap(new)  # step 2 of `keys rotate`, then killed
        with pytest.raises(GalleryError, match="key rotation .* is unfinished"):
            g.forget(ada)
        assert ada in {p.id for p in g.people()}
        g.drop_other_keys(load_key(s["key"]))
        assert g.forget(ada)
    assert who_matches(s, ada_t) == set()


def test_forget_publish_that_cannot_publish_erases_nothing(site, capsys):
    """`forget --publish` checks first that it can send the deletion (the office's config, its
    issuer key): refused, the person is still enrolled and no deletion is half-recorded."""
    s = site
    ada = s["ada"][0]
    rc, _, err = gallery_cli(capsys, s, "forget", ada, "--publish")
    assert rc != 0
    assert "fleet" in err
    rc, out, _ = gallery_cli(capsys, s, "people", "--json")
    assert ada in [r["id"] for r in json.loads(out)]


def test_a_gallery_made_anew_beside_an_earlier_ones_forget_list_is_said(site, caplog):
    """A gallery file gone missing was made anew, empty, at the gate's next start, with nothing
    said: every pass holder refused by face (`not_enrolled`) and no hint that a gallery was lost.
    The forget list beside it shows one was there: the new gallery's creation is a warning."""
    s = site
    ada, _ = s["ada"]
    with Gallery(s["db"], load_key(s["key"]), create=False) as g:
        assert g.forget(ada)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{s['db']}{suffix}").unlink(missing_ok=True)
    caplog.set_level("WARNING", logger="edge.gallery.store")
    with Gallery(s["db"], load_key(s["key"])) as g:
        assert g.people() == []
    assert any("created_empty" in r.getMessage() and "was that gallery lost" in r.getMessage()
               for r in caplog.records), caplog.text  # fmt: skip
    caplog.clear()
    with Gallery(s["dir"] / "other.db", load_key(s["key"])):  # a first gallery: nothing said
        pass
    assert not [r for r in caplog.records if "created_empty" in r.getMessage()]
