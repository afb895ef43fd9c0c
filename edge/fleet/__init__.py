"""Many lanes, one park: redemptions, revocations, keys, people and audit shared over MQTT.

`edge-gate sync` (edge/fleet/sync.py) is a member's only networked process; the gate keeps
PrivateNetwork=yes and meets sync in SQLite: the ledger's outbox and remote redemptions, the
fleet state (link, clock, roster), the revocation list and the keys folder. Every message is
signed (edge/fleet/messages.py): office decisions with the issuer key, the rest with the
sender's lane key named in the office's signed roster (edge/fleet/identity.py). Wire format
and threat model: docs/FLEET.md.
"""
