"""`edge-gate eval / bench`: accuracy on a labelled folder, latency on a clip or a large gallery."""

from __future__ import annotations

import json
from pathlib import Path

from edge import config as config_mod
from edge.cli.paths import existing_dir, nonempty_file, output_dir


def _cfg(args) -> config_mod.Config:
    return config_mod.load(getattr(args, "config", None))


def _print_report(result: dict, as_json: bool, width: int = 26) -> None:
    """One JSON object, or one right-aligned `key: value` line per figure."""
    if as_json:
        print(json.dumps(result, allow_nan=False))
    else:
        for k, v in result.items():
            print(f"{k:>{width}}: {v}")


def cmd_eval(args) -> int:
    """`eval`: measure accuracy on a labelled folder and optionally set the threshold."""
    from edge.measure.evaluation import (
        check_threshold_evidence,
        evaluate_folder,
        json_ready,
        write_threshold,
    )
    from edge.vision.pipeline import FacePipeline

    cfg = _cfg(args)
    pipe = FacePipeline.from_config(cfg, args.embedder, args.detector, args.threads)
    if args.open_set:
        return _eval_open_set(args, cfg, pipe)
    result = evaluate_folder(pipe, Path(args.dir))
    if args.write_threshold:
        from edge.measure.metrics import gate_threshold

        check_threshold_evidence(result)
        t = gate_threshold(result["impostor_max"])
        result["written_threshold"] = t
        write_threshold(
            config_mod.models_path(cfg),
            pipe.spec.name,
            t,
            f"edge-gate eval {args.dir}: above all {result['impostor_pairs']} impostor pairs "
            f"(max {result['impostor_max']}); TAR there {result['tar_at_far_0']}",
        )
    _print_report(json_ready(result), args.json)
    return 0


def _eval_open_set(args, cfg: config_mod.Config, pipe) -> int:
    """`eval --open-set`: 1:N identification with the gate's rule; optionally write the rules."""
    from edge.errors import EdgeGateError
    from edge.gallery.matcher import resolve_threshold
    from edge.gallery.rules import rules_from_catalogue, threshold_for
    from edge.measure import evaluation as ev
    from edge.vision.models import embedder_spec

    models_dir = config_mod.models_path(cfg)
    embedded = ev.embed_folder(pipe, Path(args.dir))  # each image once; every figure reuses it
    k = args.templates
    new_table = None
    if args.write_threshold:
        new_table = ev.calibrate_sizes(embedded, k, pipe.spec.dim)
        short = [e for e in new_table if e["too_little_data"]]
        if not new_table or short:
            why = short[0]["too_little_data"] if short else "no gallery could be formed"
            raise EdgeGateError(
                f"not writing thresholds for {pipe.spec.name}: {why}",
                "use a larger DIR/<person>/<image> folder (e.g. the shared LFW half)",
            )
        ev.write_rules(
            models_dir,
            pipe.spec.name,
            new_table,
            f"edge-gate eval {args.dir} --open-set --templates {k} --write-threshold",
        )
    spec = embedder_spec(models_dir, pipe.spec.name)  # as written, when it was just written
    table = rules_from_catalogue(spec.thresholds) if cfg.gallery.match_threshold <= 0 else ()

    def rule(n_people: int) -> tuple[float, float, str]:
        r = threshold_for(n_people, table)
        if r is not None:
            return (
                r.threshold,
                r.min_margin,
                f"models.json, calibrated for {r.gallery_people} people",
            )
        t = resolve_threshold(cfg.gallery.match_threshold, spec.threshold)
        return t, cfg.gallery.min_margin, "gate.toml / models.json threshold, gate.toml margin"

    result = {"embedder": pipe.spec.name, **ev.evaluate_open_set(embedded, k, spec.dim, rule)}
    if new_table is not None:
        result["written_rules"] = new_table
    _print_report(result, args.json)
    return 0


