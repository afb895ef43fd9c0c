"""`edge-gate bench --fleet`: N lanes on one machine through one Mosquitto, with a broker restart.

Each lane and the office run a real `edge-gate sync` process (every message signed, every lane
in the office's roster); this process redeems `rate` signed tickets per second
at every lane, straight into each lane's ledger (as the gate would), restarts the broker half-way,
then waits until every lane holds every other lane's redemptions. Reported: propagation delay
from a redemption at one lane to its application at another (p50, p99), messages applied per
second, CPU per lane (sync process), and records lost (expected minus applied).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from edge import tickets as tk
from edge.fleet.state import read_state
from edge.lab.broker import Mosquitto
from edge.lab.workspace import roster_all, start_syncs, stop_all, write_member
from edge.tickets.ledger import Ledger

RECOVERY_S = 10.0  # after a broker restart, lanes reconnect within paho's 1-5 s back-off


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _remote_count(lane_dir: Path) -> int:
    led = Ledger(lane_dir / "ledger.db")
    try:
        return led.remote_count()
    finally:
        led.close()


def bench_fleet(lanes: int, rate: float, seconds: float, workdir: Path | None = None) -> dict:
    """Run the fleet benchmark; returns the figures (see module docstring)."""
    # Twenty lanes on one machine share one disk, where each Pi has its own: by default the
    # lanes' SQLite files live in /dev/shm (the messaging path is measured, not the shared fsync).
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    root = Path(workdir or tempfile.mkdtemp(prefix="edge-gate-bench-fleet-", dir=shm))
    names = [f"lane{i}" for i in range(1, lanes + 1)]
    users = {n: f"pw-{n}-{os.getpid()}" for n in ["office", *names]}
    priv, pub = tk.keygen(root / "office-keys")
    key = tk.load_private(priv)
    broker = Mosquitto(root / "broker", users=users).start()
    office, *members = [
        write_member(root, n, broker.url, "bench", pub, users[n], fleet={"heartbeat_s": 1.0})
        for n in ["office", *names]
    ]
    roster_all(office, members, priv)
    office_proc, *procs = start_syncs([office, *members])
    done = [0] * lanes
    try:
        deadline = time.monotonic() + 180  # every lane subscribed before the first redemption
        while time.monotonic() < deadline and not all(
            read_state(m.dir / "fleet.db", "connected") and read_state(m.dir / "fleet.db", "roster")
            for m in members
        ):
            time.sleep(0.2)
        subscribed = sum(bool(read_state(m.dir / "fleet.db", "connected")) for m in members)
        cpu0 = [_cpu_s(p.pid) for p in procs]
        t0 = time.monotonic()

        def lane_load(i: int) -> None:  # one lane's gate: `rate` redemptions a second
            led = Ledger(members[i].dir / "ledger.db", gate=members[i].name, outbox=True)
            k = 0
            while time.monotonic() - t0 < seconds:
                t = tk.Ticket(f"B-{i}-{k}", "day", 0, 0, tk.Kind.ONE_TIME, 1)
                led.redeem(replace(t, text=tk.sign(t, key)), time.time())  # as the gate holds it
                k += 1
                done[i] = k
                time.sleep(max(0.0, t0 + i / (rate * lanes) + k / rate - time.monotonic()))
            led.close()

        threads = [threading.Thread(target=lane_load, args=(i,)) for i in range(lanes)]
        for th in threads:
            th.start()
        time.sleep(seconds / 2)
        t_restart, restarted = time.time(), True
        broker.restart()
        for th in threads:
            th.join()
        gen_s = time.monotonic() - t0
        n = sum(done)
        expected = [n - done[i] for i in range(lanes)]
        deadline = time.monotonic() + 120
        got = [0] * lanes
        while time.monotonic() < deadline:
            got = [_remote_count(m.dir) for m in members]
            if got == expected:
                break
            time.sleep(0.5)
        drain_s = time.monotonic() - t0
        cpu = [(_cpu_s(p.pid) - c) / drain_s for p, c in zip(procs, cpu0, strict=True)]
    finally:
        stop_all([office_proc, *procs], 20)
        broker.stop()
    pairs = np.array(
        [d for m in members for d in (read_state(m.dir / "fleet.db", "apply_delays") or [])]
    ).reshape(-1, 2)
    # Steady state: redemptions made outside the broker restart and the lanes' reconnection.
    quiet = (pairs[:, 0] < t_restart) | (pairs[:, 0] > t_restart + RECOVERY_S)
    steady, delays = pairs[quiet, 1], pairs[:, 1]
    applied = int(sum(got))
    if workdir is None:
        shutil.rmtree(root, ignore_errors=True)

    def ms(xs: np.ndarray, q: float) -> float | None:
        return round(float(np.percentile(xs, q)) * 1000, 1) if len(xs) else None

    return {
        "lanes": lanes,
        "rate_per_lane": rate,
        "redemptions": n,
        "achieved_rate_per_lane": round(n / lanes / gen_s, 2),
        "seconds": round(gen_s, 1),
        "broker_restarted": restarted,
        "applied": applied,
        "expected": int(sum(expected)),
        "lost": int(sum(expected) - applied),
        "propagation_p50_ms": ms(steady, 50),
        "propagation_p99_ms": ms(steady, 99),
        "propagation_p99_ms_incl_restart": ms(delays, 99),
        "propagation_max_ms_incl_restart": ms(delays, 100),
        "applied_per_s": round(applied / drain_s, 1),
        "lanes_subscribed_at_start": subscribed,
        "sync_cpu_ms_per_applied_msg": round(1000 * sum(cpu) * drain_s / max(applied, 1), 3),
        "cpu_per_lane_pct_mean": round(100 * float(np.mean(cpu)), 1),
        "cpu_per_lane_pct_max": round(100 * float(np.max(cpu)), 1),
        "cores": os.cpu_count(),
        "workdir": str(root) if workdir else "(removed)",
    }


def format_fleet_bench(r: dict) -> str:
    """Readable lines for `bench --fleet` when --json is not asked for."""
    return "\n".join(f"{k:>24}: {v}" for k, v in r.items())
