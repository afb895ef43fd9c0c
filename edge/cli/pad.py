"""`edge-gate eval-pad`: presentation-attack detection figures (ISO/IEC 30107-3 terms)."""

from __future__ import annotations

import json
from pathlib import Path

from edge import config as config_mod
from edge.cli.paths import existing_dir


def cmd_eval_pad(args) -> int:
    """Judge every presentation under DIR; print the report; optionally store the threshold."""
    from edge.measure.pad_eval import evaluate_pad, threshold_for, write_pad_threshold
    from edge.vision.liveness import LivenessJudge, PadModel, PadSpec
    from edge.vision.pipeline import FacePipeline

    cfg = config_mod.load(args.config)
    models = config_mod.models_path(cfg)
    name = args.model or cfg.liveness.model
    spec = PadSpec.load(models, name, require_threshold=not args.write_threshold)
    if args.threshold:
        spec = PadSpec(**{**spec.__dict__, "threshold": args.threshold})
    mode = "model" if cfg.liveness.mode == "off" else cfg.liveness.mode
    judge = LivenessJudge(PadModel(spec, threads=1), mode, cfg.policy.window_s)
    pipe = FacePipeline.from_config(cfg)
    report = evaluate_pad(cfg, Path(args.dir), pipe, judge)
    if args.write_threshold:
        t, why = threshold_for(report["results"])
        src = f"edge-gate eval-pad {args.dir}: {why}"
        write_pad_threshold(models, name, t, src)
        judge = LivenessJudge(
            PadModel(PadSpec(**{**spec.__dict__, "threshold": t}), threads=1), mode
        )
        report = evaluate_pad(cfg, Path(args.dir), pipe, judge)
        report["written_threshold"] = t
        report["threshold_source"] = src
    if not args.per_file:
        report.pop("results")
    if args.json:
        print(json.dumps(report))
    else:
        for k, v in report.items():
            print(f"{k:>20}: {v}")
    return 0


def register(sub, common) -> None:
    """Add `eval-pad` to the command line."""
    sp = sub.add_parser(
        "eval-pad", help="presentation-attack detection on DIR/live and DIR/attack/<type>"
    )
    sp.add_argument(
        "dir", type=existing_dir, help="DIR/live/ and DIR/attack/<type>/ (images or clips)"
    )
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--model", help="liveness model name from models/models.json")
    sp.add_argument("--threshold", type=float, default=0.0, help="judge at this live probability")
    sp.add_argument(
        "--write-threshold",
        action="store_true",
        help="store the threshold (APCER 0 on print and screen images if BPCER <= 5%%)"
        " in models.json",
    )
    sp.add_argument("--per-file", action="store_true", help="include every file's result")
    common(sp)
    sp.set_defaults(func=cmd_eval_pad)
