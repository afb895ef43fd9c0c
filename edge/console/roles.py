"""Console roles and what each may do: one table, read by routes, templates and the CLI.

Kept apart from the accounts (edge/console/users.py, which needs argon2-cffi) so the command line
can name the roles on a lane where the console's extra is not installed.
"""

from __future__ import annotations

ROLES = ("steward", "supervisor", "admin")
LANGS = ("en", "zh-CN")

# What each capability needs, at least. steward: lanes, decisions, ticket check;
# supervisor: + enrollment, people, forget, revoke, audit, reveal; admin: + users.
CAN = {
    "lanes": "steward",
    "decisions": "steward",
    "tickets.verify": "steward",
    "enroll": "supervisor",
    "people": "supervisor",
    "forget": "supervisor",
    "revoke": "supervisor",
    "audit": "supervisor",
    "reveal": "supervisor",
    "users": "admin",
}


def allowed(role: str, capability: str) -> bool:
    """Whether `role` may use `capability` (unknown capabilities are refused)."""
    need = CAN.get(capability)
    if need is None or role not in ROLES:
        return False
    return ROLES.index(role) >= ROLES.index(need)
