"""`edge-gate ledger`: create the redemption ledger (installer and demo run it), rebuild it, and
lower its clock floor after a clock that ran ahead."""

from __future__ import annotations

from pathlib import Path

from edge import config as config_mod
from edge.cli.hints import for_this_run
from edge.cli.paths import existing_file, file_path
from edge.errors import EdgeGateError
from edge.fleet.identity import ensure_lane_key
from edge.gate.audit import check_reason, open_audit
from edge.timeutil import kernel_clock_synced


def cmd_init(args) -> int:
    """`ledger init`: create the redemption ledger that stops a ticket being reused."""
    # the ticket desk (verifiers, pretix rules) loads only for ledger commands
    from edge.gate.desk import init_gate_ledger

    if args.db:
        if args.after_loss:
            raise EdgeGateError(
                "--after-loss needs --config", "it records the loss in the audit log"
            )
        print(init_gate_ledger(Path(args.db)))
        return 0
    cfg = config_mod.load(args.config)
    with open_audit(cfg, "create") as audit:  # the lane's evidence key is made here
        print(
            init_gate_ledger(cfg.resolve(cfg.tickets.ledger), audit, args.after_loss, cfg.gate.id)
        )
    if (key := ensure_lane_key(cfg)) is not None:  # a fleet lane's signing key (0600)
        join = for_this_run("`edge-gate fleet join --config C`", args)
        print(f"lane key {key} ({join} prints it for the roster)")
    return 0


def cmd_recover(args) -> int:
    """`ledger recover`: rebuild a broken or restored ledger; no spent ticket is let in again."""
    # the ticket desk (verifiers, pretix rules) loads only for ledger commands
    from edge.gate.desk import recover_gate_ledger

    cfg = config_mod.load(args.config)
    with open_audit(cfg, "create") as audit:
        print(recover_gate_ledger(cfg, audit, accept_loss=args.accept_loss))
    return 0


def cmd_clock_checked(args) -> int:
    """`ledger clock-checked`: a clock that ran ahead dated records; it is right now."""
    # the ticket desk (verifiers, pretix rules) loads only for ledger commands
    from edge.gate.desk import clock_checked

    reason = check_reason(args.reason, "--reason")
    cfg = config_mod.load(args.config)
    with open_audit(cfg, "use") as audit:
        print(clock_checked(cfg, audit, reason, kernel_clock_synced(), args.set_by_hand))
    return 0


def register(sub, common) -> None:
    """Add `ledger init`, `recover` and `clock-checked` to the parser."""
    led = sub.add_parser("ledger", help="the redemption ledger").add_subparsers(
        dest="ledger_cmd", required=True
    )
    sp = led.add_parser(
        "init",
        help="create the ledger (never created implicitly), "
        "e.g. edge-gate ledger init --config /etc/edge-gate/gate.toml",
    )
    g = sp.add_mutually_exclusive_group()
    g.add_argument(
        "--config",
        type=existing_file,
        help="gate.toml: its tickets.ledger, checked against its audit log",
    )
    g.add_argument(
        "--db", type=file_path, help="a ledger file for `ticket verify --db` (no audit log)"
    )
    sp.add_argument(
        "--after-loss",
        action="store_true",
        help="the previous ledger is lost for good: adopt this one and record it in the audit log",
    )
    sp.set_defaults(func=cmd_init)
    sp = led.add_parser(
        "recover",
        help="rebuild a ledger whose chain is broken or that was restored from an older copy, "
        "from its intact entries and the audit log's ticket grants (the old file is kept), "
        "e.g. edge-gate ledger recover --config /etc/edge-gate/gate.toml",
    )
    sp.add_argument("--config", type=existing_file, required=True, help="gate.toml")
    sp.add_argument(
        "--accept-loss",
        action="store_true",
        help="rebuild even when entries the evidence witness counted are in neither the file "
        "nor the audit log (no backup holds them); recorded in the audit log",
    )
    sp.set_defaults(func=cmd_recover)
    sp = led.add_parser(
        "clock-checked",
        help="the clock is right now: records dated ahead of it by a clock that ran ahead no "
        "longer refuse tickets `clock_behind` until their date (recorded in the audit log)",
    )
    sp.add_argument("--config", type=existing_file, required=True, help="gate.toml")
    sp.add_argument("--reason", required=True, help="what set the clock ahead (kept in the log)")
    sp.add_argument(
        "--set-by-hand",
        action="store_true",
        help="the clock is not synchronised by NTP: it was set by hand and checked",
    )
    sp.set_defaults(func=cmd_clock_checked)
