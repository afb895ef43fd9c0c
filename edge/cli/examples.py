"""One example per command, shown at the end of its `--help` (kept here so none is forgotten)."""

from __future__ import annotations

EXAMPLES: dict[str, str] = {
    "eval": "edge-gate eval ../shared/fixtures/faces --json",
    "bench": "edge-gate bench --threads 1   |   edge-gate bench --gate   |   "
    "edge-gate bench --gallery 100000",
    "eval-pad": "edge-gate eval-pad ../shared/fixtures/pad --json",
    "run": "edge-gate run --config /etc/edge-gate/gate.toml --quiet   "
    "(or off-Pi: edge-gate run --fast)",
    "demo": "edge-gate demo --fast",
    "doctor": "sudo -u edge-gate edge-gate doctor --config /etc/edge-gate/gate.toml",
    "ticket keygen": "edge-gate ticket keygen --out office/",
    "ticket issue": "edge-gate ticket issue --key office/issuer.key --id DAY-0001 "
    "--valid-until 2026-12-31 --out tickets/",
    "ticket verify": (
        "edge-gate ticket verify --config /etc/edge-gate/gate.toml --redeem ticket.png"
    ),
    "pretix sync": "edge-gate pretix sync --config /etc/edge-gate/gate.toml",
    "pretix init-device": (
        "sudo -u edge-gate edge-gate pretix init-device --config /etc/edge-gate/gate.toml "
        "--init-token -"
    ),
    "ticket revoke": "edge-gate ticket revoke --list /var/lib/edge-gate/revoked.txt DAY-0001",
    "ticket unrevoke": "edge-gate ticket unrevoke --list /var/lib/edge-gate/revoked.txt DAY-0001",
    "qr read": "edge-gate qr read photo-of-a-ticket.jpg",
    "ledger init": "sudo -u edge-gate edge-gate ledger init --config /etc/edge-gate/gate.toml",
    "ledger recover": "sudo -u edge-gate edge-gate ledger recover "
    "--config /etc/edge-gate/gate.toml",
    "ledger clock-checked": "sudo -u edge-gate edge-gate ledger clock-checked "
    '--config /etc/edge-gate/gate.toml --reason "the NTP server was a year ahead"',
    "audit verify": "edge-gate audit verify --config /etc/edge-gate/gate.toml",
    "audit adopt": "sudo -u edge-gate edge-gate audit adopt --config /etc/edge-gate/gate.toml",
    "audit export": "edge-gate audit export --config /etc/edge-gate/gate.toml "
    "--since 2026-11-01 --json",
    "keys init": "edge-gate keys init --key-file var/gallery.key",
    "keys rotate": "sudo edge-gate keys rotate --config /etc/edge-gate/gate.toml",
    "enroll": "edge-gate enroll --name-file name.txt --consent-version 2026-03 "
    "--valid-until 2027-03-31 a.jpg b.jpg c.jpg",
    "people": "edge-gate people --json",
    "forget": "edge-gate forget --reason deletion_request P-1a2b3c4d",
    "purge": "edge-gate purge --days 30",
    "pass renew": "edge-gate pass renew P-1a2b3c4d --valid-until 2027-03-31",
    "pass edit": "edge-gate pass edit P-1a2b3c4d --pass-id-file pass.txt",
    "privacy-report": "edge-gate privacy-report --config /etc/edge-gate/gate.toml > report.md",
    "sync": "edge-gate sync --config /etc/edge-gate/gate.toml",
    "fleet status": "edge-gate fleet status --config /etc/edge-gate/gate.toml --check",
    "fleet audit": "edge-gate fleet audit --config office.toml --since 2026-11-27   |   "
    "edge-gate fleet audit verify --config office.toml",
    "fleet join": "sudo -u edge-gate edge-gate fleet join --config /etc/edge-gate/gate.toml",
    "fleet roster add": "edge-gate fleet roster add --config office.toml --key office/issuer.key "
    "lane1 <key printed by fleet join>",
    "fleet roster remove": "edge-gate fleet roster remove --config office.toml "
    "--key office/issuer.key lane3",
    "fleet roster show": "edge-gate fleet roster show --config office.toml",
    "fleet roster publish": "edge-gate fleet roster publish --config office.toml "
    "--key office/issuer.key",
    "fleet broker-config": "edge-gate fleet broker-config --config office.toml "
    "--out /etc/mosquitto/conf.d/edge-gate --tls-cert server.crt --tls-key server.key",
    "console": "edge-gate console --config /etc/edge-gate/office.toml",
    "console adduser": "edge-gate console adduser ana --role supervisor "
    "--config /etc/edge-gate/office.toml",
    "screen": "edge-gate screen --config /etc/edge-gate/gate.toml --kiosk",
    "fleet publish-keys": "edge-gate fleet publish-keys --config office.toml "
    "--key office/issuer.key office/issuer.pub",
    "fleet override": "edge-gate fleet override lane2 --reason 'wheelchair user' --by ana "
    "--key office/issuer.key --config office.toml",
}

# Help for flags that mean the same everywhere.
COMMON_HELP = {
    "json": "print JSON (one object, or one per line) instead of text",
    "person_id": "the person's id (P-…), as `edge-gate people` shows it",
}
