"""The lab's commands (`eval`, `eval-pad`, `bench`, `demo`): measuring and showing, never the gate.

`edge/cli/lab.py` declares their flags; the bodies live here so that a lane running the gate
never imports the lab (tests/test_layers.py checks it).
"""

from __future__ import annotations

import json
from pathlib import Path

from edge import config as config_mod
from edge.errors import EdgeGateError
from edge.gallery.matcher import resolve_threshold
from edge.gallery.rules import rules_from_catalogue
from edge.gallery.rules import threshold_for as rule_for
from edge.gate.daemon import Gate, decisions_on_console, format_decision
from edge.lab import evaluation as ev
from edge.lab.bench import bench_clip, bench_gallery, bench_gate, format_bench, format_gallery_bench
from edge.lab.demo import demo_source, demo_state, enroll_person, prepare
from edge.lab.evaluation import (
    check_threshold_evidence,
    evaluate_folder,
    json_ready,
    write_threshold,
)
from edge.lab.fleet_bench import bench_fleet, format_fleet_bench
from edge.lab.fleet_demo import run_fleet_demo
from edge.lab.metrics import gate_threshold
from edge.lab.pad_eval import (
    evaluate_clips,
    evaluate_pad,
    leave_one_source_out,
    write_pad_threshold,
)
from edge.lab.pad_eval import threshold_for as pad_threshold_for
from edge.vision.liveness import LivenessJudge, PadModel, PadSpec
from edge.vision.models import embedder_spec
from edge.vision.pipeline import FacePipeline
from edge.vision.runtime import resolve_threads


def demo_run_config(cfg: config_mod.Config) -> config_mod.Config:
    """camera.source = "demo": a freshly generated ticket clip, and its key if none configured."""
    for line in demo_state(cfg):
        print(f'camera.source = "demo": {line}', flush=True)
    clip, demo_pub = demo_source(Path.cwd() / "var" / "demo-run")
    print(
        f'camera.source = "demo": replaying the generated ticket clip {clip}; '
        "set camera.source to a camera for real use",
        flush=True,
    )
    keys = None if cfg.tickets.pubkeys else (str(demo_pub),)
    return config_mod.override(cfg, camera={"source": str(clip)}, tickets={"pubkeys": keys})


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
    cfg = _cfg(args)
    pipe = FacePipeline.from_config(cfg, args.embedder, args.detector, args.threads)
    if args.open_set:
        return _eval_open_set(args, cfg, pipe)
    result = evaluate_folder(pipe, Path(args.dir))
    if args.write_threshold:
        check_threshold_evidence(result)
        t = gate_threshold(result["impostor_max"])
        result["written_threshold"] = t
        write_threshold(
            config_mod.models_path(cfg),
            pipe.spec.name,
            t,
            f"edge-gate eval {args.dir}: above all {result['impostor_pairs']} impostor pairs "
            f"(max {result['impostor_max']}); TAR there {result['tar_at_far_0']}",
            (result["threshold_at_far_1pct"], ev.floor_source(args.dir, result)),
        )
    _print_report(json_ready(result), args.json)
    return 0


def _eval_open_set(args, cfg: config_mod.Config, pipe) -> int:
    """`eval --open-set`: 1:N identification with the gate's rule; optionally write the rules."""
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
        r = rule_for(n_people, table)
        if r is not None:
            return (
                r.threshold,
                r.min_margin,
                f"models.json, calibrated for {r.gallery_people} people",
            )
        t = resolve_threshold(cfg.gallery.match_threshold, spec.threshold)
        return t, cfg.gallery.min_margin, "gate.toml / models.json threshold, gate.toml margin"

    result = {"embedder": pipe.spec.name, **ev.evaluate_open_set(embedded, k, spec.dim, rule)}
    # The rule each calibration size gets (as --write-threshold would write it), shown always:
    # the README's figure for all people with >= 2 photos is this, not a by_gallery_size row.
    calibration = new_table if new_table is not None else ev.calibrate_sizes(embedded, k, spec.dim)
    result["calibration"] = [
        {key: v for key, v in row.items() if key != "margins_tried"} for row in calibration
    ]
    if new_table is not None:
        result["written_rules"] = new_table
    _print_report(result, args.json)
    return 0


