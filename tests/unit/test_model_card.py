"""The model card (pipelines.release.model_card): what it says, its figures, and that they are reproducible."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.config import PROJECT_ROOT, load_spec_file
from pipelines.errors import SpecError
from pipelines.gate.evaluation import compute_metrics, holdout_scores_frame
from pipelines.release.model_card import build_model_card, card_files

SVG = "{http://www.w3.org/2000/svg}"
SPEC = load_spec_file(PROJECT_ROOT / "verticals" / "finance.yaml")


def _run(seed: int = 7, rows: int = 400) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """A holdout of ``rows`` rows: a decent challenger, a weaker champion, the two baselines."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, rows)
    challenger = np.clip(0.5 * y + 0.5 * rng.random(rows), 0, 1)
    champion = np.clip(0.3 * y + 0.7 * rng.random(rows), 0, 1)
    logistic = np.clip(0.4 * y + 0.6 * rng.random(rows), 0, 1)
    majority = np.zeros(rows)
    home = np.array(["owner", "rent", "parents", "other"])[rng.integers(0, 4, rows)]
    home[:5] = "priv"  # a value too small to judge
    scores = holdout_scores_frame(
        y,
        challenger,
        champion=champion,
        baselines={"majority": majority, "logistic": logistic},
        slices={"home_ownership": home},
    )
    evaluation = {
        "model_version": "mv-0123456789ab",
        "holdout_rows": rows,
        "holdout_start": "2026-08-01",
        "holdout_end": "2026-10-29",
        "challenger": compute_metrics(y, challenger, 0.5),
        "champion": compute_metrics(y, champion, 0.5),
        "champion_version": "mv-ba9876543210",
        "baselines": {
            "majority": {**compute_metrics(y, majority, 0.5), "majority_class": 0},
            "logistic": {**compute_metrics(y, logistic, 0.45), "c": 1.0},
        },
    }
    trained = {
        "model_version": "mv-0123456789ab",
        "data_version": "dv-00aa11bb22cc",
        "train_rows": 1200,
        "code_version": "abc123",
        "config_hash": "0f0f0f0f0f0f0f0f",
        "seed": 42,
    }
    return trained, evaluation, scores


DECISION = {"reasons": ["recall 0.7512 meets floor 0.6000", "<script>alert(1)</script> is text"]}


def test_card_says_what_the_model_is_for_its_limits_and_how_it_compares_with_the_baselines():
    trained, evaluation, scores = _run()
    card = build_model_card(SPEC, "2026-10-30", trained, evaluation, DECISION, scores=scores)
    md = card.markdown
    for heading in ("## Intended use", "## Limitations", "## Holdout metrics", "## By home_ownership"):
        assert heading in md, heading
    assert "| metric | this model | threshold | previous champion | majority baseline | logistic baseline |" in md
    auroc = next(line for line in md.splitlines() if line.startswith("| auroc |"))
    assert f"{evaluation['baselines']['logistic']['auroc']:.4f}" in auroc
    assert "Trained for logical date 2026-10-30" in md
    assert "Not validated for other populations" in md  # the default intended use
    assert "holdout rows (2026-08-01 .. 2026-10-29)" in md
    # Every figure the card shows is shipped, and every shipped one is shown.
    shown = set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md))
    assert shown == {"confusion_matrix.svg", "holdout_curves.svg", "slices.svg"}
    assert set(card.images) == {"holdout_curves.svg", "slices.svg"}
    # The slice too small to judge is listed without metrics.
    assert re.search(r"^\| priv \| 5 \| \d+ \| - \| - \| - \| - \|$", md, re.MULTILINE)
    slices = {s["value"]: s for s in card.data["slices"]["values"]}
    assert slices["priv"]["metrics"] is None and slices["owner"]["metrics"]["recall"] > 0