def cmd_bench(args) -> int:
    """`bench`: print speed figures for a clip, the gate, a gallery size or the fleet."""
    from edge.measure.bench import bench_clip, format_bench
    from edge.vision.pipeline import FacePipeline
    from edge.vision.runtime import resolve_threads

    if args.fleet:
        from edge.fleet.bench import bench_fleet, format_fleet_bench

        rep = bench_fleet(args.lanes, args.rate, args.seconds, args.workdir)
        print(json.dumps(rep) if args.json else format_fleet_bench(rep))
        return 0 if rep["lost"] == 0 else 1
    cfg = _cfg(args)
    if args.gallery:
        from edge.measure.bench import bench_gallery, format_gallery_bench
        from edge.vision.models import embedder_spec

        name = args.embedder or cfg.vision.embedder
        dim = args.dim or embedder_spec(config_mod.models_path(cfg), name).dim
        rep = bench_gallery(args.gallery, dim=dim)
        print(json.dumps(rep) if args.json else format_gallery_bench(rep))
        return 0
    clip = (
        Path(args.clip)
        if args.clip
        else config_mod.fixtures_dir() / "video" / "short_hamilton_clip.mp4"
    )
    if args.gate:
        from edge.measure.bench import bench_gate

        photos = [Path(p) for p in args.enroll] or [
            config_mod.fixtures_dir() / "faces" / "lin_manuel_miranda" / "lin-manuel-miranda.png"
        ]
        rep = bench_gate(clip, photos, Path.cwd() / "var" / "bench-gate")
        _print_report(rep, args.json, width=34)
        return 0
    threads = sorted({1, resolve_threads(0)}) if args.threads is None else [args.threads]
    rep = bench_clip(
        lambda t: FacePipeline.from_config(cfg, args.embedder, args.detector, t),
        clip,
        threads,
        args.frames,
        None if cfg.liveness.mode == "off" else lambda t: _pad_model(cfg, t),
    )
    print(json.dumps(rep) if args.json else format_bench(rep))
    return 0


def _pad_model(cfg: config_mod.Config, threads: int):
    from edge.vision.liveness import PadModel, PadSpec

    spec = PadSpec.load(config_mod.models_path(cfg), cfg.liveness.model, require_threshold=False)
    return PadModel(spec, threads)


def register(sub, common) -> None:
    """Add the eval and bench commands to the parser."""
    sp = sub.add_parser("eval", help="verification accuracy on DIR/<person>/<image>")
    sp.add_argument("dir", type=existing_dir, help="labelled photos: DIR/<person>/<image>")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--embedder", help="embedder name from models/models.json")
    sp.add_argument("--detector", help="detector name from models/models.json")
    sp.add_argument("--threads", type=int, help="TFLite threads (default vision.threads)")
    sp.add_argument(
        "--open-set",
        action="store_true",
        help="1:N identification: first K images of each person enrolled,"
        " one-image people as strangers",
    )
    sp.add_argument(
        "--templates",
        type=int,
        default=1,
        metavar="K",
        help="with --open-set: images enrolled per person (default 1)",
    )
    sp.add_argument(
        "--write-threshold",
        action="store_true",
        help="store the strict gate threshold (above every impostor pair)"
        " as the embedder's default; "
        "with --open-set: the rule at FPIR 1e-3 for galleries of 100, 1000 and all people",
    )
    common(sp)
    sp.set_defaults(func=cmd_eval)

    sp = sub.add_parser("bench", help="per-stage latency on a recorded clip, or 1:N gallery search")
    sp.add_argument(
        "--clip",
        type=nonempty_file,
        help="video file (default: fixtures video/short_hamilton_clip.mp4)",
    )
    sp.add_argument("--threads", type=int, help="one thread count (default: 1 and all cores)")
    sp.add_argument("--frames", type=int, default=0, help="stop after N frames")
    sp.add_argument("--embedder", help="embedder name from models/models.json")
    sp.add_argument("--detector", help="detector name from models/models.json")
    sp.add_argument(
        "--gallery", type=int, default=0, metavar="N", help="benchmark 1:N search over N templates"
    )
    sp.add_argument(
        "--dim",
        type=int,
        default=0,
        help="with --gallery: template width (default: the embedder's)",
    )
    sp.add_argument(
        "--gate", action="store_true", help="the whole gate on the clip: fps and time to grant"
    )
    sp.add_argument(
        "--enroll",
        action="append",
        type=nonempty_file,
        default=[],
        help="with --gate: photo(s) of the person to enroll",
    )
    sp.add_argument(
        "--fleet",
        action="store_true",
        help="lanes through one mosquitto: propagation delay, msgs/s, CPU, loss across a restart",
    )
    sp.add_argument("--lanes", type=int, default=20, help="with --fleet: number of lanes")
    sp.add_argument(
        "--rate", type=float, default=10.0, help="with --fleet: redemptions per second per lane"
    )
    sp.add_argument("--seconds", type=float, default=30.0, help="with --fleet: load duration")
    sp.add_argument(
        "--workdir",
        type=output_dir,
        help="with --fleet: where the lanes' files go (default: a new folder in /dev/shm)",
    )
    sp.add_argument("--json", action="store_true")
    common(sp)
    sp.set_defaults(func=cmd_bench)