def cmd_bench(args) -> int:
    """`bench`: print speed figures for a clip, the gate, a gallery size or the fleet."""
    if args.fleet:
        rep = bench_fleet(args.lanes, args.rate, args.seconds, args.workdir)
        print(json.dumps(rep) if args.json else format_fleet_bench(rep))
        return 0 if rep["lost"] == 0 else 1
    cfg = _cfg(args)
    if args.gallery:
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
        photos = [Path(p) for p in args.enroll] or [
            config_mod.fixtures_dir() / "faces" / "lin_manuel_miranda" / "lin-manuel-miranda.png"
        ]
        rep = bench_gate(
            clip, photos, Path.cwd() / "var" / "bench-gate", args.embedder, args.detector
        )
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
    spec = PadSpec.load(config_mod.models_path(cfg), cfg.liveness.model, require_threshold=False)
    return PadModel(spec, threads)


def cmd_eval_pad(args) -> int:
    """Judge every presentation under DIR(s) or --clips DIR; print the report; optionally store
    the threshold (picked on every image judged, the rule the leave-one-source-out figures use)."""
    cfg = config_mod.load(args.config)
    models = config_mod.models_path(cfg)
    name = args.model or cfg.liveness.model
    if not args.dir and not args.clips:
        raise EdgeGateError("eval-pad needs DIR or --clips DIR", "edge-gate eval-pad DIR --json")
    spec = PadSpec.load(models, name, require_threshold=not args.write_threshold)
    if args.threshold:
        spec = PadSpec(**{**spec.__dict__, "threshold": args.threshold})
    if args.fusion:
        if args.write_threshold:
            raise EdgeGateError(
                "--fusion is a measurement: the gate fuses by the entry's own rule",
                "drop --write-threshold, or --fusion",
            )
        spec = PadSpec(**{**spec.__dict__, "fusion": args.fusion})
    if args.midpoint != "mean" and args.write_threshold:
        raise EdgeGateError(
            "--midpoint is a measurement: the shipped threshold is halfway in probability",
            "drop --write-threshold, or --midpoint",
        )
    mode = "model" if cfg.liveness.mode == "off" else cfg.liveness.mode
    use_cues = cfg.liveness.cues and not args.no_cues
    still = cfg.liveness.stillness and not args.no_stillness

    def judge_at(s: PadSpec) -> LivenessJudge:
        return LivenessJudge(PadModel(s, threads=1), mode, cfg.policy.window_s, use_cues, still)

    pipe = FacePipeline.from_config(cfg)
    if args.clips:
        report = evaluate_clips(cfg, Path(args.clips), pipe, judge_at(spec))
        report["model"] = name
        if not args.per_file:
            report.pop("results")
        _print_report(report, args.json, width=24)
        return 0
    dirs = [Path(d) for d in args.dir]
    selection = (tuple(args.include), tuple(args.exclude), args.source_pattern)
    report = evaluate_pad(cfg, dirs, pipe, judge_at(spec), *selection)
    if args.leave_one_source_out:
        report["loso"] = leave_one_source_out(report["results"], args.target_bpcer, args.midpoint)
        report["loso_apcer"] = report["loso"]["pooled"]["loso_apcer"]
        report["loso_bpcer"] = report["loso"]["pooled"]["loso_bpcer"]
    if args.write_threshold:
        t, why = pad_threshold_for(report["results"], None, args.target_bpcer, strict=False)
        fx = str(config_mod.fixtures_dir().resolve())
        picked = " ".join(  # the shared fixtures named as such: the path differs per checkout
            "$EDGE_FIXTURES" + str(Path(d).resolve())[len(fx) :]
            if str(Path(d).resolve()).startswith(fx)
            else str(d)
            for d in args.dir
        )
        flt = "".join(f" --include {g}" for g in args.include) + "".join(
            f" --exclude {g}" for g in args.exclude
        )
        src = f"edge-gate eval-pad {picked}{flt}: {why}"
        if "loso" in report:
            pooled = report["loso"]["pooled"]
            src += (
                f"; leave-one-source-out with the same rule: APCER {pooled['loso_apcer_all']}"
                f" of all attacks (worst type {pooled['loso_apcer']}), BPCER {pooled['loso_bpcer']}"
            )
        write_pad_threshold(models, name, t, src)
        loso = report.get("loso")
        report = evaluate_pad(
            cfg, dirs, pipe, judge_at(PadSpec(**{**spec.__dict__, "threshold": t})), *selection
        )
        if loso is not None:
            report["loso"], report["loso_apcer"], report["loso_bpcer"] = (
                loso,
                loso["pooled"]["loso_apcer"],
                loso["pooled"]["loso_bpcer"],
            )
        report["written_threshold"] = t
        report["threshold_source"] = src
    report["model"] = name
    if not args.per_file:
        report.pop("results")
    _print_report(report, args.json, width=20)
    return 0


