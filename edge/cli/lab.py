"""`edge-gate eval / eval-pad / bench / demo`: the lab's commands, declared here, run in edge/lab.

Only the flags live in the product: each command imports `edge.lab.cli` when it runs, so the
gate (`run`, `doctor`, the fleet and ticket commands) never loads measuring or demo code.
"""

from __future__ import annotations

import argparse
import re
from importlib import import_module

from edge.cli.numbers import fraction, non_negative_int, positive_float, positive_int, thread_count
from edge.cli.paths import existing_dir, nonempty_file, output_dir


def regex(text: str) -> str:
    """A regular expression that compiles (argparse names the flag when it does not)."""
    try:
        re.compile(text)
    except re.error as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a regular expression: {e}") from None
    return text


def _lab(name: str):
    """A handler that imports the lab only when its command runs (kept out of the gate)."""

    def run(args) -> int:
        return getattr(import_module("edge.lab.cli"), name)(args)

    run.__name__ = name
    return run


def demo_run_config(cfg):
    """camera.source = "demo" for `run`: the lab's generated ticket clip (and its key)."""
    return import_module("edge.lab.cli").demo_run_config(cfg)


def register(sub, common) -> None:
    """Add eval, bench, eval-pad and demo to the parser."""
    sp = sub.add_parser("eval", help="verification accuracy on DIR/<person>/<image>")
    sp.add_argument("dir", type=existing_dir, help="labelled photos: DIR/<person>/<image>")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--embedder", help="embedder name from models/models.json")
    sp.add_argument("--detector", help="detector name from models/models.json")
    sp.add_argument("--threads", type=thread_count, help="TFLite threads (default vision.threads)")
    sp.add_argument(
        "--open-set",
        action="store_true",
        help="1:N identification: first K images of each person enrolled,"
        " one-image people as strangers",
    )
    sp.add_argument(
        "--templates",
        type=positive_int,
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
    sp.set_defaults(func=_lab("cmd_eval"))

    sp = sub.add_parser("bench", help="per-stage latency on a recorded clip, or 1:N gallery search")
    sp.add_argument(
        "--clip",
        type=nonempty_file,
        help="video file (default: fixtures video/short_hamilton_clip.mp4)",
    )
    sp.add_argument(
        "--threads", type=thread_count, help="one thread count (default: 1 and all cores)"
    )
    sp.add_argument("--frames", type=non_negative_int, default=0, help="stop after N frames")
    sp.add_argument("--embedder", help="embedder name from models/models.json")
    sp.add_argument("--detector", help="detector name from models/models.json")
    sp.add_argument(
        "--gallery",
        type=positive_int,
        default=0,
        metavar="N",
        help="benchmark 1:N search over N templates",
    )
    sp.add_argument(
        "--dim",
        type=positive_int,
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
    sp.add_argument("--lanes", type=positive_int, default=20, help="with --fleet: number of lanes")
    sp.add_argument(
        "--rate",
        type=positive_float,
        default=10.0,
        help="with --fleet: redemptions per second per lane",
    )
    sp.add_argument(
        "--seconds", type=positive_float, default=30.0, help="with --fleet: load duration"
    )
    sp.add_argument(
        "--workdir",
        type=output_dir,
        help="with --fleet: where the lanes' files go (default: a new folder in /dev/shm)",
    )
    sp.add_argument("--json", action="store_true")
    common(sp)
    sp.set_defaults(func=_lab("cmd_bench"))

    sp = sub.add_parser(
        "eval-pad", help="presentation-attack detection on DIR/live and DIR/attack/<type>"
    )
    sp.add_argument(
        "dir",
        type=existing_dir,
        nargs="*",
        help="DIR/live/ and DIR/attack/<type>/ (images or clips); several DIRs are pooled",
    )
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--model", help="liveness model name from models/models.json")
    sp.add_argument(
        "--threshold", type=fraction, default=0.0, help="judge at this live probability"
    )
    sp.add_argument(
        "--fusion",
        choices=("mean", "max", "min", "geometric", "logit"),
        help="fuse the entry's networks by this rule instead of its own (a measurement: the gate"
        " uses the entry's rule)",
    )
    sp.add_argument(
        "--midpoint",
        choices=("mean", "geometric", "logit"),
        default="mean",
        help="with --leave-one-source-out: where between APCER 0 and the live budget each fold's"
        " threshold sits (a measurement: the shipped rule is the mean)",
    )
    sp.add_argument(
        "--write-threshold",
        action="store_true",
        help="store the threshold halfway between APCER 0 and BPCER --target-bpcer on the images"
        " (the budget binds when they cross) in models.json",
    )
    sp.add_argument(
        "--target-bpcer",
        type=float,
        default=0.10,
        help="the threshold rule's live refusal budget (default 0.10)",
    )
    sp.add_argument(
        "--leave-one-source-out",
        action="store_true",
        help="each source judged at the threshold the rule picks on all the others (loso_*)",
    )
    sp.add_argument(
        "--source-pattern",
        metavar="REGEX",
        type=regex,
        help="source tag = this regex's first group in the file name (default: the name before"
        " the first '_', or DIR/frames.csv's source column)",
    )
    sp.add_argument(
        "--include", action="append", default=[], metavar="GLOB", help="only file names matching"
    )
    sp.add_argument(
        "--exclude", action="append", default=[], metavar="GLOB", help="skip file names matching"
    )
    sp.add_argument(
        "--clips",
        type=existing_dir,
        metavar="DIR",
        help="videos in DIR/live and DIR/attack/<type> (or DIR/<type>) judged as the gate would:"
        " clip-level APCER/BPCER and frames to a decision",
    )
    sp.add_argument("--no-cues", action="store_true", help="the model (and motion) alone")
    sp.add_argument(
        "--no-stillness",
        action="store_true",
        help="clips: without the stillness cue (a face that never moves is a picture)",
    )
    sp.add_argument("--per-file", action="store_true", help="include every file's result")
    common(sp)
    sp.set_defaults(func=_lab("cmd_eval_pad"))

    sp = sub.add_parser("demo", help="run the gate on recorded clips with a simulated relay")
    sp.add_argument("--fast", action="store_true", help="do not wait for real time")
    sp.add_argument("--workdir", type=output_dir, help="demo workspace (default var/demo)")
    sp.add_argument(
        "--lanes",
        type=non_negative_int,
        default=0,
        help="N lanes and an office on a local mosquitto: one park (docs/FLEET.md)",
    )
    sp.set_defaults(func=_lab("cmd_demo"))
