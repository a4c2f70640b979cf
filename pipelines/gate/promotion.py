"""The promotion gate: a decision record, never an exception.

Like TFX's Evaluator, a challenger must clear absolute floors *and* must not be
worse than the current champion scored on the same holdout.  Going further,
every rule below yields a `RuleResult` (observed, required, margin, detail):

* ``min_holdout_rows``  the holdout is big enough to decide on at all;
* ``threshold:<m>``     every floor in ``gate.thresholds`` holds;
* ``baseline:majority:<m>``  the challenger beats always predicting the train
  majority class by ``margin`` (a floor: that baseline's score is constant);
* ``baseline:logistic:<m>``  it is not worse than an L2 logistic regression on
  the same features beyond ``margin``;
* ``slice:<column>=<value>:<m>``  floors hold within every large-enough slice;
* ``champion:<m>``      it is not worse than the champion beyond the tolerance;
* ``comparison:<ref>:<m>``  the paired test (bootstrap CI, or McNemar's mid-p)
  finds no significant drop against ``champion`` or ``logistic``;
* ``comparison:size``   the holdout is big enough for the paired test, else
  ``comparison.too_small`` decides (keep the champion, or point estimates);
* ``first_model``       with no champion, the spec's first-model policy;
* ``rollback_block``    the challenger is a version a person rolled back away
  from: it never returns automatically (force it with a reason, or unblock it).

A drop against a reference model blocks only when it is both *material*
(beyond the tolerance or margin) and *significant*: the point rule and the
paired rule of a metric block each other, each one's ``blocking`` being
whether the other failed too.  A failed non-blocking rule is still reported.
With ``comparison.method: point`` the point rules alone decide.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pipelines.config import Gate, SliceGate
from pipelines.gate.comparison import MetricDifference, PairedComparison
from pipelines.gate.evaluation import SliceMetrics

_EPSILON = 1e-9
#: Skipped slice values named in a note before the rest are only counted.
_NAMED_SKIPS = 8


@dataclass(frozen=True)
class RuleResult:
    """One check: what was observed, what was required, whether it passed."""

    rule: str
    passed: bool
    observed: float | None
    required: float | None
    detail: str
    #: A failed non-blocking rule is reported but does not reject (see the module docstring).
    blocking: bool = True

    @property
    def kind(self) -> str:
        """The rule family: the name up to the first ``:``."""
        return self.rule.split(":", 1)[0]

    @property
    def margin(self) -> float | None:
        """How far above (positive) or below (negative) the requirement."""
        if self.observed is None or self.required is None:
            return None
        return round(self.observed - self.required, 6)

    @property
    def rejects(self) -> bool:
        return self.blocking and not self.passed


@dataclass(frozen=True)
class PromotionDecision:
    approved: bool
    rules: list[RuleResult]
    champion_version: str | None
    forced: bool = False
    forced_reason: str | None = None
    policy: str = "thresholds+champion"
    notes: list[str] = field(default_factory=list)
    #: The paired statistics behind the ``comparison`` rules, per reference model.
    comparisons: dict[str, Any] = field(default_factory=dict)

    @property
    def reasons(self) -> list[str]:
        """One line per rejecting rule (or the override), for humans; then the non-blocking findings."""
        rejecting = [r.detail for r in self.rules if r.rejects]
        findings = [f"not blocking: {r.detail}" for r in self.rules if not r.passed and not r.blocking]
        if self.forced:
            return [f"forced promotion: {self.forced_reason}", *rejecting]
        if rejecting:
            return rejecting
        if findings:
            return ["every blocking rule passed", *findings]
        return ["every rule passed"]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for rule, result in zip(data["rules"], self.rules, strict=True):
            rule["kind"] = result.kind
            rule["margin"] = result.margin
        data["reasons"] = self.reasons
        return data


# -- absolute floors -----------------------------------------------------------


def _floor_rule(name: str, label: str, value: float | None, floor: float) -> RuleResult:
    if value is None:
        return RuleResult(name, False, None, floor, f"{label} could not be computed")
    passed = value >= floor - _EPSILON
    verb = "meets" if passed else "is below"
    return RuleResult(name, passed, value, floor, f"{label} {value:.4f} {verb} floor {floor:.4f}")


def _threshold_rules(gate: Gate, challenger: dict[str, Any]) -> list[RuleResult]:
    return [
        _floor_rule(f"threshold:{metric}", metric, challenger.get(metric), floor)
        for metric, floor in sorted(gate.thresholds.items())
    ]


def _slice_rules(gate: Gate, slices: dict[str, list[SliceMetrics]] | None) -> tuple[list[RuleResult], list[str]]:
    rules: list[RuleResult] = []
    notes: list[str] = []
    for gate_slice in gate.slices:
        measured = (slices or {}).get(gate_slice.column)
        if measured is None:
            detail = f"slice column {gate_slice.column!r} was not scored (rerun evaluate)"
            rules.append(RuleResult(f"slice:{gate_slice.column}", False, None, None, detail))
            continue
        for part in measured:
            if part.metrics is None:
                continue
            for metric, floor in sorted(gate_slice.thresholds.items()):
                label = f"{metric} on {part.column}={part.value} ({part.rows} rows, {part.positives} positives)"
                name = f"slice:{part.column}={part.value}:{metric}"
                rules.append(_floor_rule(name, label, part.metrics.get(metric), floor))
        notes.extend(_slice_notes(gate_slice, measured))
    return rules, notes


def _slice_notes(gate_slice: SliceGate, measured: list[SliceMetrics]) -> list[str]:
    skipped = [p for p in measured if p.metrics is None]
    checked = len(measured) - len(skipped)
    size = f"{gate_slice.min_rows} rows / {gate_slice.min_positives} positives"
    notes = [f"slices on {gate_slice.column}: {checked} checked, {len(skipped)} skipped (below {size})"]
    if skipped:
        named = ", ".join(f"{p.value} ({p.rows} rows, {p.positives} pos)" for p in skipped[:_NAMED_SKIPS])
        more = f" and {len(skipped) - _NAMED_SKIPS} more" if len(skipped) > _NAMED_SKIPS else ""
        notes.append(f"skipped {gate_slice.column} slices: {named}{more}")
    return notes


# -- relative to a reference model (champion, logistic baseline) -------------


@dataclass(frozen=True)
class _Reference:
    """A model the challenger is compared with on the same holdout rows."""

    #: ``champion`` or a baseline name; prefixes the rule names.
    name: str
    #: Rule name prefix of the point-estimate rule (``champion`` or ``baseline:logistic``).
    prefix: str
    metrics: dict[str, Any]
    #: Per metric: how far below the reference the challenger may be (negative: must beat it by).
    allowance: dict[str, float]
    comparison: PairedComparison | None

    def describe_allowance(self, metric: str) -> str:
        allowed = self.allowance[metric]
        if self.name == "champion":
            return f"(tolerance {allowed:.4f})"
        return f"{'-' if allowed >= 0 else '+'} margin {abs(allowed):.4f}"


def _point_rule(ref: _Reference, metric: str, ours: float, theirs: float, *, blocking: bool) -> RuleResult:
    required = theirs - ref.allowance[metric]
    # Equal metrics (e.g. the champion re-scored against itself) must pass despite float noise.
    passed = ours >= required - _EPSILON
    if ref.name == "champion":
        verb = "is not worse than" if passed else "is worse than"
        what = f"champion {theirs:.4f}"
    else:
        verb = "reaches" if passed else "falls short of"
        what = f"the {ref.name} baseline's {theirs:.4f}"
    detail = f"{metric} {ours:.4f} {verb} {what} {ref.describe_allowance(metric)}"
    if not passed and not blocking:
        detail += ", but the gap is not statistically significant"
    return RuleResult(f"{ref.prefix}:{metric}", passed, ours, required, detail, blocking)


def _comparison_rule(
    ref: _Reference, metric: str, stats: MetricDifference, confidence: float, *, material: bool
) -> RuleResult:
    """``comparison:<ref>:<metric>``: fails on a significant drop; blocks only a material one."""
    name = f"comparison:{ref.name}:{metric}"
    if stats.test == "mcnemar" and stats.p_worse is not None:
        alpha = (1.0 - confidence) / 2.0
        observed, required = stats.p_worse, alpha
        evidence = (
            f"McNemar one-sided mid-p {stats.p_worse:.4f} (only the {ref.name} right: {stats.reference_only} rows, "
            f"only the challenger right: {stats.challenger_only}; level {alpha:.4f})"
        )
    elif stats.ci_high is None or stats.ci_low is None:
        return RuleResult(name, True, None, 0.0, f"{metric} difference undefined on this holdout: not tested", False)
    else:
        observed, required = stats.ci_high, 0.0
        evidence = (
            f"{confidence:.0%} CI of {metric} difference (challenger - {ref.name}) "
            f"[{stats.ci_low:+.4f}, {stats.ci_high:+.4f}]"
        )
    if not stats.significant_drop:
        return RuleResult(name, True, observed, required, f"{metric} is not significantly worse: {evidence}", material)
    detail = f"{metric} is significantly worse than the {ref.name}: {evidence}"
    if not material:
        detail += ", but within the allowed gap"
    return RuleResult(name, False, observed, required, detail, material)


def _size_rule(gate: Gate, comparison: PairedComparison) -> RuleResult:
    config = gate.comparison
    rows_ok, positives_ok = comparison.rows >= config.min_rows, comparison.positives >= config.min_positives
    observed = float(comparison.rows if not rows_ok else comparison.positives)
    required = float(config.min_rows if not rows_ok else config.min_positives)
    size = f"{comparison.rows} rows / {comparison.positives} positives"
    minimum = f"minimum {config.min_rows} / {config.min_positives}"
    if rows_ok and positives_ok:
        return RuleResult("comparison:size", True, observed, required, f"paired tests on {size} ({minimum})")
    if config.too_small == "point_estimate":
        detail = f"holdout of {size} is too small for a paired test ({minimum}): point estimates alone decide"
        return RuleResult("comparison:size", False, observed, required, detail, blocking=False)
    detail = f"holdout of {size} is too small to trust a comparison with the champion ({minimum}): keeping the champion"
    return RuleResult("comparison:size", False, observed, required, detail)


def _relative_rules(ref: _Reference, gate: Gate, challenger: dict[str, Any], *, paired: bool) -> list[RuleResult]:
    """Point rule per metric, plus the paired test when ``paired``; each blocks only with the other."""
    rules: list[RuleResult] = []
    for metric in ref.allowance:
        ours, theirs = challenger.get(metric), ref.metrics.get(metric)
        if ours is None or theirs is None:
            missing = "the challenger" if ours is None else f"the {ref.name}"
            detail = f"{metric} could not be computed for {missing}"
            rules.append(RuleResult(f"{ref.prefix}:{metric}", False, ours, None, detail))
            continue
        stats = ref.comparison.differences.get(metric) if paired and ref.comparison else None
        if stats is None:
            rules.append(_point_rule(ref, metric, ours, theirs, blocking=True))
            continue
        # Material *and* significant: each half blocks only when the other failed too.
        point = _point_rule(ref, metric, ours, theirs, blocking=stats.significant_drop)
        tested = _comparison_rule(ref, metric, stats, gate.comparison.confidence, material=not point.passed)
        rules += [point, tested]
    return rules


def _champion_rules(
    gate: Gate, challenger: dict[str, Any], champion: dict[str, Any], comparison: PairedComparison | None
) -> list[RuleResult]:
    allowance = {m: gate.tolerance(m) for m in gate.compared_metrics}
    ref = _Reference("champion", "champion", champion, allowance, comparison)
    if gate.comparison.method == "point":
        return _relative_rules(ref, gate, challenger, paired=False)
    if comparison is None:
        detail = "paired holdout scores are missing, so the champion comparison cannot be tested (rerun evaluate)"
        return [RuleResult("comparison:size", False, None, None, detail)]
    size = _size_rule(gate, comparison)
    return [size, *_relative_rules(ref, gate, challenger, paired=size.passed)]


def _baseline_rules(
    gate: Gate,
    challenger: dict[str, Any],
    baselines: dict[str, dict[str, Any]] | None,
    comparisons: dict[str, PairedComparison],
) -> list[RuleResult]:
    """The majority baseline is a floor (its score is a constant: no noise on its side);
    the logistic one is a paired comparison like the champion's."""
    rules: list[RuleResult] = []
    for name in ("majority", "logistic"):
        check = getattr(gate.baselines, name)
        if check is None:
            continue
        scores = (baselines or {}).get(name)
        if scores is None:
            detail = f"the {name} baseline was not scored (rerun evaluate)"
            rules.append(RuleResult(f"baseline:{name}", False, None, None, detail))
            continue
        comparison = comparisons.get(name)
        ref = _Reference(name, f"baseline:{name}", scores, {m: -check.margin for m in check.metrics}, comparison)
        paired = comparison is not None and gate.comparison.method != "point" and _big_enough(gate, comparison)
        rules += _relative_rules(ref, gate, challenger, paired=paired)
    return rules


