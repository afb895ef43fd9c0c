"""The gate's decision rule for the gallery in use, and the error rates it is expected to have.

`threshold_for` (pure) picks the rule calibrated for the number of people enrolled from the
table `edge-gate eval --open-set --write-threshold` writes into models.json; LiveMatcher uses it.

`doctor` and `privacy-report` print this so an operator knows, for the number of people
enrolled, how often a stranger would be let in (FPIR) and a pass holder refused (FNIR).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edge import config as config_mod
from edge.vision.models import embedder_spec


@dataclass(frozen=True)
class Rule:
    """A decision rule calibrated for a gallery size, with the error rates measured there."""

    gallery_people: int
    threshold: float
    min_margin: float
    fpir: float | None = None
    fnir: float | None = None
    templates_per_person: int = 1


def rules_from_catalogue(entries: Sequence[dict]) -> tuple[Rule, ...]:
    """The `thresholds` list of a models.json embedder entry, sorted by gallery size."""
    rules = [
        Rule(
            int(e["gallery_people"]),
            float(e["threshold"]),
            float(e.get("min_margin", 0.0)),
            e.get("fpir"),
            e.get("fnir"),
            int(e.get("templates_per_person", 1)),
        )
        for e in entries
        if e.get("threshold") is not None
    ]
    return tuple(sorted(rules, key=lambda r: r.gallery_people))


def threshold_for(n_people: int, table: Sequence[Rule]) -> Rule | None:
    """The rule for the nearest calibrated size at or above n_people (the largest beyond them all).

    A larger gallery gives every stranger more chances to look like someone, so a rule made for
    fewer people than are enrolled would let more strangers in than it says.
    """
    if not table:
        return None
    ordered = sorted(table, key=lambda r: r.gallery_people)
    for r in ordered:
        if r.gallery_people >= n_people:
            return r
    return ordered[-1]


def expected_rates(n_people: int, table: Sequence[Rule]) -> dict | None:
    """What the gate should expect at this many enrolled people: the rule and its measured rates."""
    r = threshold_for(n_people, table)
    if r is None:
        return None
    return {
        "people": n_people,
        "calibrated_for_people": r.gallery_people,
        "beyond_calibration": n_people > r.gallery_people,
        "threshold": r.threshold,
        "min_margin": r.min_margin,
        "fpir": r.fpir,
        "fnir": r.fnir,
        "templates_per_person": r.templates_per_person,
    }


def expected_for(cfg: config_mod.Config, n_people: int) -> dict:
    """Threshold, margin and measured FPIR/FNIR of the rule the gate uses at n_people."""
    spec = embedder_spec(config_mod.models_path(cfg), cfg.vision.embedder)
    base = {"embedder": spec.name, "people": n_people}
    if cfg.gallery.match_threshold > 0:
        return {
            **base,
            "threshold": cfg.gallery.match_threshold,
            "min_margin": cfg.gallery.min_margin,
            "fpir": None,
            "fnir": None,
            "source": "gallery.match_threshold in the config (error rates not measured)",
        }
    r = expected_rates(n_people, rules_from_catalogue(spec.thresholds))
    if r is None:
        return {
            **base,
            "threshold": spec.threshold,
            "min_margin": cfg.gallery.min_margin,
            "fpir": None,
            "fnir": None,
            "source": "models.json 1:1 threshold (no open-set calibration for this embedder)",
        }
    return {**base, **r, "source": "models.json, `eval --open-set --write-threshold`"}


def describe(e: dict) -> str:
    """One line for people: the rule and what to expect of it."""

    def pct(x: float | None) -> str:
        return "not measured" if x is None else f"{x * 100:.2f}%"

    text = (
        f"{e['embedder']} at {e['people']} people: cosine >= {e['threshold']:.4f}, "
        f"lead >= {e['min_margin']:.2f}; strangers let in {pct(e['fpir'])}, "
        f"pass holders refused {pct(e['fnir'])}"
    )
    if "calibrated_for_people" in e:
        # the figures of the set the rule was chosen on (`eval --open-set`): a stranger filed
        # under another spelling of an enrolled name is the same face and is not counted
        text += (
            f" (measured on the set the rule was chosen on, {e['calibrated_for_people']} "
            "people; strangers filed under another spelling of an enrolled name not counted"
        )
        text += (
            ", fewer than enrolled: expect more strangers let in)"
            if e["beyond_calibration"]
            else ")"
        )
    return text
