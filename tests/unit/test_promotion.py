"""The gate: both branches of every rule, every policy, and the decision record's shape."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from pipelines.config import BaselineCheck, Baselines, Comparison, Gate, SliceGate, VerticalSpec
from pipelines.gate.comparison import MetricDifference, PairedComparison, compare_paired
from pipelines.gate.evaluation import SliceMetrics
from pipelines.gate.promotion import RuleResult, decide_promotion

POINT = Gate(
    thresholds={"accuracy": 0.70, "recall": 0.50, "f1": 0.55},
    champion_tolerance={"accuracy": 0.01, "f1": 0.02},
    comparison=Comparison(method="point"),
    baselines=Baselines(majority=None, logistic=None),
    min_holdout_rows=100,
)
PAIRED = POINT.model_copy(update={"comparison": Comparison(method="bootstrap", min_rows=200, min_positives=20)})
GOOD = {"accuracy": 0.80, "recall": 0.60, "f1": 0.65, "precision": 0.7, "auroc": 0.85, "balanced_accuracy": 0.75}
BASELINES = {
    "majority": {"accuracy": 0.9, "balanced_accuracy": 0.5, "f1": 0.0, "auroc": 0.5, "threshold": 0.5},
    "logistic": {"accuracy": 0.78, "balanced_accuracy": 0.7, "f1": 0.6, "auroc": 0.82, "threshold": 0.5},
}


def rule(decision, name: str) -> RuleResult:
    return next(r for r in decision.rules if r.rule == name)


def names(decision) -> list[str]:
    return [r.rule for r in decision.rules]


def decide(gate: Gate = POINT, challenger: dict | None = None, **kwargs):
    kwargs.setdefault("champion", None)
    kwargs.setdefault("champion_version", None if kwargs["champion"] is None else "mv-old")
    kwargs.setdefault("holdout_rows", 500)
    return decide_promotion(gate, GOOD if challenger is None else challenger, **kwargs)


def paired(differences: dict[str, tuple[float, float, float]], *, rows: int = 500, positives: int = 100, **extra):
    """A PairedComparison from (delta, ci_low, ci_high) per metric; significant when ci_high < 0."""
    diffs = {
        m: MetricDifference(
            metric=m,
            challenger=None,
            reference=None,
            delta=d,
            ci_low=lo,
            ci_high=hi,
            p_worse=extra.get("p_worse"),
            reference_only=extra.get("reference_only"),
            challenger_only=extra.get("challenger_only"),
            test=extra.get("test", "bootstrap"),
            significant_drop=extra.get("significant", hi < 0),
        )
        for m, (d, lo, hi) in differences.items()
    }
    return PairedComparison("bootstrap", 0.95, 1000, 0, rows, positives, diffs)


# -- absolute floors, sizes, first model ---------------------------------------


def test_first_model_is_promoted_on_thresholds_and_the_policy_is_reported():
    decision = decide()
    assert decision.approved
    assert decision.policy == "first model: promote_if_thresholds"
    first = rule(decision, "first_model")
    assert first.passed and "promote_if_thresholds" in first.detail
    assert not any(r.kind in ("champion", "comparison") for r in decision.rules)
    assert decision.reasons == ["every rule passed"]


def test_first_model_policy_require_manual_rejects_even_a_good_model():
    decision = decide(POINT.model_copy(update={"first_model": "require_manual"}))
    assert not decision.approved
    assert not rule(decision, "first_model").passed
    assert "manual first promotion" in decision.reasons[0]


def test_threshold_miss_rejects_and_says_by_how_much():
    decision = decide(challenger={**GOOD, "recall": 0.42})
    assert not decision.approved
    recall = rule(decision, "threshold:recall")
    assert not recall.passed and recall.kind == "threshold"
    assert recall.margin == pytest.approx(-0.08)
    assert decision.reasons == ["recall 0.4200 is below floor 0.5000"]


def test_too_small_holdout_rejects():
    decision = decide(holdout_rows=20)
    assert not decision.approved
    assert "holdout has 20 rows (minimum 100)" in decision.reasons


def test_missing_metric_fails_its_rule():
    decision = decide(challenger={**GOOD, "f1": None})
    assert not decision.approved
    assert "f1 could not be computed" in decision.reasons


# -- champion: point estimates (method: point) --------------------------------


def test_point_worse_than_champion_beyond_tolerance_is_rejected():
    decision = decide(champion={**GOOD, "f1": 0.70})
    assert not decision.approved
    f1 = rule(decision, "champion:f1")
    assert not f1.passed and f1.blocking and f1.required == pytest.approx(0.68)
    assert decision.champion_version == "mv-old"
    assert decision.policy == "thresholds+champion (point)"


def test_point_slightly_worse_within_tolerance_is_approved():
    decision = decide(champion={**GOOD, "accuracy": 0.805, "f1": 0.66})
    assert decision.approved
    assert rule(decision, "champion:accuracy").passed
    assert rule(decision, "champion:recall").passed  # no tolerance: equal is fine


def test_point_metric_without_tolerance_must_not_drop_at_all():
    decision = decide(champion={**GOOD, "recall": 0.61})
    assert not decision.approved
    assert not rule(decision, "champion:recall").passed


def test_champion_rescored_against_itself_passes_despite_float_noise():
    metrics = {"accuracy": 0.7501234567, "recall": 0.6, "f1": 0.6, "auroc": 0.1 + 0.2}
    decision = decide(challenger=metrics, champion=dict(metrics))
    assert decision.approved, decision.reasons


def test_comparison_metrics_pick_the_primary_metrics():
    gate = POINT.model_copy(update={"comparison": Comparison(method="point", metrics=["auroc"])})
    decision = decide(gate, champion={**GOOD, "f1": 0.9, "auroc": 0.84})
    assert decision.approved  # f1 is no longer compared with the champion; its floor still holds
    assert [n for n in names(decision) if n.startswith("champion")] == ["champion:auroc"]


# -- champion: paired test (method: bootstrap / mcnemar) ----------------------


def test_material_and_significant_drop_is_rejected_by_both_halves():
    stats = paired({"f1": (-0.05, -0.08, -0.02)})
    decision = decide(PAIRED, champion={**GOOD, "f1": 0.70}, comparisons={"champion": stats})
    assert not decision.approved
    point, tested = rule(decision, "champion:f1"), rule(decision, "comparison:champion:f1")
    assert (point.passed, point.blocking, tested.passed, tested.blocking) == (False, True, False, True)
    assert tested.observed == pytest.approx(-0.02) and tested.required == 0.0
    assert "significantly worse than the champion" in " ".join(decision.reasons)
    assert "[-0.0800, -0.0200]" in tested.detail


def test_material_drop_that_is_not_significant_is_reported_but_approved():
    stats = paired({"f1": (-0.05, -0.12, 0.03)})
    decision = decide(PAIRED, champion={**GOOD, "f1": 0.70}, comparisons={"champion": stats})
    assert decision.approved
    point, tested = rule(decision, "champion:f1"), rule(decision, "comparison:champion:f1")
    assert (point.passed, point.blocking, tested.passed) == (False, False, True)
    assert point.margin == pytest.approx(-0.03)
    assert decision.reasons[0] == "every blocking rule passed"
    assert decision.reasons[1].startswith("not blocking: f1 0.6500 is worse than champion 0.7000")
    assert "not statistically significant" in decision.reasons[1]


def test_significant_drop_within_tolerance_is_reported_but_approved():
    stats = paired({"accuracy": (-0.005, -0.009, -0.001)})
    decision = decide(PAIRED, champion={**GOOD, "accuracy": 0.805}, comparisons={"champion": stats})
    assert decision.approved
    tested = rule(decision, "comparison:champion:accuracy")
    assert (tested.passed, tested.blocking) == (False, False)
    assert "within the allowed gap" in tested.detail


def test_mcnemar_rule_compares_the_p_value_with_the_one_sided_level():
    stats = paired({"recall": (-0.2, -0.3, -0.1)}, test="mcnemar", p_worse=0.004, reference_only=9, challenger_only=1)
    decision = decide(PAIRED, champion={**GOOD, "recall": 0.80}, comparisons={"champion": stats})
    tested = rule(decision, "comparison:champion:recall")
    assert not decision.approved and not tested.passed
    assert (tested.observed, tested.required) == (0.004, pytest.approx(0.025))
    assert "McNemar one-sided mid-p 0.0040" in tested.detail and "9 rows" in tested.detail


def test_undefined_difference_is_not_tested_and_the_point_rule_does_not_block_alone():
    stats = paired({"f1": (-0.05, float("nan"), float("nan"))})
    stats.differences["f1"] = MetricDifference("f1", None, None, None, None, None, None, None, None, "bootstrap", False)
    decision = decide(PAIRED, champion={**GOOD, "f1": 0.70}, comparisons={"champion": stats})
    assert decision.approved
    assert "not tested" in rule(decision, "comparison:champion:f1").detail


def test_holdout_too_small_for_the_paired_test_keeps_the_champion():
    stats = paired({"f1": (0.0, 0.0, 0.0)}, rows=150, positives=40)
    decision = decide(PAIRED, champion=GOOD, comparisons={"champion": stats})
    assert not decision.approved
    size = rule(decision, "comparison:size")
    assert (size.observed, size.required) == (150.0, 200.0)
    assert "keeping the champion" in decision.reasons[0]


def test_too_few_positives_counts_as_too_small():
    stats = paired({"f1": (0.0, 0.0, 0.0)}, rows=500, positives=12)
    decision = decide(PAIRED, champion=GOOD, comparisons={"champion": stats})
    assert not decision.approved
    assert (rule(decision, "comparison:size").observed, rule(decision, "comparison:size").required) == (12.0, 20.0)


def test_too_small_with_point_estimate_policy_falls_back_to_tolerances():
    gate = PAIRED.model_copy(
        update={"comparison": Comparison(min_rows=200, min_positives=20, too_small="point_estimate")}
    )
    stats = paired({"f1": (-0.05, -0.12, 0.03)}, rows=150)
    decision = decide(gate, champion={**GOOD, "f1": 0.70}, comparisons={"champion": stats})
    assert not decision.approved  # the point rule blocks on its own now
    size = rule(decision, "comparison:size")
    assert not size.passed and not size.blocking
    assert rule(decision, "champion:f1").blocking
    assert "comparison:champion:f1" not in names(decision)
    small_and_fine = decide(gate, champion=GOOD, comparisons={"champion": stats})
    assert small_and_fine.approved


def test_paired_method_without_scores_rejects_with_what_to_do():
    decision = decide(PAIRED, champion=GOOD)
    assert not decision.approved
    assert "rerun evaluate" in decision.reasons[0]


def test_noise_is_approved_and_a_real_drop_rejected_end_to_end():
    rng = np.random.default_rng(3)
    y = (rng.random(600) < 0.25).astype(int)
    champion_prob = np.clip(0.4 * y + 0.6 * rng.random(600), 0, 1)
    positives = np.flatnonzero(y == 1)
    caught = positives[champion_prob[positives] >= 0.5]
    missed = positives[champion_prob[positives] < 0.5]
    gate = PAIRED.model_copy(
        update={"champion_tolerance": {"recall": 0.02}, "comparison": Comparison(metrics=["recall"])}
    )

    def verdict(lost: int, gained: int):
        challenger_prob = champion_prob.copy()
        challenger_prob[caught[:lost]] = 0.1
        challenger_prob[missed[:gained]] = 0.9
        stats = compare_paired(
            y, challenger_prob, champion_prob, challenger_threshold=0.5, reference_threshold=0.5,
            metrics=["recall"], config=gate.comparison,
        )  # fmt: skip
        ours = {**GOOD, "recall": float(np.mean(challenger_prob[positives] >= 0.5))}
        theirs = {**GOOD, "recall": float(np.mean(champion_prob[positives] >= 0.5))}
        return decide(gate, ours, champion=theirs, holdout_rows=600, comparisons={"champion": stats})

    noisy = verdict(lost=9, gained=4)  # recall -0.034: beyond tolerance, within noise
    assert not rule(noisy, "champion:recall").passed
    assert noisy.approved, noisy.reasons
    real = verdict(lost=30, gained=2)  # recall -0.19
    assert not real.approved
    assert not rule(real, "comparison:champion:recall").passed


# -- baselines -----------------------------------------------------------------

BASELINE_GATE = POINT.model_copy(
    update={
        "baselines": Baselines(
            majority=BaselineCheck(metrics=["balanced_accuracy"], margin=0.05),
            logistic=BaselineCheck(metrics=["auroc", "f1"], margin=-0.02),
        )
    }
)


def test_challenger_beating_both_baselines_passes_with_margins():
    decision = decide(BASELINE_GATE, baselines=BASELINES)
    assert decision.approved
    majority = rule(decision, "baseline:majority:balanced_accuracy")
    assert majority.kind == "baseline" and majority.required == pytest.approx(0.55)
    assert rule(decision, "baseline:logistic:auroc").required == pytest.approx(0.80)
    assert "+ margin 0.0500" in majority.detail


def test_useless_model_fails_the_majority_baseline():
    useless = {**GOOD, "balanced_accuracy": 0.52}
    decision = decide(BASELINE_GATE, useless, baselines=BASELINES)
    assert not decision.approved
    assert "falls short of the majority baseline's 0.5000 + margin 0.0500" in decision.reasons[0]


def test_worse_than_logistic_regression_fails_on_points_without_a_paired_test():
    decision = decide(BASELINE_GATE, {**GOOD, "auroc": 0.79}, baselines=BASELINES)
    assert not decision.approved
    assert not rule(decision, "baseline:logistic:auroc").passed


def test_worse_than_logistic_blocks_only_when_significant_under_a_paired_method():
    gate = BASELINE_GATE.model_copy(update={"comparison": Comparison()})
    noisy = decide(
        gate,
        {**GOOD, "auroc": 0.79},
        baselines=BASELINES,
        comparisons={"logistic": paired({"auroc": (-0.03, -0.07, 0.01)})},
    )
    assert noisy.approved
    assert not rule(noisy, "baseline:logistic:auroc").blocking
    real = decide(
        gate,
        {**GOOD, "auroc": 0.70},
        baselines=BASELINES,
        comparisons={"logistic": paired({"auroc": (-0.12, -0.16, -0.08)})},
    )
    assert not real.approved
    assert not rule(real, "comparison:logistic:auroc").passed


def test_missing_baseline_scores_fail_and_disabled_baselines_are_absent():
    decision = decide(BASELINE_GATE, baselines={"majority": BASELINES["majority"]})
    assert not decision.approved
    assert "the logistic baseline was not scored (rerun evaluate)" in decision.reasons
    assert not any(n.startswith("baseline:") for n in names(decide(POINT, baselines=BASELINES)))


# -- slices --------------------------------------------------------------------

SLICE_GATE = POINT.model_copy(
    update={"slices": [SliceGate(column="clinic", min_rows=50, min_positives=5, thresholds={"recall": 0.4})]}
)


def clinic(value: str, rows: int, positives: int, recall: float | None) -> SliceMetrics:
    return SliceMetrics("clinic", value, rows, positives, None if recall is None else {"recall": recall})


def test_every_large_slice_must_meet_its_floor_small_ones_are_skipped():
    slices = {"clinic": [clinic("lab", 300, 30, 0.55), clinic("er", 120, 10, 0.30), clinic("icu", 12, 1, None)]}
    decision = decide(SLICE_GATE, slices=slices)
    assert not decision.approved
    er = rule(decision, "slice:clinic=er:recall")
    assert er.kind == "slice" and er.margin == pytest.approx(-0.10)
    assert "recall on clinic=er (120 rows, 10 positives) 0.3000 is below floor 0.4000" in decision.reasons
    assert rule(decision, "slice:clinic=lab:recall").passed
    assert "slice:clinic=icu:recall" not in names(decision)
    assert "slices on clinic: 2 checked, 1 skipped (below 50 rows / 5 positives)" in decision.notes
    assert "skipped clinic slices: icu (12 rows, 1 pos)" in decision.notes


def test_slices_passing_approve_and_missing_slice_scores_reject():
    assert decide(SLICE_GATE, slices={"clinic": [clinic("lab", 300, 30, 0.55)]}).approved
    missing = decide(SLICE_GATE, slices={})
    assert not missing.approved
    assert "slice column 'clinic' was not scored (rerun evaluate)" in missing.reasons


def test_many_skipped_slices_are_counted_not_listed():
    parts = [clinic(f"c{i:02d}", 3, 0, None) for i in range(20)]
    notes = decide(SLICE_GATE, slices={"clinic": parts}).notes
    assert notes[1].endswith("and 12 more")


# -- overrides and the record --------------------------------------------------


def test_forced_promotion_overrides_and_records_reason():
    decision = decide(challenger={**GOOD, "accuracy": 0.5}, force_reason="  hotfix for audit  ")
    assert decision.approved and decision.forced
    assert decision.forced_reason == "hotfix for audit"
    assert decision.reasons[0] == "forced promotion: hotfix for audit"
    assert any("accuracy" in r for r in decision.reasons[1:])


def test_a_version_rolled_back_away_from_is_rejected_until_forced():
    why = "mv-c was rolled back on 2026-11-30 09:12 UTC by cli:bob because recall complaints; force it or unblock it"
    good = decide(challenger=GOOD)
    assert good.approved
    blocked = decide(challenger=GOOD, blocked=why)
    assert not blocked.approved and rule(blocked, "rollback_block").detail == why
    assert blocked.reasons == [why]  # every other rule passed: the block alone says why
    forced = decide(challenger=GOOD, blocked=why, force_reason="root cause fixed (INC-42)")
    assert forced.approved and forced.forced
    assert forced.reasons == ["forced promotion: root cause fixed (INC-42)", why]


def test_forced_promotion_needs_a_reason():
    with pytest.raises(ValueError, match="written reason"):
        decide(force_reason="  ")


def test_decision_record_is_serialisable_with_kinds_margins_and_stats():
    gate = BASELINE_GATE.model_copy(update={"comparison": Comparison(), "slices": SLICE_GATE.slices})
    stats = paired({"accuracy": (0.0, -0.01, 0.01), "f1": (0.0, -0.02, 0.02), "recall": (0.0, -0.03, 0.03)})
    decision = decide(
        gate,
        champion=GOOD,
        baselines=BASELINES,
        comparisons={"champion": stats},
        slices={"clinic": [clinic("lab", 300, 30, 0.55)]},
    )
    record = json.loads(json.dumps(decision.to_dict()))
    assert record["approved"] is True
    assert all({"kind", "margin", "blocking", "observed", "required", "detail"} <= set(r) for r in record["rules"])
    kinds = {r["kind"] for r in record["rules"]}
    assert kinds == {"min_holdout_rows", "threshold", "baseline", "slice", "champion", "comparison"}
    assert record["comparisons"]["champion"]["differences"]["f1"]["ci_high"] == 0.02
    assert record["reasons"] == ["every rule passed"]


# -- the gate's schema ---------------------------------------------------------


def test_gate_defaults_are_the_documented_ones():
    gate = Gate(thresholds={"accuracy": 0.5, "recall": 0.5, "f1": 0.5})
    assert (gate.comparison.method, gate.comparison.confidence, gate.comparison.resamples) == ("bootstrap", 0.95, 1000)
    assert (gate.comparison.min_rows, gate.comparison.min_positives) == (200, 20)
    assert gate.comparison.too_small == "keep_champion"
    assert gate.baselines.majority == BaselineCheck(metrics=["balanced_accuracy"], margin=0.05)
    assert gate.baselines.logistic == BaselineCheck(metrics=["auroc"], margin=0.0)
    assert gate.compared_metrics == ["accuracy", "f1", "recall"]
    assert gate.tolerance("recall") == 0.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"comparison": {"method": "ttest"}}, "comparison.method"),
        ({"comparison": {"confidence": 1.0}}, "comparison.confidence"),
        ({"comparison": {"resamples": 10}}, "comparison.resamples"),
        ({"comparison": {"metrics": []}}, "comparison.metrics"),
        ({"slices": [{"column": "x", "thresholds": {}}]}, "slices.0.thresholds"),
        ({"slices": [{"column": "x", "thresholds": {"recall": 1.5}}]}, "slices.0.thresholds.recall"),
        ({"slices": [{"column": "x", "thresholds": {"recall": 0.5}}] * 2}, "more than once"),
        ({"baselines": {"logistic": {"metrics": ["specificity"]}}}, "baselines.logistic.metrics"),
        ({"baselines": {"majority": {"metrics": ["f1"], "margin": 0.9}}}, "baselines.majority.margin"),
    ],
)
def test_gate_schema_rejects_bad_values(change: dict, message: str):
    with pytest.raises(ValidationError, match=message.replace(".", r"\.")):
        Gate.model_validate({"thresholds": {"accuracy": 0.5, "recall": 0.5, "f1": 0.5}, **change})


def test_baseline_can_be_switched_off():
    gate = Gate.model_validate(
        {"thresholds": {"accuracy": 0.5, "recall": 0.5, "f1": 0.5}, "baselines": {"logistic": None}}
    )
    assert gate.baselines.logistic is None and gate.baselines.majority is not None


@pytest.mark.parametrize(("column", "why"), [("name_col", "PII"), ("id", "the key"), ("y", "the label")])
def test_slice_column_cannot_be_pii_key_or_label(column: str, why: str):
    spec = {
        "name": "toy",
        "description": "toy",
        "owner": "team",
        "source": {"kind": "sql", "table": "toy"},
        "key": "id",
        "label": {"column": "y", "positive": 1},
        "features": {"numeric": ["x"]},
        "pii": ["name_col"],
        "gate": {
            "thresholds": {"accuracy": 0.5, "recall": 0.5, "f1": 0.5},
            "slices": [{"column": column, "thresholds": {"recall": 0.4}}],
        },
        "alerts": {"emails": ["a@example.com"]},
    }
    with pytest.raises(ValidationError, match=f"column '{column}' is {why} and cannot be a slice"):
        VerticalSpec.model_validate(spec)
    spec["gate"]["slices"][0]["column"] = "x"  # a feature is fine
    assert VerticalSpec.model_validate(spec).gate.slices[0].column == "x"
