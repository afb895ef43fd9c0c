"""Many lanes, one park: redemptions, revocations, keys, people and audit shared over MQTT.

`edge-gate sync` (edge/fleet/sync.py) is the lane's only networked process; the gate keeps
PrivateNetwork=yes and meets sync in SQLite: the ledger's outbox and remote redemptions, the
fleet state (link, clock), the revocation list and the keys folder. Wire format: docs/FLEET.md.
"""