def _big_enough(gate: Gate, comparison: PairedComparison) -> bool:
    return comparison.rows >= gate.comparison.min_rows and comparison.positives >= gate.comparison.min_positives


# -- the decision --------------------------------------------------------------


def decide_promotion(
    gate: Gate,
    challenger: dict[str, Any],
    *,
    champion: dict[str, Any] | None,
    champion_version: str | None,
    holdout_rows: int,
    comparisons: dict[str, PairedComparison] | None = None,
    baselines: dict[str, dict[str, Any]] | None = None,
    slices: dict[str, list[SliceMetrics]] | None = None,
    force_reason: str | None = None,
    blocked: str | None = None,
) -> PromotionDecision:
    """Decide whether the challenger replaces the champion.

    ``challenger`` and ``champion`` are metric dicts from the same holdout;
    ``champion`` is None when nothing is deployed yet, and then
    ``gate.first_model`` decides.  ``comparisons`` maps ``champion`` and
    ``logistic`` to the paired statistics of the challenger against that model
    (`pipelines.gate.comparison.compare_paired`); ``baselines`` holds each
    baseline's metric dict; ``slices`` the per-value metrics of each slice
    column (`pipelines.gate.evaluation.slice_metrics`).  ``blocked`` says why the
    challenger was rolled back away from (who, when, why), if it was: a
    failing ``rollback_block`` rule.  ``force_reason`` overrides a rejection
    (a block included) and is recorded verbatim (it must say why).
    """
    slice_rules, notes = _slice_rules(gate, slices)
    rules = [
        RuleResult(
            "min_holdout_rows",
            holdout_rows >= gate.min_holdout_rows,
            float(holdout_rows),
            float(gate.min_holdout_rows),
            f"holdout has {holdout_rows} rows (minimum {gate.min_holdout_rows})",
        ),
        *_threshold_rules(gate, challenger),
        *_baseline_rules(gate, challenger, baselines, comparisons or {}),
        *slice_rules,
    ]
    if champion is None:
        policy = f"first model: {gate.first_model}"
        rules.append(_first_model_rule(gate))
    else:
        policy = f"thresholds+champion ({gate.comparison.method})"
        rules.extend(_champion_rules(gate, challenger, champion, (comparisons or {}).get("champion")))
    if blocked:
        rules.append(RuleResult("rollback_block", False, None, None, blocked))
    approved = not any(r.rejects for r in rules)
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
        comparisons={name: c.to_dict() for name, c in sorted((comparisons or {}).items())},
    )


def _first_model_rule(gate: Gate) -> RuleResult:
    if gate.first_model == "require_manual":
        detail = "no champion yet and the spec requires a manual first promotion (first_model: require_manual)"
        return RuleResult("first_model", False, None, None, detail)
    detail = "no champion yet: promoted on thresholds, baselines and slices alone (first_model: promote_if_thresholds)"
    return RuleResult("first_model", True, None, None, detail)
