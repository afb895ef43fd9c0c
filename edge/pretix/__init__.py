"""pretix, the ticket shop: its REST API, the pull into the lane's pretix folder, check-ins back.

Only `edge-gate pretix sync` (its own process, network to the shop only) imports this package;
the gate decides pretix secrets offline from the folder (edge/tickets/pretix_offline.py).
"""
