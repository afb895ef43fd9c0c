"""`edge-gate ledger init`: create the redemption ledger explicitly (installer and demo run it)."""

from __future__ import annotations

from pathlib import Path

from edge import config as config_mod
from edge.cli.hints import for_this_run
from edge.cli.paths import existing_file, file_path
from edge.errors import EdgeGateError
from edge.fleet.identity import ensure_lane_key
from edge.gate.audit import open_audit


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
        print(recover_gate_ledger(cfg, audit))
    return 0


def register(sub, common) -> None:
    """Add `ledger init` to the parser."""
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
    sp.set_defaults(func=cmd_recover)
