"""Check-in list rules (pretix's JSON logic), evaluated offline as pretix evaluates them.

pretix accepts only a fixed subset of JSON logic on a check-in list (CheckinList.validate_rules
in pretix/base/models/checkin.py): the operators `<, <=, >, >=, ==, !=, inList, isBefore,
isAfter, or, and` with `buildTime, objectList, lookup, var, entries_since, entries_before,
entries_days_since, entries_days_before` inside, and the variables `product, variation, now,
now_isoweekday, entries_number, entries_today, entries_days, minutes_since_last_entry,
minutes_since_first_entry, gate, entry_status`. That subset is implemented here with pretix's
semantics (pretix/base/services/checkin.py, pretix/helpers/jsonlogic.py; JS-style coercion for
comparisons). Anything outside it raises `Unsupported`: the lane refuses the entry with its own
reason instead of guessing what the rule meant. Pure: the entry history comes in as timestamps.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

VARIABLES = frozenset(
    {
        "product",
        "variation",
        "now",
        "now_isoweekday",
        "entries_number",
        "entries_today",
        "entries_days",
        "minutes_since_last_entry",
        "minutes_since_first_entry",
        "gate",
        "entry_status",
    }
)


class Unsupported(ValueError):
    """A rule this lane cannot evaluate the way pretix would (unknown operator, missing data)."""


@dataclass(frozen=True)
class RuleContext:
    """What a rule may look at: the ticket, the time, this list's earlier entries of the ticket."""

    now: dt.datetime  # aware
    tz: ZoneInfo  # the event's time zone
    product: int
    variation: int | None
    entries: Sequence[float] = ()  # Unix times of earlier entries of this ticket on this list
    gate: int | None = None  # the pretix gate this lane stands for, if configured
    event_times: dict[str, dt.datetime | None] = field(default_factory=dict)  # date_from, ...

    def _times(self) -> list[dt.datetime]:
        return sorted(dt.datetime.fromtimestamp(t, dt.UTC) for t in self.entries)

    def var(self, name: str) -> Any:
        """The value of one rule variable, as pretix's LazyRuleVars computes it."""
        times = self._times()
        if name == "now":
            return self.now
        if name == "now_isoweekday":
            return self.now.astimezone(self.tz).isoweekday()
        if name == "product":
            return self.product
        if name == "variation":
            return self.variation
        if name == "gate":
            return self.gate
        if name == "entries_number":
            return len(times)
        if name == "entries_today":
            midnight = self.now.astimezone(self.tz).replace(
                hour=0, minute=0, second=0, microsecond=0
            )
            return sum(1 for t in times if t >= midnight)
        if name == "entries_days":
            return len({t.astimezone(self.tz).date() for t in times})
        if name == "entry_status":  # the lane records entries only
            return "present" if times else "absent"
        if name == "minutes_since_last_entry":
            return (self.now - times[-1]).total_seconds() // 60 if times else -1
        if name == "minutes_since_first_entry":
            return (self.now - times[0]).total_seconds() // 60 if times else -1
        raise Unsupported(f"variable {name!r}")

    def entries_since(self, cutoff: dt.datetime) -> int:
        """Entries at or after the cutoff."""
        return sum(1 for t in self._times() if t >= cutoff)

    def entries_before(self, cutoff: dt.datetime) -> int:
        """Entries strictly before the cutoff."""
        return sum(1 for t in self._times() if t < cutoff)

    def entries_days_since(self, cutoff: dt.datetime) -> int:
        """Distinct days (event zone) with an entry at or after the cutoff."""
        return len({t.astimezone(self.tz).date() for t in self._times() if t >= cutoff})

    def entries_days_before(self, cutoff: dt.datetime) -> int:
        """Distinct days (event zone) with an entry before the cutoff."""
        return len({t.astimezone(self.tz).date() for t in self._times() if t < cutoff})


def _parse_dt(text: Any, what: str) -> dt.datetime:
    if not isinstance(text, str):
        raise Unsupported(f"{what}: not a date-time")
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise Unsupported(f"{what}: cannot read {text!r}") from None
    if value.tzinfo is None:  # pretix itself fails on a naive time: do not guess a zone
        raise Unsupported(f"{what}: {text!r} has no time zone")
    return value


def _build_time(ctx: RuleContext, kind: Any, value: Any = None) -> dt.datetime:
    if not isinstance(kind, str):
        raise Unsupported(f"buildTime {kind!r}")
    if kind == "custom":
        return _parse_dt(value, "buildTime custom")
    if kind == "customtime":
        try:
            t = dt.time.fromisoformat(str(value))
        except ValueError:
            raise Unsupported(f"buildTime customtime: cannot read {value!r}") from None
        local = ctx.now.astimezone(ctx.tz)
        return local.replace(hour=t.hour, minute=t.minute, second=t.second, microsecond=0)
    if kind in ("date_from", "date_to", "date_admission"):
        when = ctx.event_times.get(kind) or ctx.event_times.get("date_from")
        if when is None:
            raise Unsupported(f"buildTime {kind}: the event's dates are not known here")
        return when
    raise Unsupported(f"buildTime {kind!r}")


