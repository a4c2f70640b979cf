"""The gate: both branches of every rule, the first-model policy, forced promotion."""

from __future__ import annotations

import pytest

from pipelines.config import Gate
from pipelines.promotion import decide_promotion

GATE = Gate(
    thresholds={"accuracy": 0.70, "recall": 0.50, "f1": 0.55},
    champion_tolerance={"accuracy": 0.01, "f1": 0.02},
    min_holdout_rows=100,
)
GOOD = {"accuracy": 0.80, "recall": 0.60, "f1": 0.65, "precision": 0.7, "auroc": 0.85}


def rule(decision, name):
    return next(r for r in decision.rules if r.rule == name)


def test_first_model_is_promoted_on_thresholds_alone():
    decision = decide_promotion(GATE, GOOD, champion=None, champion_version=None, holdout_rows=500)
    assert decision.approved
    assert decision.policy == "first model: promote_if_thresholds"
    assert not any(r.rule.startswith("champion:") for r in decision.rules)
    assert decision.reasons == ["every rule passed"]


def test_threshold_miss_rejects_and_says_by_how_much():
    weak = {**GOOD, "recall": 0.42}
    decision = decide_promotion(GATE, weak, champion=None, champion_version=None, holdout_rows=500)
    assert not decision.approved
    recall = rule(decision, "threshold:recall")
    assert not recall.passed
    assert recall.margin == pytest.approx(-0.08)
    assert decision.reasons == ["recall 0.4200 is below floor 0.5000"]


def test_first_model_policy_require_manual_rejects_even_a_good_model():
    gate = GATE.model_copy(update={"first_model": "require_manual"})
    decision = decide_promotion(gate, GOOD, champion=None, champion_version=None, holdout_rows=500)
    assert not decision.approved
    assert "manual first promotion" in decision.reasons[0]


def test_worse_than_champion_beyond_tolerance_is_rejected():
    champion = {**GOOD, "f1": 0.70}
    decision = decide_promotion(GATE, GOOD, champion=champion, champion_version="mv-old", holdout_rows=500)
    assert not decision.approved
    f1 = rule(decision, "champion:f1")
    assert not f1.passed and f1.required == pytest.approx(0.68)
    assert decision.champion_version == "mv-old"


def test_slightly_worse_within_tolerance_is_approved():
    champion = {**GOOD, "accuracy": 0.805, "f1": 0.66}
    decision = decide_promotion(GATE, GOOD, champion=champion, champion_version="mv-old", holdout_rows=500)
    assert decision.approved
    assert rule(decision, "champion:accuracy").passed
    # recall has no tolerance: equal is fine, lower is not
    assert rule(decision, "champion:recall").passed


def test_metric_without_tolerance_must_not_drop_at_all():
    champion = {**GOOD, "recall": 0.61}
    decision = decide_promotion(GATE, GOOD, champion=champion, champion_version="mv-old", holdout_rows=500)
    assert not decision.approved
    assert not rule(decision, "champion:recall").passed


def test_too_small_holdout_rejects():
    decision = decide_promotion(GATE, GOOD, champion=None, champion_version=None, holdout_rows=20)
    assert not decision.approved
    assert "holdout has 20 rows (minimum 100)" in decision.reasons


def test_missing_metric_fails_its_rule():
    decision = decide_promotion(GATE, {**GOOD, "f1": None}, champion=None, champion_version=None, holdout_rows=500)
    assert not decision.approved
    assert "f1 could not be computed" in decision.reasons


def test_forced_promotion_overrides_and_records_reason():
    weak = {**GOOD, "accuracy": 0.5}
    decision = decide_promotion(
        GATE, weak, champion=None, champion_version=None, holdout_rows=500, force_reason="  hotfix for audit  "
    )
    assert decision.approved and decision.forced
    assert decision.forced_reason == "hotfix for audit"
    assert decision.reasons[0] == "forced promotion: hotfix for audit"
    assert any("accuracy" in r for r in decision.reasons[1:])


def test_forced_promotion_needs_a_reason():
    with pytest.raises(ValueError, match="written reason"):
        decide_promotion(GATE, GOOD, champion=None, champion_version=None, holdout_rows=500, force_reason="  ")


def test_decision_record_is_serialisable_with_margins():
    import json

    decision = decide_promotion(GATE, GOOD, champion=GOOD, champion_version="mv-old", holdout_rows=500)
    record = decision.to_dict()
    json.dumps(record)
    assert all("margin" in r for r in record["rules"])
    assert record["approved"] is True


def test_champion_rescored_against_itself_passes_despite_float_noise():
    metrics = {"accuracy": 0.7501234567, "recall": 0.6, "f1": 0.6, "auroc": 0.1 + 0.2}
    decision = decide_promotion(GATE, metrics, champion=dict(metrics), champion_version="mv-same", holdout_rows=500)
    assert decision.approved, decision.reasons
