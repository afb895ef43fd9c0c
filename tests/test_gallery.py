"""Encrypted gallery: proofs of privacy, lifecycle, faults and matching."""

from __future__ import annotations

import os
import sqlite3
import textwrap
import time

import numpy as np
import pytest

from edge.errors import ConsentError, EnrollError, GalleryError, KeyFileError
from edge.gallery.crypto import init_key, load_key
from edge.gallery.keys import rotate_key
from edge.gallery.matcher import LiveMatcher, Matcher, to_template_grid
from edge.gallery.store import Consent, Gallery

from .helpers import kill_at_random

CONSENT = Consent("notice-v1", operator="Desk Clerk Ondine")
NAME = "Zebulon Quixote-Marchbanks"


def unit(rng, n, d=128):
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def gal(tmp_path):
    with Gallery(tmp_path / "g.db", init_key(tmp_path / "k.key")) as g:
        yield g


def file_bytes(path) -> bytes:
    return b"".join(
        p.read_bytes()
        for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-journal"))
        if p.exists()
    )


def test_name_and_template_bytes_never_on_disk(gal, tmp_path):
    emb = unit(np.random.default_rng(0), 3)
    pid = gal.add_person(NAME, CONSENT, list(emb), "m", "v", pass_ref="ANNUAL-998877")
    assert gal.pass_refs() == {pid: "ANNUAL-998877"}  # what the gate needs, without opening names
    raw = file_bytes(gal.path)
    for secret in (NAME, "Zebulon", "ANNUAL-998877", "Desk Clerk Ondine"):
        assert secret.encode() not in raw
        assert secret.encode("utf-16-le") not in raw
    for e in emb:
        b = e.tobytes()
        for i in range(0, len(b) - 16, 16):  # no 16-byte window of any template
            assert b[i : i + 16] not in raw
    assert [p.name for p in gal.people()] == [NAME]


def test_wrong_key_fails_at_start_and_writes_nothing(gal, tmp_path):
    gal.add_person(NAME, CONSENT, list(unit(np.random.default_rng(0), 1)), "m", "v")
    gal.scrub()
    gal.close()
    before = (tmp_path / "g.db").read_bytes()
    other = init_key(tmp_path / "other.key")
    with pytest.raises(KeyFileError, match="does not open gallery"):
        Gallery(tmp_path / "g.db", other)
    assert (tmp_path / "g.db").read_bytes() == before


def test_tampered_and_swapped_rows_rejected_others_still_match(gal, caplog):
    rng = np.random.default_rng(1)
    embs = unit(rng, 3)
    ids = [gal.add_person(f"p{i}", CONSENT, [embs[i]], "m", "v") for i in range(3)]
    c = gal.conn
    # flip one byte of p0's template; copy p2's sealed template into p1's row (a swap attack)
    (blob0,) = c.execute("SELECT embedding FROM templates WHERE person_id=?", (ids[0],)).fetchone()
    c.execute(
        "UPDATE templates SET embedding=? WHERE person_id=?",
        (blob0[:20] + bytes([blob0[20] ^ 1]) + blob0[21:], ids[0]),
    )
    (blob2,) = c.execute("SELECT embedding FROM templates WHERE person_id=?", (ids[2],)).fetchone()
    c.execute("UPDATE templates SET embedding=? WHERE person_id=?", (blob2, ids[1]))
    t = gal.templates("m")
    assert t.rejected == 2
    assert list(t.person_ids) == [ids[2]]
    assert "gallery row rejected table=templates" in caplog.text
    m = Matcher(t.matrix, t.person_ids, 0.9, 0.0)
    assert m.match(embs[2]).person_id == ids[2]
    assert m.match(embs[0]).person_id is None


def test_forget_erases_bytes_from_file(gal):
    rng = np.random.default_rng(2)
    keep = gal.add_person("Keeper", CONSENT, list(unit(rng, 2)), "m", "v")
    pid = gal.add_person(NAME, CONSENT, list(unit(rng, 2)), "m", "v", pass_ref="PASS-1")
    sealed = [
        r[0]
        for r in gal.conn.execute(
            "SELECT embedding FROM templates WHERE person_id=?"
            " UNION ALL SELECT name FROM people WHERE id=?"
            " UNION ALL SELECT operator FROM consents WHERE person_id=?",
            (pid, pid, pid),
        )
    ]
    assert len(sealed) == 4
    assert gal.forget(pid)
    raw = file_bytes(gal.path)
    for blob in sealed:
        assert blob[12:40] not in raw  # ciphertext bytes gone, not just unlinked
    assert pid.encode() not in raw
    assert [p.id for p in gal.people()] == [keep]
    assert not gal.forget(pid)