def cmd_demo(args) -> int:
    """`edge-gate demo`: every recorded scene through the real gate with a mock relay."""
    fixtures = config_mod.fixtures_dir()
    fx = fixtures if (fixtures / "MANIFEST.tsv").is_file() else None
    if args.lanes:
        work = Path(args.workdir) if args.workdir else Path.cwd() / "var" / "demo-fleet"
        return run_fleet_demo(work, args.lanes, fx, args.fast)
    work = Path(args.workdir) if args.workdir else Path.cwd() / "var" / "demo"
    with decisions_on_console():
        return _demo(work, fixtures, fx, args.fast)


def _demo(work: Path, fixtures: Path, fx: Path | None, fast: bool) -> int:
    cfg_path, scenes = prepare(work, fx)
    cfg = config_mod.load(cfg_path)
    print(f"edge-gate demo: workspace {work} (mock relay, nothing leaves this machine)")
    if fx is None:
        print(f"  shared fixtures not found at {fixtures}: showing the generated ticket clip only")
        cfg = config_mod.override(cfg, gate={"mode": "ticket-only"})  # nobody to enroll
    else:
        pid = enroll_person(
            cfg,
            FacePipeline.from_config(cfg),
            "Lin-Manuel Miranda",
            [fx / "faces" / "lin_manuel_miranda" / "lin-manuel-miranda.png"],
        )
        print(f"  enrolled Lin-Manuel Miranda as {pid} (from one photo; the photo is not stored)")
    totals = {"grant": 0, "deny": 0}
    with open(work / "events.jsonl", "a", encoding="utf-8") as events:
        for scene in scenes:
            print(f"\n== {scene.title}\n   clip: {scene.clip}")

            def show(ev: dict, events=events) -> None:
                events.write(json.dumps(ev) + "\n")
                totals[ev["decision"]] += 1
                print("   " + format_decision(ev), flush=True)

            scene_cfg = config_mod.override(
                cfg, camera={"source": str(scene.clip), "realtime": not fast}
            )
            with Gate(scene_cfg, show) as gate:
                gate.run()
            opened = sum(1 for s in gate.relay.pin.states if s.state == gate.relay.cfg.active_high)
            state = "OPEN" if gate.relay.is_open else "closed"
            print(f"   -> {gate.frames} frames, relay opened {opened} time(s), relay now {state}")
    print(
        f"\n{totals['grant']} grants, {totals['deny']} refusals. Events: {work / 'events.jsonl'}; "
        f"audit log: {work / 'audit.db'}."
    )
    return 0
