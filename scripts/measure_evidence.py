"""Cost of the keyed evidence chains on this machine: ledger open (full verify), a ticket check
when nothing changed, a check after another process wrote, a redemption, an audit record; and
of a gallery generation (`forget`: a new data key, every person key rewrapped, then the scrub).

    .venv/bin/python scripts/measure_evidence.py [--entries 20000] [--people 10000]

Synthetic entries in a temporary folder; prints medians in milliseconds."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from edge.evidence import create_key
from edge.gate.audit import AuditLog, AuditRecord
from edge.tickets import Kind, Ticket
from edge.tickets.ledger import Ledger, init_ledger


def ms(fn, n: int) -> float:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=20000)
    ap.add_argument("--people", type=int, default=10000)
    args = ap.parse_args()
    n = args.entries
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        key = create_key(d / "state" / "evidence.key")
        init_ledger(d / "l.db")
        with Ledger(d / "l.db", anti_passback_s=0, key=key) as led, led.transaction():
            for i in range(n):
                led.apply_remote("lane2", i + 1, f"T-{i}", 1.7e9 + i, "2026-01-01")
        t0 = time.perf_counter()
        led = Ledger(d / "l.db", anti_passback_s=0, key=key)  # keys all n, then verifies
        first = (time.perf_counter() - t0) * 1000
        led.close()
        t0 = time.perf_counter()
        led = Ledger(d / "l.db", anti_passback_s=0, key=key)
        open_ms = (time.perf_counter() - t0) * 1000
        other = Ledger(d / "l.db", anti_passback_s=0)  # sync: no key
        tk = Ticket("T-X", kind=Kind.ENTRIES, count=10**6)
        now = time.time()
        idle = ms(lambda: led.check(tk, now), 200)
        changes = []
        for i in range(200):  # sync writes; the gate keys what it wrote once a second
            other.apply_remote("lane3", n + 1 + i, "T-Y", now, "2026-01-01")
            changes.append(ms(lambda: led.check(tk, now), 1))
            if i % 20 == 19:
                led.maintain()
        changed = statistics.median(changes)
        redeem = ms(lambda: led.redeem(tk, time.time()), 50)
        plain = Ledger(d / "l.db", anti_passback_s=0)
        redeem_plain = ms(lambda: plain.redeem(tk, time.time()), 50)
        with AuditLog(d / "a.db", 30, key) as a, AuditLog(d / "b.db", 30) as b:
            rec = AuditRecord(now, "g", "decision", "deny", "ticket", "T-1", None, "expired")
            keyed = ms(lambda: a.record(rec), 100)
            unkeyed = ms(lambda: b.record(rec), 100)
        for x in (led, other, plain):
            x.close()
    forget_ms, scrub_ms = forget_cost(args.people)
    print(f"entries {n}")
    print(f"ledger open, first keying of all entries: {first:.0f} ms")
    print(f"ledger open with full verify: {open_ms:.0f} ms")
    print(f"ticket check, nothing changed: {idle:.3f} ms")
    print(f"ticket check after sync wrote one entry (keyed by the gate each 20): {changed:.3f} ms")
    print(f"redeem keyed: {redeem:.2f} ms, keyless: {redeem_plain:.2f} ms")
    print(f"audit record keyed + witness: {keyed:.2f} ms, keyless: {unkeyed:.2f} ms")
    print(
        f"forget with {args.people} people: new generation {forget_ms:.0f} ms, "
        f"scrub {scrub_ms:.0f} ms"
    )


def forget_cost(people: int) -> tuple[float, float]:
    """(ms for the erasure and the new generation, ms for the scrub that follows)."""
    import numpy as np

    from edge.gallery.crypto import init_key
    from edge.gallery.store import Consent, Gallery, NewPerson

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        kek = init_key(Path(d) / "g.key")
        with Gallery(Path(d) / "g.db", kek) as g:
            embs = rng.standard_normal((people, 192)).astype(np.float32)
            new = [NewPerson(f"P{i}", Consent("v1"), [embs[i]]) for i in range(people)]
            ids = g.add_people(new, "m", "1")
            t0 = time.perf_counter()
            g._forget_ids([ids[0]])
            t1 = time.perf_counter()
            g.scrub()
            t2 = time.perf_counter()
    return (t1 - t0) * 1000, (t2 - t1) * 1000


if __name__ == "__main__":
    main()