def test_purge_removes_only_long_expired(gal):
    rng = np.random.default_rng(3)
    now = time.time()
    old = gal.add_person(
        "old", CONSENT, list(unit(rng, 1)), "m", "v", valid_until=int(now - 40 * 86400)
    )
    recent = gal.add_person(
        "recent", CONSENT, list(unit(rng, 1)), "m", "v", valid_until=int(now - 5 * 86400)
    )
    forever = gal.add_person("forever", CONSENT, list(unit(rng, 1)), "m", "v")
    assert gal.purge_expired(now, 30) == [old]
    assert {p.id for p in gal.people()} == {recent, forever}


def test_matcher_against_brute_force():
    rng = np.random.default_rng(4)
    mat = to_template_grid(unit(rng, 60))  # as enrollment stores them
    pids = np.array([f"P{i // 3:02d}" for i in range(60)], dtype=object)
    m = Matcher(mat, pids, threshold=-1.0, min_margin=0.0)
    probes = unit(rng, 25)
    for probe, r in zip(probes, m.match_many(probes), strict=True):
        per = {p: max(float(probe @ mat[i]) for i in range(60) if pids[i] == p) for p in set(pids)}
        ranked = sorted(per.items(), key=lambda kv: -kv[1])
        assert r.person_id == ranked[0][0]
        assert r.score == pytest.approx(ranked[0][1], abs=1e-5)
        assert r.margin == pytest.approx(ranked[0][1] - ranked[1][1], abs=1e-5)


def test_matcher_threshold_margin_and_empty():
    e = np.eye(4, dtype=np.float32)
    m = Matcher(e[:2], np.array(["A", "B"], dtype=object), threshold=0.8, min_margin=0.1)
    assert m.match(e[0]).person_id == "A"
    assert m.match(e[2]).reason == "below_threshold"
    both = (e[0] + e[1]) / np.sqrt(2)
    assert m.match(both * 1.0).person_id is None  # 0.707 < threshold anyway
    m2 = Matcher(e[:2], np.array(["A", "B"], dtype=object), threshold=0.5, min_margin=0.1)
    r = m2.match(both)
    assert r.person_id is None
    assert r.reason == "ambiguous"
    empty = Matcher(np.zeros((0, 4), np.float32), np.array([], dtype=object), 0.5, 0.1)
    assert empty.match(e[0]).reason == "empty_gallery"
    single = Matcher(e[:1], np.array(["A"], dtype=object), 0.5, 0.1)
    assert single.match(e[0]).person_id == "A"
    assert single.match(e[0]).margin == 1.0


def test_live_matcher_sees_changes_without_restart_and_never_blocks(tmp_path):
    kek = init_key(tmp_path / "k.key")
    with Gallery(tmp_path / "g.db", kek) as writer, Gallery(tmp_path / "g.db", kek) as reader:
        live = LiveMatcher(reader, "m", 0.9, 0.0)
        e = unit(np.random.default_rng(5), 1)[0]
        assert live.match_many(e[None])[0].person_id is None
        pid = writer.add_person("new", CONSENT, [e], "m", "v")
        assert live.match_many(e[None])[0].person_id == pid
        writer.conn.execute("BEGIN IMMEDIATE")  # a writer holds the lock mid-enroll
        writer.conn.execute("DELETE FROM templates")
        reader.conn.execute("PRAGMA busy_timeout=0")  # any wait for the lock would raise at once
        assert live.match_many(e[None])[0].person_id == pid  # WAL: readers never wait for writers
        writer.conn.execute("COMMIT")
        writer.forget(pid)
        assert live.match_many(e[None])[0].person_id is None


# --- faults --------------------------------------------------------------------------------------


