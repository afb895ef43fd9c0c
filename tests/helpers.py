"""Helpers shared by several test files (pytest fixtures live in conftest.py)."""

from __future__ import annotations

import os

from edge.config import PROJECT_ROOT

MODELS = PROJECT_ROOT / "models"


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


class FakeCapture:
    """Stands in for cv2.VideoCapture: a scripted list of frames, None for a failed read."""

    def __init__(self, script):
        self.script = list(script)
        self.opened = True

    def isOpened(self):  # noqa: N802 - OpenCV's name
        return self.opened

    def read(self):
        if not self.script:
            return False, None
        item = self.script.pop(0)
        return (item is not None), item

    def set(self, *a):
        return True

    def get(self, *a):
        return 10.0

    def release(self):
        self.opened = False
