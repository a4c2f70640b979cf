from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines.config import Features, Label
from pipelines.errors import TrainingError
from pipelines.model.features import MissingFeatureError, Preprocessor, label_vector

FEATURES = Features(numeric=["amount", "age"], categorical=["city"])


def _train() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "amount": [1.0, 2.0, np.nan, 10.0],
            "age": [30, 30, 30, 30],
            "city": ["paris", "oslo", "paris", None],
        }
    )


def test_output_layout_and_dtype() -> None:
    pre = Preprocessor.fit(_train(), FEATURES)
    out = pre.transform(_train())
    assert pre.output_names == [
        "amount",
        "age",
        "city=oslo",
        "city=paris",
        "city=__other__",
        "city=__missing__",
    ]
    assert out.dtype == np.float32
    assert out.shape == (4, 6)
    assert pre.feature_names == ["amount", "age", "city"]


def test_numeric_median_imputation_and_standardisation() -> None:
    pre = Preprocessor.fit(_train(), FEATURES)
    stats = pre.numeric[0]
    assert stats.median == 2.0
    imputed = np.array([1.0, 2.0, 2.0, 10.0])
    assert stats.mean == pytest.approx(imputed.mean())
    assert stats.std == pytest.approx(imputed.std())
    out = pre.transform(pd.DataFrame({"amount": [np.nan, np.inf], "age": [30, 30], "city": ["oslo", "oslo"]}))
    expected = (2.0 - imputed.mean()) / imputed.std()
    # Missing and non-finite values both take the train median.
    assert out[:, 0] == pytest.approx([expected, expected], rel=1e-6)


def test_constant_column_does_not_divide_by_zero() -> None:
    pre = Preprocessor.fit(_train(), FEATURES)
    assert pre.numeric[1].std == 1.0
    out = pre.transform(pd.DataFrame({"amount": [1.0], "age": [45], "city": ["oslo"]}))
    assert out[0, 1] == pytest.approx(15.0)


def test_all_missing_numeric_column_is_inert() -> None:
    frame = _train().assign(amount=np.nan)
    out = Preprocessor.fit(frame, FEATURES).transform(frame)
    assert np.isfinite(out).all()
    assert (out[:, 0] == 0).all()


def test_unseen_and_missing_categories() -> None:
    pre = Preprocessor.fit(_train(), FEATURES)
    frame = pd.DataFrame({"amount": [1.0, 1.0, 1.0], "age": [30] * 3, "city": ["rome", None, "oslo"]})
    onehot = pre.transform(frame)[:, 2:]
    assert onehot.tolist() == [[0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0]]


def test_category_cap_breaks_ties_by_value() -> None:
    frame = pd.DataFrame({"city": ["c", "c", "b", "b", "a", "a", "d"]})
    pre = Preprocessor.fit(frame, Features(categorical=["city"]), max_categories=2)
    assert pre.categorical[0].categories == ("a", "b")
    assert pre.transform(pd.DataFrame({"city": ["c", "d"]})).tolist() == [[0, 0, 1, 0], [0, 0, 1, 0]]


def test_fit_ignores_row_order() -> None:
    shuffled = _train().sample(frac=1.0, random_state=3)
    assert Preprocessor.fit(shuffled, FEATURES) == Preprocessor.fit(_train(), FEATURES)


def test_integer_categories_survive_a_nan_upcast() -> None:
    pre = Preprocessor.fit(pd.DataFrame({"tier": [1, 2, 2]}), Features(categorical=["tier"]))
    out = pre.transform(pd.DataFrame({"tier": [1.0, np.nan]}))
    assert out.tolist() == [[1, 0, 0, 0], [0, 0, 0, 1]]


def test_mixed_python_values_that_compare_equal_keep_their_own_tokens() -> None:
    # True == 1 == 1.0 in Python, but a category's token is its spelling: "True" is not "1".
    frame = pd.DataFrame({"flag": pd.Series([True, 1, 1.0, "1", True], dtype=object)})
    pre = Preprocessor.fit(frame, Features(categorical=["flag"]))
    assert pre.categorical[0].categories == ("1", "True")
    assert pre.transform(frame)[:, :2].tolist() == [[0, 1], [1, 0], [1, 0], [1, 0], [0, 1]]


def test_categorical_dtype_column() -> None:
    frame = pd.DataFrame({"city": pd.Categorical(["oslo", None, "rome"])})
    pre = Preprocessor.fit(frame, Features(categorical=["city"]))
    assert pre.transform(frame).tolist() == [[1, 0, 0, 0], [0, 0, 0, 1], [0, 1, 0, 0]]


def test_round_trip_through_json_gives_identical_transform() -> None:
    pre = Preprocessor.fit(_train(), FEATURES)
    restored = Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    scoring = pd.DataFrame({"amount": [0.3, np.nan], "age": [12, 99], "city": ["lima", "paris"]})
    assert restored == pre
    assert np.array_equal(restored.transform(scoring), pre.transform(scoring))


def test_from_dict_rejects_other_format_versions() -> None:
    state = Preprocessor.fit(_train(), FEATURES).to_dict() | {"format_version": 99}
    with pytest.raises(TrainingError, match="format_version 99"):
        Preprocessor.from_dict(state)


def test_missing_feature_column_is_named() -> None:
    pre = Preprocessor.fit(_train(), FEATURES)
    with pytest.raises(MissingFeatureError, match=r"\['age', 'city'\]") as info:
        pre.transform(pd.DataFrame({"amount": [1.0]}))
    assert isinstance(info.value, TrainingError)
    assert info.value.missing == ["age", "city"]
    with pytest.raises(MissingFeatureError, match="amount"):
        Preprocessor.fit(pd.DataFrame({"age": [1]}), FEATURES)


def test_non_numeric_text_in_numeric_feature_is_an_error() -> None:
    with pytest.raises(TrainingError, match="'amount' holds non-numeric"):
        Preprocessor.fit(_train().assign(amount=["1", "x", "2", "3"]), FEATURES)


def test_label_vector_string_positive() -> None:
    frame = pd.DataFrame({"risk": ["bad", "good", "Bad"]})
    y = label_vector(frame, Label(column="risk", positive="bad"))
    assert y.dtype == np.float32
    assert y.tolist() == [1.0, 0.0, 1.0]


@pytest.mark.parametrize(
    "values",
    [[True, False, True], [1, 0, 1], ["true", "false", "TRUE"], ["1", "0", "1"], [1.0, 0.0, 1.0]],
)
def test_label_vector_boolean_spellings(values: list[object]) -> None:
    assert label_vector(pd.DataFrame({"y": values}), Label(column="y", positive=True)).tolist() == [1, 0, 1]


def test_label_vector_integer_positive_against_text() -> None:
    assert label_vector(pd.DataFrame({"y": ["2", "1"]}), Label(column="y", positive=2)).tolist() == [1, 0]


def test_label_vector_errors() -> None:
    with pytest.raises(TrainingError, match="no label column 'y'"):
        label_vector(pd.DataFrame({"x": [1]}), Label(column="y", positive=1))
    with pytest.raises(TrainingError, match="1 missing value"):
        label_vector(pd.DataFrame({"y": [1, None]}), Label(column="y", positive=1))