def test_corrupt_truncated_and_newer_databases(tmp_path, gal):
    gal.add_person("x", CONSENT, list(unit(np.random.default_rng(6), 1)), "m", "v")
    gal.scrub()
    gal.close()
    kek = load_key(tmp_path / "k.key")
    good = (tmp_path / "g.db").read_bytes()
    (tmp_path / "junk.db").write_bytes(os.urandom(8192))
    with pytest.raises(GalleryError, match="unreadable"):
        Gallery(tmp_path / "junk.db", kek)
    (tmp_path / "cut.db").write_bytes(good[: len(good) // 2])
    with pytest.raises((GalleryError, KeyFileError)), Gallery(tmp_path / "cut.db", kek) as cut:
        cut.templates("m")
    conn = sqlite3.connect(tmp_path / "g.db")
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(GalleryError, match="newer than this edge-gate"):
        Gallery(tmp_path / "g.db", kek)


def test_key_file_missing_loose_or_damaged(tmp_path):
    with pytest.raises(KeyFileError, match="does not exist"):
        load_key(tmp_path / "none.key")
    init_key(tmp_path / "k.key")
    os.chmod(tmp_path / "k.key", 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_key(tmp_path / "k.key")
    (tmp_path / "bad.key").write_text("edge-gate-kek-v1:AAAA\n")
    os.chmod(tmp_path / "bad.key", 0o600)
    with pytest.raises(KeyFileError, match="damaged"):
        load_key(tmp_path / "bad.key")
    with pytest.raises(KeyFileError, match="already exists"):
        init_key(tmp_path / "k.key")


def test_systemd_credential_is_preferred(tmp_path, monkeypatch):
    creds = tmp_path / "creds"
    creds.mkdir()
    k = init_key(creds / "gallery.key")
    os.chmod(
        creds / "gallery.key", 0o440
    )  # systemd credentials are read-only; not a loose key file
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert load_key(tmp_path / "etc" / "gallery.key").key == k.key


def test_disk_full_during_enroll_keeps_db_consistent(gal):
    rng = np.random.default_rng(7)
    gal.add_person("first", CONSENT, list(unit(rng, 1)), "m", "v")
    pages = gal.conn.execute("PRAGMA page_count").fetchone()[0]
    gal.conn.execute(f"PRAGMA max_page_count={pages}")
    with pytest.raises(GalleryError, match="full"):
        gal.add_person("second", CONSENT, list(unit(rng, 400)), "m", "v")
    assert [p.name for p in gal.people()] == ["first"]
    assert gal.conn.execute("SELECT count(*) FROM consents").fetchone()[0] == 1


def test_kill_9_mid_enroll_never_leaves_half_a_person(tmp_path):
    init_key(tmp_path / "k.key")
    with Gallery(tmp_path / "g.db", load_key(tmp_path / "k.key")):
        pass
    script = textwrap.dedent(f"""
        import numpy as np
        from edge.gallery.crypto import load_key
        from edge.gallery.store import Consent, Gallery
        key = load_key(__import__('pathlib').Path({str(tmp_path / "k.key")!r}))
        g = Gallery({str(tmp_path / "g.db")!r}, key)
        rng = np.random.default_rng()
        print("ready", flush=True)
        while True:
            e = rng.standard_normal((4, 128)).astype(np.float32)
            g.add_person("someone", Consent("v1"), list(e), "m", "v")
    """)
    kill_at_random(script, 20, 11, 0.05)
    with Gallery(tmp_path / "g.db", load_key(tmp_path / "k.key")) as g:
        assert g.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        people = g.people()
        assert people
        assert all(p.template_count == 4 and p.consent_time for p in people)
        assert g.templates("m").rejected == 0


def test_key_rotation_killed_anywhere_still_opens(tmp_path):
    kf = tmp_path / "k.key"
    init_key(kf)
    with Gallery(tmp_path / "g.db", load_key(kf)) as g:
        pid = g.add_person(NAME, CONSENT, list(unit(np.random.default_rng(8), 2)), "m", "v")
    script = textwrap.dedent(f"""
        from edge.gallery.keys import rotate_key
        print("ready", flush=True)
        while True:
            rotate_key({str(tmp_path / "g.db")!r}, {str(kf)!r})
    """)

    def still_opens():  # the key on disk always opens the gallery
        with Gallery(tmp_path / "g.db", load_key(kf), create=False) as g:
            assert [p.name for p in g.people()] == [NAME]
            assert g.templates("m").rejected == 0

    kill_at_random(script, 20, 3, 0.15, after_each=still_opens)
    old, new = rotate_key(tmp_path / "g.db", kf)  # a clean rotation finishes any interrupted one
    with Gallery(tmp_path / "g.db", load_key(kf), create=False) as g:
        assert g.stats()["key_ids"] == [new]
        assert g.people()[0].id == pid


# --- enrollment with real faces ------------------------------------------------------------------


def test_enroll_requires_consent_and_guardian_for_minors(gal, pipeline, fixtures):
    from edge.gallery.enroll import enroll

    img = [str(fixtures / "faces" / "obama" / "obama.jpg")]
    with pytest.raises(ConsentError):
        enroll(gal, pipeline, "Obama", Consent(""), img, threshold=0.92)
    with pytest.raises(ConsentError, match="guardian"):
        enroll(gal, pipeline, "Kid", Consent("v1"), img, threshold=0.92, minor=True)
    with pytest.raises(EnrollError, match="no usable face"):
        enroll(
            gal,
            pipeline,
            "Nobody",
            CONSENT,
            [str(fixtures / "qr" / "qrcode-1" / "1.png")],
            threshold=0.92,
        )
    assert gal.people() == []


def test_enroll_identify_refuse_duplicates_and_reenroll(gal, pipeline, fixtures):
    from edge.gallery.enroll import enroll
    from edge.vision.image import load_image

    t = pipeline.spec.threshold
    faces = fixtures / "faces"
    enrolled = {}
    for person in ("obama", "biden", "df_A", "df_G_matt_damon", "kit_harington", "rose_leslie"):
        first = sorted((faces / person).iterdir())[0]
        enrolled[person], _ = enroll(
            gal, pipeline, person, CONSENT, [str(first)], threshold=t, min_templates=1
        )
    # a second photo of an enrolled person is refused as a new person, accepted with --person-id
    second = str(sorted((faces / "obama").iterdir())[1])
    with pytest.raises(EnrollError, match="already matches"):
        enroll(gal, pipeline, "Not Obama", CONSENT, [second], threshold=t)
    pid, n = enroll(gal, pipeline, "", CONSENT, [second], threshold=t, person_id=enrolled["obama"])
    assert pid == enrolled["obama"]
    assert n == 1
    assert {p.id: p.template_count for p in gal.people()}[pid] == 2
    # identification: every other photo is its own person or nobody; never someone else
    tm = gal.templates(pipeline.spec.name)
    m = Matcher(tm.matrix, tm.person_ids, t, 0.04)
    right = wrong = 0
    for person_dir in sorted(faces.iterdir()):
        for img in sorted(person_dir.iterdir())[1:]:
            obs = pipeline.embed_still(load_image(img))
            got = m.match(obs.embedding).person_id
            if got is not None:
                if got == enrolled.get(person_dir.name):
                    right += 1
                else:
                    wrong += 1
    assert wrong == 0
    assert right >= 15


def test_enroll_from_video_picks_best_frames_and_writes_no_image(
    tmp_path, pipeline, fixtures, monkeypatch
):
    import cv2

    from edge.gallery.enroll import enroll

    written = []
    real_imwrite = cv2.imwrite
    monkeypatch.setattr(
        cv2, "imwrite", lambda *a, **k: written.append(a[0]) or real_imwrite(*a, **k)
    )
    monkeypatch.chdir(tmp_path)
    kek = init_key(tmp_path / "k.key")
    with Gallery(tmp_path / "g.db", kek) as g:
        pid, n = enroll(
            g,
            pipeline,
            "Lin-Manuel Miranda",
            CONSENT,
            [str(fixtures / "video" / "short_hamilton_clip.mp4")],
            threshold=pipeline.spec.threshold,
            max_templates=5,
        )
        assert n == 5
        assert g.people()[0].template_count == 5
    assert written == []
    files = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert set(files) <= {"g.db", "g.db-wal", "g.db-shm", "k.key"}, files
    # the frames it picked are the frontal ones of him: they match his photo
    from edge.vision.image import load_image

    ref = pipeline.embed_still(
        load_image(fixtures / "faces" / "lin_manuel_miranda" / "lin-manuel-miranda.png")
    ).embedding
    with Gallery(tmp_path / "g.db", kek) as g:
        t = g.templates(pipeline.spec.name)
    assert list(set(t.person_ids)) == [pid]
    # each picked frame is nearer his photo than any of the other people's photos
    others = [
        o.embedding
        for f in sorted((fixtures / "faces").rglob("*.*"))
        if f.parent.name != "lin_manuel_miranda"
        and (o := pipeline.embed_still(load_image(f))) is not None
    ]
    assert (t.matrix @ ref > (t.matrix @ np.stack(others).T).max(axis=1)).all()


def test_a_detail_longer_than_any_name_is_refused_and_nothing_stored(gal):
    """A file pasted as a name (or a form filled by a script) is refused before it is sealed."""
    from edge.errors import NotTextError
    from edge.gallery.schema import MAX_DETAIL_CHARS

    emb = list(unit(np.random.default_rng(1), 1))
    with pytest.raises(NotTextError, match="characters long"):
        gal.add_person("A" * (MAX_DETAIL_CHARS + 1), CONSENT, emb, "m", "v")
    with pytest.raises(NotTextError, match="pass reference"):
        gal.add_person(NAME, CONSENT, emb, "m", "v", pass_ref="P" * (MAX_DETAIL_CHARS + 1))
    assert gal.people() == []
    gal.add_person("B" * MAX_DETAIL_CHARS, CONSENT, emb, "m", "v")
    assert len(gal.people()) == 1


def _commit_between_reads(reader: Gallery, writer_fn, before: str) -> None:
    """Run `writer_fn` (another connection's commit) as the reader's next statement containing
    `before` starts: what another process's commit between two of the reader's reads does."""
    fired = []

    def trace(sql: str) -> None:
        if before in sql and not fired:
            fired.append(sql)
            writer_fn()

    reader.conn.set_trace_callback(trace)
    return fired


def test_a_forget_committed_between_two_reads_never_breaks_a_reader(tmp_path, caplog):
    """A forget moves the gallery to a new generation (new data key). A reader that read the
    generation, then the data key after another process's forget had committed, raised
    KeyFileError "does not open gallery" (the gate's reload, `people`, the console); one that
    read the person keys after it rejected everyone as key_unavailable. Each set of reads that
    must agree is now one snapshot."""
    kek = init_key(tmp_path / "k.key")
    rng = np.random.default_rng(11)
    with Gallery(tmp_path / "g.db", kek) as writer:
        keep = writer.add_person("Keeper", CONSENT, list(unit(rng, 1)), "m", "v")
        gone = writer.add_person("Leaver", CONSENT, list(unit(rng, 1)), "m", "v")
        other = writer.add_person("Other", CONSENT, list(unit(rng, 1)), "m", "v")
        with Gallery(tmp_path / "g.db", kek) as reader:
            assert set(reader.person_keys()) == {keep, gone, other}
            writer.forget(gone)  # the reader follows this generation at its next read ...
            # ... and reads the new data key after yet another forget has landed
            fired = _commit_between_reads(reader, lambda: writer._forget_ids([other]), "data_keys")
            with caplog.at_level("ERROR"):
                got = set(reader.person_keys())
                assert fired
                assert got in ({keep, other}, {keep})  # before or after it, whole
                assert set(reader.person_keys()) == {keep}
            # the rows are read after a forget that moved the data key on
            fourth = writer.add_person("Fourth", CONSENT, list(unit(rng, 1)), "m", "v")
            assert set(reader.person_keys()) == {keep, fourth}
            sixth = writer.add_person("Sixth", CONSENT, list(unit(rng, 1)), "m", "v")  # reload
            fired = _commit_between_reads(
                reader, lambda: writer._forget_ids([fourth]), "person_keys k"
            )
            with caplog.at_level("ERROR"):
                got = set(reader.person_keys())
                assert fired
                assert got in ({keep, fourth, sixth}, {keep, sixth})
                assert set(reader.person_keys()) == {keep, sixth}
            assert "key_unavailable" not in caplog.text
            reader.conn.set_trace_callback(None)
    # a new reader opening the file as a forget commits between its first reads
    with Gallery(tmp_path / "g.db", kek) as writer:
        p4 = writer.add_person("Fifth", CONSENT, list(unit(rng, 1)), "m", "v")
        orig = sqlite3.connect

        def connect(*a, **kw):
            c = orig(*a, **kw)
            done = []

            def trace(sql: str) -> None:
                if "data_keys" in sql and "SELECT" in sql and not done:
                    done.append(sql)
                    writer._forget_ids([p4])  # committed; its scrub would wait for readers

            c.set_trace_callback(trace)
            return c

        import edge.db

        edge.db.sqlite3.connect = connect
        try:
            with Gallery(tmp_path / "g.db", kek) as opened:
                assert set(opened.person_keys()) == {keep, sixth}
        finally:
            edge.db.sqlite3.connect = orig


def test_a_running_reader_whose_key_no_longer_opens_the_gallery_says_so(tmp_path):
    """Another process rotated the key and then forgot someone: the running reader's key file
    no longer opens the new generation. Its KeyFileError (use the right key file) was replaced
    by "Cannot operate on a closed database" (check the disk) once reads became a snapshot."""
    k1, k2 = init_key(tmp_path / "k1.key"), init_key(tmp_path / "k2.key")
    with Gallery(tmp_path / "g.db", k1) as reader:
        pid = reader.add_person("A B", CONSENT, list(unit(np.random.default_rng(4), 1)), "m", "1")
        reader.templates("m")
        with Gallery(tmp_path / "g.db", k1) as other:  # `keys rotate`, then a forget
            other.rewrap(k2)
            other.drop_other_keys(k2)
            other.forget(pid)
        with pytest.raises(KeyFileError, match="does not open gallery"):
            reader.templates("m")