def _soft_equals(a: Any, b: Any) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return str(a) == str(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) is bool(b)
    return a == b


def _less(a: Any, b: Any, *rest: Any) -> bool:
    if isinstance(a, int | float) or isinstance(b, int | float):
        try:
            a, b = float(a), float(b)
        except (TypeError, ValueError):
            return False
    try:
        ok = a < b
    except TypeError:
        raise Unsupported(f"cannot compare {a!r} with {b!r}") from None
    return ok and (not rest or _less(b, *rest))


def _less_eq(a: Any, b: Any, *rest: Any) -> bool:
    return (_less(a, b) or _soft_equals(a, b)) and (not rest or _less_eq(b, *rest))


def _is_before(t1: Any, t2: Any, tolerance: Any = None) -> bool:
    if not isinstance(t1, dt.datetime) or not isinstance(t2, dt.datetime):
        raise Unsupported("isBefore/isAfter need two times")
    if tolerance:
        return t1 < t2 + dt.timedelta(minutes=float(tolerance))
    return t1 < t2


def _lookup(model: Any, pk: Any, label: Any = None) -> int:
    try:
        return int(pk)
    except (TypeError, ValueError):
        raise Unsupported(f"lookup of {model!r}: id {pk!r}") from None


def _in_list(a: Any, b: Any) -> bool:
    if not isinstance(b, list):
        raise Unsupported("inList needs a list")
    return a in b


_OPS: dict[str, Callable[..., Any]] = {
    "==": _soft_equals,
    "!=": lambda a, b: not _soft_equals(a, b),
    "<": _less,
    "<=": _less_eq,
    ">": lambda a, b: _less(b, a),
    ">=": lambda a, b: _less(b, a) or _soft_equals(a, b),
    "inList": _in_list,
    "isBefore": _is_before,
    "isAfter": lambda t1, t2, tol=None: _is_before(t2, t1, tol),
    "objectList": lambda *objs: list(objs),
    "lookup": _lookup,
}
_ENTRY_OPS = ("entries_since", "entries_before", "entries_days_since", "entries_days_before")
MAX_DEPTH = 32


def evaluate(rule: Any, ctx: RuleContext, depth: int = 0) -> Any:
    """A rule's value (truthy: the entry is allowed); Unsupported outside pretix's set."""
    if depth > MAX_DEPTH:
        raise Unsupported("rules nested too deep")
    if isinstance(rule, list):
        return [evaluate(r, ctx, depth + 1) for r in rule]
    if not isinstance(rule, dict):
        return rule
    keys = [k for k in rule if not str(k).startswith("__")]
    if len(keys) != 1:
        raise Unsupported(f"a rule object needs exactly one operator, found {keys}")
    op = keys[0]
    args = rule[op]
    if not isinstance(args, list | tuple):
        args = [args]
    if op == "var":
        name = args[0] if args else None
        if not isinstance(name, str) or name not in VARIABLES:
            raise Unsupported(f"variable {name!r}")
        return ctx.var(name)
    if op in ("and", "or"):
        values = [evaluate(a, ctx, depth + 1) for a in args]  # pretix evaluates every branch
        if op == "and":
            out: Any = True
            for v in values:
                out = out and v
            return out
        out = False
        for v in values:
            out = out or v
        return out
    values = [evaluate(a, ctx, depth + 1) for a in args]
    if op == "buildTime":
        if not values:
            raise Unsupported("buildTime without a kind")
        return _build_time(ctx, *values[:2])
    if op in _ENTRY_OPS:
        if len(values) != 1 or not isinstance(values[0], dt.datetime):
            raise Unsupported(f"{op} takes exactly one buildTime")
        return getattr(ctx, op)(values[0])
    fn = _OPS.get(op)
    if fn is None:
        raise Unsupported(f"operator {op!r}")
    try:
        return fn(*values)
    except (TypeError, ValueError, OverflowError) as e:
        raise Unsupported(f"operator {op!r} with these arguments: {e}") from None


def allows(rules: Any, ctx: RuleContext) -> bool:
    """True when the list has no rules or they let this entry in; Unsupported when unknowable."""
    if not rules:
        return True
    if not isinstance(rules, dict):  # pretix stores one JSON logic object
        raise Unsupported(f"rules are a {type(rules).__name__}, not a JSON logic object")
    return bool(evaluate(rules, ctx))
