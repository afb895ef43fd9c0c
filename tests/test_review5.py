"""Retention, erasure and the auditor's proofs: what is stored is what the report says."""

from __future__ import annotations

import time

import numpy as np

from edge import config as config_mod
from edge.gallery.crypto import init_key
from edge.gallery.store import Gallery

from .gallery_helpers import CONSENT, cli, config, unit


def test_the_privacy_report_counts_people_kept_past_retention(tmp_path, capsys):
    """A pass that ended 400 days ago while the purge did not run (timer off, a failed run):
    the report stated "purged 30 days after their pass expires" and counted the person among
    the people stored as if retention held. It now counts who is kept past retention and says
    to run the purge; `doctor` warns too."""
    from edge.gallery.privacy import privacy_report, report_markdown

    rng = np.random.default_rng(51)
    now = time.time()
    db, key = tmp_path / "g.db", tmp_path / "k.key"
    with Gallery(db, init_key(key)) as g:
        g.add_person("Ended", CONSENT, list(unit(rng, 2)), "m", "v",
                     valid_until=int(now - 400 * 86400))  # fmt: skip
        g.add_person("Current", CONSENT, list(unit(rng, 2)), "m", "v",
                     valid_until=int(now + 86400))  # fmt: skip
        g.add_person("Recent", CONSENT, list(unit(rng, 2)), "m", "v",
                     valid_until=int(now - 5 * 86400))  # fmt: skip
    cfg_path = config(tmp_path, f'[gallery]\ndb = "{db}"\nkey_file = "{key}"\n')
    cfg = config_mod.load(cfg_path)
    r = privacy_report(cfg, db, key)
    assert r["retention"].get("people_past_retention") == 1
    assert "1 people are kept past retention" in report_markdown(r)
    rc, out, _ = cli(capsys, "doctor", "--config", str(cfg_path))
    assert "kept past retention" in out
    args = ["--config", str(cfg_path), "--db", str(db), "--key-file", str(key)]
    assert cli(capsys, "purge", *args)[0] == 0
    r = privacy_report(cfg, db, key)
    assert r["retention"]["people_past_retention"] == 0
    assert "kept past retention" not in report_markdown(r)
