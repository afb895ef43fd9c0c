"""Shared test helpers: the real fixtures (skip locally if absent, fail in CI), models, pipelines."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge.config import PROJECT_ROOT, fixtures_dir

MODELS = PROJECT_ROOT / "models"


def _fixtures() -> Path:
    d = fixtures_dir()
    if not (d / "MANIFEST.tsv").is_file():
        msg = f"shared fixtures not found at {d} (set EDGE_FIXTURES)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + "; CI=true requires them", pytrace=False)
        pytest.skip(msg)
    return d


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return _fixtures()


@pytest.fixture(scope="session")
def pipeline():
    from edge.vision.pipeline import FacePipeline

    return FacePipeline(MODELS, "blazeface_short", "dlib_resnet_int8", threads=2)


@pytest.fixture(scope="session")
def float_pipeline():
    from edge.vision.pipeline import FacePipeline

    return FacePipeline(MODELS, "blazeface_short", "dlib_resnet_float", threads=2)


def kill_at_random(script: str, rounds: int, seed: int, max_delay: float, after_each=None) -> None:
    """Start `script` (it prints a line when ready), SIGKILL it after a random delay, `rounds` times."""
    import random
    import signal
    import subprocess
    import sys
    import time

    rng = random.Random(seed)
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    for _ in range(rounds):
        p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
        p.stdout.readline()
        time.sleep(rng.uniform(0, max_delay))
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        if after_each is not None:
            after_each()
