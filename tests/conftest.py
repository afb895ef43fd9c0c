"""Pytest fixtures: real recorded fixtures (skip locally if absent, fail in CI) and pipelines."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from edge.config import VisionConfig, fixtures_dir

from .helpers import MODELS


def _fixtures() -> Path:
    d = fixtures_dir()
    if not (d / "MANIFEST.tsv").is_file():
        msg = f"shared fixtures not found at {d} (set EDGE_FIXTURES)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + "; CI=true requires them", pytrace=False)
        pytest.skip(msg)
    return d


TRACEBACK = "Traceback (most recent call last)"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "traceback_expected: the test means a Python traceback to appear in its output"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test whose captured output holds a Python traceback fails, unless it says it expects one.

    Processes the test starts inherit its captured stdout/stderr, so a command that crashes
    behind a passing assertion (or a thread that dies) is caught here, not hidden.
    """
    outcome = yield
    rep = outcome.get_result()
    if rep.passed and not item.get_closest_marker("traceback_expected"):
        for name, text in rep.sections:
            if name.endswith(f" {rep.when}") and TRACEBACK in text:
                rep.outcome = "failed"
                at = text.index(TRACEBACK)
                rep.longrepr = (
                    f"a Python traceback in '{name}' (mark the test traceback_expected if it is "
                    f"meant):\n{text[max(0, at - 500) : at + 3000]}"
                )
                break


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return _fixtures()


@pytest.fixture(scope="session")
def pipeline():
    from edge.vision.pipeline import FacePipeline

    return FacePipeline(MODELS, "blazeface_short", VisionConfig().embedder, threads=2)


@pytest.fixture(scope="session")
def float_pipeline():
    from edge.vision.pipeline import FacePipeline

    return FacePipeline(MODELS, "blazeface_short", "mobilefacenet_float", threads=2)


@pytest.fixture(scope="session")
def int8_pipeline():
    from edge.vision.pipeline import FacePipeline

    return FacePipeline(MODELS, "blazeface_short", "mobilefacenet_int8", threads=2)


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch):
    """Every test runs in its own working directory, so ./var of one never leaks into another."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def broker(tmp_path_factory):
    """A real mosquitto per test (tests/test_fleet.py): with the client id bound to the login,
    lanes of two tests' parks (same logins) must not meet on one broker."""
    from edge.lab.broker import Mosquitto

    from .test_fleet import USERS, _need_mosquitto

    _need_mosquitto()
    with Mosquitto(tmp_path_factory.mktemp("mosquitto"), users=USERS) as b:
        yield b


@pytest.fixture(scope="module")
def office_keys(tmp_path_factory):
    """The office's issuer key pair, one per test module."""
    from edge import tickets as tk

    return tk.keygen(tmp_path_factory.mktemp("office-keys"))


@pytest.fixture
def lane_inbox(tmp_path):
    """A fleet lane's fleet state and the gate's override inbox on it: (the issuer's private
    key, the state, the inbox). The lane is lane1 of site FLEET_SITE."""
    from edge import config as config_mod
    from edge import tickets as tk
    from edge.fleet.override import OverrideInbox
    from edge.fleet.state import FleetState

    from .helpers import FLEET_SITE

    priv_path, pub_path = tk.keygen(tmp_path / "k")
    (tmp_path / "lane.toml").write_text(
        f'[fleet]\nbroker = "mqtt://127.0.0.1:1"\nsite = "{FLEET_SITE}"\nlane = "lane1"\n'
        f'state_db = "fleet.db"\n[tickets]\npubkeys = ["{pub_path}"]\n'
    )
    st = FleetState(tmp_path / "fleet.db")
    box = OverrideInbox(config_mod.load(tmp_path / "lane.toml"))
    try:
        yield tk.load_private(priv_path), st, box
    finally:
        box.close()
        st.close()


@pytest.fixture
def sqlite_default_build(monkeypatch):
    """SQLite as upstream builds it (python.org's, Homebrew's, most wheels): secure_delete off
    unless a connection turns it on. Debian's build turns it on for every connection, which
    would hide a store that never asks for it."""
    real = sqlite3.connect

    def connect(*args, **kwargs):
        conn = real(*args, **kwargs)
        conn.execute("PRAGMA secure_delete=OFF")
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
