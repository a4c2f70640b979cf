"""The scoring service as clients use it: a real server process on a loopback port.

The Triton HTTP client (what KServe/Triton users already have) against /v2,
plain JSON against /v1, both checked against `load_production(...).predict_proba`
on the same rows; auth, metrics, logs without feature values, and a catalogue
of bad requests that must each be a 4xx naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from pipelines.release.serving import load_production
from pipelines.scoring.app import INLINE_ROWS

from .scoring_support import (
    CATEGORICAL,
    NUMERIC,
    VERTICAL,
    deploy,
    running_server,
    server_log,
    synthetic_frame,
    train_tiny_model,
)

TOKEN = "test-token-not-a-secret-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def auth() -> dict[str, str]:
    """A fresh header dict: the Triton client adds its own headers to the dict it is given."""
    return dict(AUTH)


#: fp32 ONNX against torch: float rounding only.
FP32_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("scoring")
    bucket_url = (home / "bucket").as_uri()
    deploy(bucket_url, train_tiny_model(home / "model-v1", seed=1), "v1")
    with running_server(home, bucket_url, PIPELINES_SCORING_TOKEN=TOKEN, PIPELINES_SCORING_MAX_ROWS="5000") as base:
        reference = load_production(VERTICAL, bucket_url=bucket_url, cache_dir=home / "reference-cache")
        yield {"base": base, "home": home, "bucket_url": bucket_url, "reference": reference}


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    # More rows than the server scores on its event loop (INLINE_ROWS): full batches take the thread pool.
    frame = synthetic_frame(96, seed=7).drop(columns="status")
    assert len(frame) > INLINE_ROWS
    # Values training never saw and missing ones are part of real traffic.
    frame.loc[0, "home_ownership"] = "houseboat"
    frame.loc[1, "job_type"] = None
    frame.loc[2, "income"] = np.nan
    return frame


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(frame.to_json(orient="records"))


def post(served: dict[str, Any], path: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(served["base"] + path, headers={**AUTH, **kwargs.pop("headers", {})}, timeout=30, **kwargs)


# -- the Triton / KServe client ---------------------------------------------------------


def triton_inputs(frame: pd.DataFrame, *, binary: bool) -> list[Any]:
    import tritonclient.http as triton

    inputs = []
    for name in NUMERIC:
        tensor = triton.InferInput(name, [len(frame)], "FP64")
        tensor.set_data_from_numpy(frame[name].to_numpy(dtype=np.float64), binary_data=binary)
        inputs.append(tensor)
    for name in CATEGORICAL:
        tensor = triton.InferInput(name, [len(frame)], "BYTES")
        # The Triton client has no null for BYTES: send rows without missing categories.
        tensor.set_data_from_numpy(frame[name].fillna("rent").to_numpy(dtype=object), binary_data=binary)
        inputs.append(tensor)
    return inputs


@pytest.mark.parametrize("binary", [True, False], ids=["binary-tensors", "json-tensors"])
def test_triton_http_client_scores_like_load_production(served: dict[str, Any], rows: pd.DataFrame, binary: bool):
    import tritonclient.http as triton

    frame = rows.copy()
    frame = frame.dropna(subset=["income"])  # NaN is refused: the client would send it as a float
    frame["job_type"] = frame["job_type"].fillna("rent")
    client = triton.InferenceServerClient(served["base"].removeprefix("http://"))
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(VERTICAL, headers=auth())
    assert client.is_model_ready(VERTICAL, model_version="v1", headers=auth())
    metadata = client.get_model_metadata(VERTICAL, headers=auth())
    assert [i["name"] for i in metadata["inputs"]] == NUMERIC + CATEGORICAL
    assert metadata["versions"] == ["v1"]

    result = client.infer(VERTICAL, triton_inputs(frame, binary=binary), model_version="v1", headers=auth())
    expected = served["reference"].predict_proba(frame)
    got = result.as_numpy("probability")
    assert got.shape == (len(frame),)
    np.testing.assert_allclose(got, expected, atol=FP32_TOLERANCE)
    threshold = served["reference"].decision_threshold
    clear = np.abs(expected - threshold) > FP32_TOLERANCE
    assert (result.as_numpy("label")[clear] == (expected[clear] >= threshold)).all()
    assert result.get_response()["model_version"] == "v1"


def test_triton_client_errors_on_unknown_version_and_model(served: dict[str, Any], rows: pd.DataFrame):
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(served["base"].removeprefix("http://"))
    assert not client.is_model_ready(VERTICAL, model_version="v999", headers=auth())
    with pytest.raises(InferenceServerException, match="serves version v1, not 'v999'"):
        client.infer(VERTICAL, triton_inputs(rows.head(2), binary=False), model_version="v999", headers=auth())
    with pytest.raises(InferenceServerException, match="no production model is served for 'retail'"):
        client.infer("retail", triton_inputs(rows.head(2), binary=False), headers=auth())


# -- /v1 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["one row", "a batch"])
def test_v1_predict_matches_load_production_on_the_same_rows(served: dict[str, Any], rows: pd.DataFrame, size: str):
    rows = rows.head(1) if size == "one row" else rows
    response = post(served, f"/v1/{VERTICAL}/predict", json={"records": records(rows)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == "v1"
    assert body["format"] == "onnx"
    prob = np.array([p["probability"] for p in body["predictions"]])
    expected = served["reference"].predict_proba(rows)
    np.testing.assert_allclose(prob, expected, atol=FP32_TOLERANCE)
    threshold = served["reference"].decision_threshold
    assert body["decision_threshold"] == threshold
    assert [p["label"] for p in body["predictions"]] == [int(p >= threshold) for p in prob]


def test_unknown_category_scores_as_training_did(served: dict[str, Any], rows: pd.DataFrame):
    # Training maps a category it never saw to __other__: so must the server, not refuse or guess.
    unseen = rows.head(1).assign(home_ownership="houseboat")
    other = rows.head(1).assign(home_ownership="castle")
    a = post(served, f"/v1/{VERTICAL}/predict", json={"records": records(unseen)}).json()
    b = post(served, f"/v1/{VERTICAL}/predict", json={"records": records(other)}).json()
    assert a["predictions"] == b["predictions"]
    assert a["predictions"][0]["probability"] == pytest.approx(
        float(served["reference"].predict_proba(unseen)[0]), abs=FP32_TOLERANCE
    )


def test_model_card_metadata_and_docs(served: dict[str, Any]):
    meta = httpx.get(f"{served['base']}/v1/{VERTICAL}/metadata", headers=AUTH).json()
    assert meta["model_version"] == "v1"
    assert meta["features"]["numeric"] == NUMERIC
    assert "rent" in meta["features"]["categorical"]["home_ownership"]
    assert meta["metrics"]["holdout_rows"] == 24
    card = httpx.get(f"{served['base']}/v1/{VERTICAL}/card", headers=AUTH)
    assert card.status_code == 200 and card.json()["model_version"] == "v1"
    models = httpx.get(f"{served['base']}/v1/models", headers=AUTH).json()
    assert models["models"] == {VERTICAL: {"version": "v1", "format": "onnx"}}
    server = httpx.get(f"{served['base']}/v2", headers=AUTH).json()
    assert server["name"] == "pipelines-scoring"
    docs = httpx.get(f"{served['base']}/openapi.json").json()
    assert "/v1/{vertical}/predict" in docs["paths"]
    assert "/v2/models/{vertical}/versions/{model_version}/infer" in docs["paths"]
    assert httpx.get(f"{served['base']}/docs").status_code == 200


# -- auth, metrics, logs -------------------------------------------------------------


def test_bearer_token_is_required_except_for_health(served: dict[str, Any], rows: pd.DataFrame):
    base = served["base"]
    body = {"records": records(rows.head(1))}
    assert httpx.post(f"{base}/v1/{VERTICAL}/predict", json=body).status_code == 401
    wrong = httpx.post(f"{base}/v1/{VERTICAL}/predict", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{base}/v2/models/{VERTICAL}").status_code == 401
    assert httpx.get(f"{base}/metrics").status_code == 401
    assert httpx.get(f"{base}/v2/health/live").status_code == 200
    assert httpx.get(f"{base}/v2/health/ready").status_code == 200


def test_metrics_count_requests_and_name_the_version(served: dict[str, Any], rows: pd.DataFrame):
    post(served, f"/v1/{VERTICAL}/predict", json={"records": records(rows.head(3))})
    text = httpx.get(f"{served['base']}/metrics", headers=AUTH).text
    assert 'scoring_model_info{format="onnx",version="v1",vertical="finance"} 1.0' in text
    assert 'scoring_requests_total{route="/v1/{vertical}/predict",status="200"}' in text
    assert "scoring_request_seconds_bucket" in text
    assert 'scoring_rows_total{version="v1",vertical="finance"}' in text


def test_request_logs_hold_no_feature_values(served: dict[str, Any], rows: pd.DataFrame):
    marker = "zz-private-value-4711"
    frame = rows.head(1).assign(home_ownership=marker, income=987654.25)
    assert post(served, f"/v1/{VERTICAL}/predict", json={"records": records(frame)}).status_code == 200
    bad = records(frame)
    bad[0]["age"] = marker  # an error answer names the field, never echoes its value into the log
    assert post(served, f"/v1/{VERTICAL}/predict", json={"records": bad}).status_code == 422
    log = server_log(served["home"])
    assert "POST /v1/{vertical}/predict vertical=finance status=200 rows=1 version=v1" in log
    assert marker not in log
    assert "987654" not in log


# -- bad requests: each a 4xx with the field and the reason ---------------------------------


def _record(rows: pd.DataFrame, **changes: Any) -> dict[str, Any]:
    record = records(rows.head(1))[0]
    for key, value in changes.items():
        if value is _DROP:
            record.pop(key)
        else:
            record[key] = value
    return record


_DROP = object()


@pytest.mark.parametrize(
    ("case", "status", "field", "reason"),
    [
        ("wrong_type_numeric", 422, "records[0].age", "expected a number"),
        ("wrong_type_category", 422, "records[0].job_type", "expected a string"),
        ("bool_as_number", 422, "records[0].debt", "expected a number"),
        ("missing_field", 422, "records[0].income", "required feature is missing"),
        ("extra_field", 422, "records[0].shoe_size", "not a feature of this model"),
        ("nan", 422, "records[0].income", "not a finite number"),
        ("infinity", 422, "records[0].debt", "not a finite number"),
        ("not_records", 422, "records", "must be a JSON object"),
        ("empty_batch", 422, "records", "at least one row"),
        ("too_many_rows", 413, "records", "exceed the limit of 5000"),
        ("ten_megabytes", 413, "body", "exceed the limit"),
        ("malformed_json", 400, "body", "malformed JSON"),
        ("deeply_nested_json", 400, "body", "nested too deeply"),
        ("huge_integer", 422, "records[0].age", "not a finite number"),
        ("unknown_vertical", 404, "vertical", "no production model is served for 'retail'"),
    ],
)
def test_bad_request_catalogue(
    served: dict[str, Any], rows: pd.DataFrame, *, case: str, status: int, field: str, reason: str
):
    path = f"/v1/{VERTICAL}/predict"
    content: bytes | None = None
    body: Any = None
    if case == "wrong_type_numeric":
        body = {"records": [_record(rows, age="forty")]}
    elif case == "wrong_type_category":
        body = {"records": [_record(rows, job_type=3.5)]}
    elif case == "bool_as_number":
        body = {"records": [_record(rows, debt=True)]}
    elif case == "missing_field":
        body = {"records": [_record(rows, income=_DROP)]}
    elif case == "extra_field":
        body = {"records": [_record(rows, shoe_size=42)]}
    elif case in ("nan", "infinity"):
        # JSON has no NaN; many clients (Python's json, JavaScript's JSON5) still send these tokens.
        token = "NaN" if case == "nan" else "Infinity"
        name = "income" if case == "nan" else "debt"
        record = _record(rows, **{name: "__TOKEN__"})
        content = json.dumps({"records": [record]}).replace('"__TOKEN__"', token).encode()
    elif case == "not_records":
        body = [_record(rows)]
    elif case == "empty_batch":
        body = {"records": []}
    elif case == "too_many_rows":
        body = {"records": [_record(rows)] * 5001}
    elif case == "ten_megabytes":
        content = b'{"records": [' + b" " * (10 * 1024 * 1024) + b"]}"
    elif case == "malformed_json":
        content = b'{"records": [{"income": 1,'
    elif case == "deeply_nested_json":
        content = b"[" * 100_000 + b"]" * 100_000
    elif case == "huge_integer":
        content = json.dumps({"records": [_record(rows, age="__BIG__")]}).replace('"__BIG__"', "9" * 400).encode()
    elif case == "unknown_vertical":
        path, body = "/v1/retail/predict", {"records": [_record(rows)]}
    if content is not None:
        response = post(served, path, content=content, headers={"Content-Type": "application/json"})
    else:
        response = post(served, path, json=body)
    assert response.status_code == status, response.text
    answer = response.json()
    assert answer["field"] == field
    assert reason in answer["reason"]


@pytest.mark.parametrize(
    ("mutate", "field", "reason"),
    [
        (lambda b: b["inputs"].pop(0), "income", "required input tensor is missing"),
        (lambda b: b["inputs"].append({**b["inputs"][0], "name": "shoe_size"}), "shoe_size", "not a feature"),
        (lambda b: b["inputs"][3].update(datatype="FP32"), "home_ownership", "needs datatype BYTES"),
        (lambda b: b["inputs"][1].update(data=["x", "y"]), "age", "expected a number"),
        (lambda b: b["inputs"][2].update(shape=[3]), "debt", "shape says 3 rows but 2 values"),
        (lambda b: b["inputs"][0].update(shape=[2, 2]), "income", "is not [rows] or [rows, 1]"),
        (lambda b: b.update(outputs=[{"name": "logits"}]), "outputs", "unknown output 'logits'"),
    ],
    ids=["missing-input", "extra-input", "wrong-datatype", "wrong-type", "shape-mismatch", "bad-shape", "bad-output"],
)
def test_v2_bad_requests_are_400_with_the_field(served: dict[str, Any], rows: pd.DataFrame, mutate, field, reason):
    frame = rows.iloc[3:5]
    body: dict[str, Any] = {
        "inputs": [{"name": n, "datatype": "FP64", "shape": [2], "data": frame[n].tolist()} for n in NUMERIC]
        + [
            {"name": n, "datatype": "BYTES", "shape": [2], "data": frame[n].fillna("rent").tolist()}
            for n in CATEGORICAL
        ]
    }
    assert post(served, f"/v2/models/{VERTICAL}/infer", json=body).status_code == 200
    mutate(body)
    response = post(served, f"/v2/models/{VERTICAL}/infer", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field
    assert reason in response.json()["error"]


def test_unknown_version_is_404(served: dict[str, Any]):
    response = httpx.get(f"{served['base']}/v2/models/{VERTICAL}/versions/v0", headers=AUTH)
    assert response.status_code == 404
    assert response.json()["field"] == "model_version"


def test_v2_accepts_column_tensors_of_shape_rows_by_one(served: dict[str, Any], rows: pd.DataFrame):
    frame = rows.iloc[3:6]
    body = {
        "inputs": [
            {"name": n, "datatype": "FP32", "shape": [3, 1], "data": [[v] for v in frame[n].tolist()]} for n in NUMERIC
        ]
        + [
            {"name": n, "datatype": "BYTES", "shape": [3, 1], "data": [[v] for v in frame[n].fillna("rent")]}
            for n in CATEGORICAL
        ],
        "outputs": [{"name": "probability"}],
        "id": "req-42",
    }
    answer = post(served, f"/v2/models/{VERTICAL}/versions/v1/infer", json=body).json()
    assert answer["id"] == "req-42" and [o["name"] for o in answer["outputs"]] == ["probability"]
    expected = served["reference"].predict_proba(frame.fillna({"job_type": "rent"}))
    # FP32 inputs round the numbers before preprocessing: close, not bit-equal.
    np.testing.assert_allclose(answer["outputs"][0]["data"], expected, atol=1e-4)