def test_spec_card_fields_replace_the_defaults_and_choose_the_slice(tmp_path: Path):
    import yaml

    raw = yaml.safe_load((PROJECT_ROOT / "verticals" / "finance.yaml").read_text())
    raw["card"] = {
        "intended_use": "Ranks applications for manual review; never an automatic refusal.",
        "limitations": ["Applicants under 21 are rare in the data."],
        "slice_by": "marital_status",
    }
    (tmp_path / "finance.yaml").write_text(yaml.safe_dump(raw))
    spec = load_spec_file(tmp_path / "finance.yaml")
    assert spec.card_slice_column == "marital_status" and SPEC.card_slice_column == "home_ownership"
    trained, evaluation, scores = _run()
    md = build_model_card(spec, "2026-10-30", trained, evaluation, DECISION, scores=scores).markdown
    assert "Ranks applications for manual review; never an automatic refusal." in md
    assert "Not validated for other populations" not in md
    assert md.index("- Applicants under 21 are rare in the data.") < md.index("- Trained on the 365 days")
    assert "## By" not in md  # the scores hold no marital_status column: no slice section, no made-up one

    raw["card"]["slice_by"] = "income"  # numeric
    (tmp_path / "finance.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match=r"card.slice_by 'income' is not a categorical feature"):
        load_spec_file(tmp_path / "finance.yaml")


def test_figures_are_well_formed_svg_with_a_curve_per_model():
    trained, evaluation, scores = _run()
    card = build_model_card(SPEC, "2026-10-30", trained, evaluation, DECISION, scores=scores)
    curves = ET.fromstring(card.images["holdout_curves.svg"])
    ids = {g.get("id") for g in curves.iter(f"{SVG}g")}
    for model in ("challenger", "champion", "logistic", "majority"):
        assert f"calibration-{model}" in ids, model
    for model in ("challenger", "champion", "logistic"):
        assert {f"roc-{model}", f"pr-{model}"} <= ids, model
    texts = " ".join(t.text or "" for t in curves.iter(f"{SVG}text"))
    assert "ROC" in texts and "Precision-recall" in texts and "Calibration" in texts  # text kept as text
    slices = ET.fromstring(card.images["slices.svg"])
    assert {"slice-recall", "slice-precision", "slice-f1"} <= {g.get("id") for g in slices.iter(f"{SVG}g")}


def test_same_model_gives_byte_identical_files_without_dates():
    trained, evaluation, scores = _run()

    def files() -> dict[str, bytes]:
        card = build_model_card(SPEC, "2026-10-30", trained, evaluation, DECISION, scores=scores)
        return card_files(
            vertical="finance",
            model_version=trained["model_version"],
            ds="2026-10-30",
            model_dir=Path("/nonexistent"),
            metrics=evaluation,
            lineage={},
            model_card=card.markdown,
            model_card_json=card.data,
            card_images=card.images,
        )

    first, second = files(), files()
    assert first == second
    for name, data in first.items():
        if name.endswith(".svg"):
            assert b"<dc:date>" not in data and b"2026-1" not in data.split(b"<svg", 1)[0], name
            assert b"Matplotlib v" not in data, name  # no library version in the bytes either
    assert {"confusion_matrix.svg", "holdout_curves.svg", "slices.svg", "model_card.md"} <= set(first)


def test_without_holdout_scores_the_card_keeps_its_tables_and_draws_no_curves():
    trained, evaluation, _ = _run()
    card = build_model_card(SPEC, "2026-10-30", trained, evaluation, DECISION, scores=None)
    assert card.images == {} and "holdout_curves.svg" not in card.markdown and "## By" not in card.markdown
    assert "## Holdout metrics" in card.markdown and "## Limitations" in card.markdown


def test_validation_reliability_is_shown_with_the_other_figures_not_after_the_decision(tmp_path: Path):
    import json

    trained, evaluation, scores = _run()
    bins = [{"lower": 0.0, "upper": 1.0, "count": 10, "mean_predicted": 0.4, "observed_rate": 0.5}]
    (tmp_path / "model.json").write_text(json.dumps({"reliability": {"calibration": "platt", "bins": bins}}))
    card = build_model_card(
        SPEC, "2026-10-30", {**trained, "model_dir": str(tmp_path)}, evaluation, DECISION, scores=scores
    )
    md = card.markdown
    assert md.index("(holdout_curves.svg)") < md.index("(reliability.svg)") < md.index("## Promotion decision")
    files = card_files(
        vertical="finance",
        model_version=trained["model_version"],
        ds="2026-10-30",
        model_dir=tmp_path,
        metrics=evaluation,
        lineage={},
        model_card=md,
        model_card_json=card.data,
        card_images=card.images,
    )
    assert files["model_card.md"].decode().count("(reliability.svg)") == 1 and "reliability.svg" in files
