"""The promotion gate: a decision record, never an exception.

Like TFX's Evaluator, a challenger must clear absolute floors *and* must not be
worse than the current champion scored on the same holdout (within the spec's
tolerance).  Every rule yields a `RuleResult` saying what was compared and by
how much it passed or failed; "not approved" is a normal, recorded outcome.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pipelines.config import Gate

_EPSILON = 1e-9


@dataclass(frozen=True)
class RuleResult:
    rule: str
    passed: bool
    observed: float | None
    required: float | None
    detail: str

    @property
    def margin(self) -> float | None:
        """How far above (positive) or below (negative) the requirement."""
        if self.observed is None or self.required is None:
            return None
        return round(self.observed - self.required, 6)


@dataclass(frozen=True)
class PromotionDecision:
    approved: bool
    rules: list[RuleResult]
    champion_version: str | None
    forced: bool = False
    forced_reason: str | None = None
    policy: str = "thresholds+champion"
    notes: list[str] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        """One line per failed rule (or the override), for humans."""
        failed = [r.detail for r in self.rules if not r.passed]
        if self.forced:
            return [f"forced promotion: {self.forced_reason}", *failed]
        return failed or ["every rule passed"]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for rule, result in zip(data["rules"], self.rules, strict=True):
            rule["margin"] = result.margin
        data["reasons"] = self.reasons
        return data


def _threshold_rules(gate: Gate, challenger: dict[str, Any]) -> list[RuleResult]:
    rules = []
    for metric, floor in sorted(gate.thresholds.items()):
        value = challenger.get(metric)
        if value is None:
            rules.append(RuleResult(f"threshold:{metric}", False, None, floor, f"{metric} could not be computed"))
            continue
        passed = value >= floor - _EPSILON
        verb = "meets" if passed else "is below"
        rules.append(
            RuleResult(f"threshold:{metric}", passed, value, floor, f"{metric} {value:.4f} {verb} floor {floor:.4f}")
        )
    return rules


def _champion_rules(gate: Gate, challenger: dict[str, Any], champion: dict[str, Any]) -> list[RuleResult]:
    rules = []
    for metric in sorted(set(gate.thresholds) | set(gate.champion_tolerance)):
        ours, theirs = challenger.get(metric), champion.get(metric)
        if ours is None or theirs is None:
            continue
        tolerance = gate.champion_tolerance.get(metric, 0.0)
        required = theirs - tolerance
        # Equal metrics (e.g. the champion re-scored against itself) must pass despite float noise.
        passed = ours >= required - _EPSILON
        verb = "is not worse than" if passed else "is worse than"
        rules.append(
            RuleResult(
                f"champion:{metric}",
                passed,
                ours,
                required,
                f"{metric} {ours:.4f} {verb} champion {theirs:.4f} (tolerance {tolerance:.4f})",
            )
        )
    return rules


def decide_promotion(
    gate: Gate,
    challenger: dict[str, Any],
    *,
    champion: dict[str, Any] | None,
    champion_version: str | None,
    holdout_rows: int,
    force_reason: str | None = None,
) -> PromotionDecision:
    """Decide whether the challenger replaces the champion.

    ``challenger`` and ``champion`` are metric dicts from the same holdout;
    ``champion`` is None when nothing is deployed yet, and then
    ``gate.first_model`` decides.  ``force_reason`` overrides a rejection and is
    recorded verbatim (it must say why).
    """
    rules = [
        RuleResult(
            "min_holdout_rows",
            holdout_rows >= gate.min_holdout_rows,
            float(holdout_rows),
            float(gate.min_holdout_rows),
            f"holdout has {holdout_rows} rows (minimum {gate.min_holdout_rows})",
        ),
        *_threshold_rules(gate, challenger),
    ]
    notes: list[str] = []
    if champion is None:
        policy = f"first model: {gate.first_model}"
        if gate.first_model == "require_manual":
            rules.append(
                RuleResult(
                    "first_model",
                    False,
                    None,
                    None,
                    "no champion yet and the spec requires a manual first promotion",
                )
            )
        else:
            notes.append("no champion yet: promoted on thresholds alone")
    else:
        policy = "thresholds+champion"
        rules.extend(_champion_rules(gate, challenger, champion))
    approved = all(r.passed for r in rules)
    forced = False
    if force_reason is not None:
        if not force_reason.strip():
            raise ValueError("a forced promotion needs a written reason")
        forced = not approved
        approved = True
    return PromotionDecision(
        approved=approved,
        rules=rules,
        champion_version=champion_version,
        forced=forced,
        forced_reason=force_reason.strip() if force_reason else None,
        policy=policy,
        notes=notes,
    )
