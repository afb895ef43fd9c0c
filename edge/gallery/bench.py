"""`edge-gate bench --gallery N`: 1:N search time, gallery load (decrypt) time and memory."""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from edge.gallery.crypto import init_key
from edge.gallery.matcher import Matcher
from edge.gallery.store import Gallery


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_gallery(n: int, dim: int = 128, people_templates: int = 2, probes: int = 200, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        kek = init_key(Path(tmp) / "k.key")
        g = Gallery(Path(tmp) / "g.db", kek)
        vec = rng.standard_normal((n, dim)).astype(np.float32)
        vec /= np.linalg.norm(vec, axis=1, keepdims=True)
        t0 = time.perf_counter()
        per = people_templates
        for start in range(0, n, 5000):  # enroll in batches of people, each with `per` templates
            def write(c, start=start):
                now = int(time.time())
                for i in range(start, min(n, start + 5000), per):
                    pid = f"P-{i:08d}"
                    c.execute("INSERT INTO people (id, name, valid_until, minor, created) VALUES (?,?,?,?,?)",
                              (pid, g._seal(f"person {i}", "people", pid, "name"), None, 0, now))
                    for j in range(i, min(i + per, n)):
                        g._insert_template(c, pid, vec[j], "bench", "v", 1.0, now)
            g._tx(write)
        build_s = time.perf_counter() - t0
        g.close()
        rss0 = _rss_mb()
        t0 = time.perf_counter()
        g = Gallery(Path(tmp) / "g.db", kek)
        t = g.templates("bench")
        m = Matcher(t.matrix, t.person_ids, 0.9, 0.04)
        load_s = time.perf_counter() - t0
        rss1 = _rss_mb()
        q = vec[rng.integers(0, n, probes)] + rng.normal(0, 0.02, (probes, dim)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        lat = []
        hits = 0
        for p in q:  # one probe at a time, as the gate sees them
            s = time.perf_counter()
            r = m.match(p)
            lat.append(time.perf_counter() - s)
            hits += r.person_id is not None
        g.close()
    a = np.array(lat) * 1000
    return {"templates": n, "people": len(m.people), "dim": dim, "build_s": round(build_s, 2),
            "load_decrypt_s": round(load_s, 3), "search_ms_median": round(float(np.median(a)), 3),
            "search_ms_p95": round(float(np.percentile(a, 95)), 3), "matrix_mb": round(m.matrix.nbytes / 2**20, 1),
            "rss_growth_mb": round(rss1 - rss0, 1), "probes": probes, "probes_matched": hits}


def format_gallery_bench(r: dict) -> str:
    return (f"gallery 1:N: {r['templates']} templates, {r['people']} people, dim {r['dim']}\n"
            f"  load (decrypt) {r['load_decrypt_s']:.3f} s   search median {r['search_ms_median']:.3f} ms"
            f"   p95 {r['search_ms_p95']:.3f} ms   matrix {r['matrix_mb']} MB   rss +{r['rss_growth_mb']} MB"
            f"   ({r['probes_matched']}/{r['probes']} noisy probes matched)")
