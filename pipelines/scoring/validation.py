"""Request bodies → the spec's raw feature columns, or a `RequestError` naming the field.

Rules, the same for the v1 JSON records and the v2 tensors:

* every feature the model was trained on must be present, nothing else may be;
* numeric features take JSON numbers (not booleans, not strings); NaN and
  ±inf are refused; ``null`` means "missing" and is imputed with the train
  median, exactly as training treated missing values;
* categorical features take strings (or integers, compared as their decimal
  text, as training does); ``null`` is the ``__missing__`` category and a
  category never seen in training scores as ``__other__``, as in training;
* a request holds at most ``max_rows`` rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.scoring.runtime import LoadedModel


@dataclass
class RequestError(Exception):
    """A client error: HTTP ``status``, the offending ``field`` and the ``reason``."""

    status: int
    field: str | None
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason

    def body(self) -> dict[str, Any]:
        # "error" is what the Open Inference Protocol and its clients read.
        return {"error": str(self), "field": self.field, "reason": self.reason}


def _numeric(value: Any, field: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(422, field, f"expected a number or null, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf  # an integer beyond float range: refused below like any infinity
    if not math.isfinite(number):
        raise RequestError(422, field, f"{value} is not a finite number; send null for a missing value")
    return number


def _category(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise RequestError(422, field, f"expected a string or null, got {type(value).__name__}")


def records_frame(body: Any, model: LoadedModel, *, max_rows: int) -> pd.DataFrame:
    """A v1 body ``{"records": [{feature: value, ...}, ...]}`` as a raw-feature DataFrame."""
    import pandas as pd

    if not isinstance(body, dict) or not isinstance(body.get("records"), list):
        raise RequestError(422, "records", 'the body must be a JSON object {"records": [{feature: value, ...}]}')
    extra_keys = sorted(set(body) - {"records"})
    if extra_keys:
        raise RequestError(422, extra_keys[0], "unknown top-level field; only 'records' is accepted")
    records = body["records"]
    _check_rows(len(records), max_rows, "records")
    expected = set(model.feature_names)
    columns: dict[str, list[Any]] = {name: [] for name in model.feature_names}
    for i, record in enumerate(records):
        where = f"records[{i}]"
        if not isinstance(record, dict):
            raise RequestError(422, where, "each record must be a JSON object keyed by feature name")
        missing = [name for name in model.feature_names if name not in record]
        if missing:
            raise RequestError(422, f"{where}.{missing[0]}", "required feature is missing (send null if unknown)")
        extra = sorted(set(record) - expected)
        if extra:
            raise RequestError(422, f"{where}.{extra[0]}", "not a feature of this model")
        for name in model.numeric:
            columns[name].append(_numeric(record[name], f"{where}.{name}"))
        for name in model.categorical:
            columns[name].append(_category(record[name], f"{where}.{name}"))
    return _frame(columns, model, pd)


def _check_rows(rows: int, max_rows: int, field: str) -> None:
    if rows == 0:
        raise RequestError(422, field, "at least one row is required")
    if rows > max_rows:
        raise RequestError(413, field, f"{rows} rows exceed the limit of {max_rows} per request; split the batch")


def _frame(columns: dict[str, list[Any]], model: LoadedModel, pd: Any) -> pd.DataFrame:
    data: dict[str, Any] = {name: np.asarray(columns[name], dtype=np.float64) for name in model.numeric}
    data.update({name: np.asarray(columns[name], dtype=object) for name in model.categorical})
    return pd.DataFrame(data, columns=model.feature_names)


# -- Open Inference Protocol (v2) tensors ------------------------------------------

NUMERIC_TYPES = {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
_NUMPY_TYPES = {
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
}


def tensors_frame(
    inputs: Any, model: LoadedModel, *, max_rows: int, binary: dict[str, bytes] | None = None
) -> pd.DataFrame:
    """v2 ``inputs`` (one tensor per feature, shape ``[n]`` or ``[n, 1]``) as a raw-feature DataFrame.

    ``binary`` holds the raw bytes of inputs sent with the binary tensor
    extension (as the Triton client does by default).
    """
    import pandas as pd

    if not isinstance(inputs, list) or not inputs:
        raise RequestError(400, "inputs", "expected a non-empty list of input tensors")
    by_name: dict[str, dict[str, Any]] = {}
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise RequestError(400, f"inputs[{i}]", "each input needs a 'name', 'shape', 'datatype' and 'data'")
        if tensor["name"] in by_name:
            raise RequestError(400, tensor["name"], "input given twice")
        by_name[tensor["name"]] = tensor
    missing = [name for name in model.feature_names if name not in by_name]
    if missing:
        raise RequestError(400, missing[0], "required input tensor is missing (one tensor per feature)")
    extra = sorted(set(by_name) - set(model.feature_names))
    if extra:
        raise RequestError(400, extra[0], "not a feature of this model")
    rows: int | None = None
    columns: dict[str, list[Any]] = {}
    for name in model.feature_names:
        values = _tensor_values(by_name[name], name, categorical=name in model.categorical, binary=binary)
        if rows is None:
            rows = len(values)
            _check_rows(rows, max_rows, name)
        elif len(values) != rows:
            raise RequestError(400, name, f"has {len(values)} rows but the other inputs have {rows}")
        convert = _category if name in model.categorical else _numeric
        try:
            columns[name] = [convert(v, name) for v in values]
        except RequestError as exc:
            raise RequestError(400, exc.field, exc.reason) from None
    return _frame(columns, model, pd)


def _tensor_values(tensor: dict[str, Any], name: str, *, categorical: bool, binary: dict[str, bytes] | None) -> list:
    datatype, shape = tensor.get("datatype"), tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise RequestError(400, name, "shape must be a list of integers")
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise RequestError(400, name, f"shape {shape} is not [rows] or [rows, 1]")
    rows = shape[0]
    if categorical and datatype != "BYTES":
        raise RequestError(400, name, f"categorical feature needs datatype BYTES, got {datatype!r}")
    if not categorical and datatype not in NUMERIC_TYPES:
        raise RequestError(
            400, name, f"numeric feature needs a numeric datatype (FP32, FP64, INT64...), got {datatype!r}"
        )
    if binary is not None and name in binary:
        values = _decode_binary(binary[name], str(datatype), name)
    else:
        data = tensor.get("data")
        if not isinstance(data, list):
            raise RequestError(400, name, "'data' must be a list (or send the tensor as binary data)")
        values = _flatten(data)
    if len(values) != rows:
        raise RequestError(400, name, f"shape says {rows} rows but {len(values)} values were sent")
    if not categorical:
        # JSON "data" may hold anything: a string in a numeric tensor is a type error, not a zero.
        return [v.item() if isinstance(v, np.generic) else v for v in values]
    return [v.decode("utf-8", errors="strict") if isinstance(v, bytes) else v for v in values]


def _flatten(data: list) -> list:
    """Row-major values of a nested list, iteratively (a hostile nesting depth must not recurse)."""
    out: list = []
    stack = [iter(data)]
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, list):
            stack.append(iter(item))
        else:
            out.append(item)
    return out


_END = object()


def _decode_binary(raw: bytes, datatype: str, name: str) -> list:
    if datatype == "BYTES":
        # Each element: a 4-byte little-endian length, then that many bytes.
        values: list = []
        offset = 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise RequestError(400, name, "truncated BYTES tensor")
            size = int.from_bytes(raw[offset : offset + 4], "little")
            offset += 4
            if offset + size > len(raw):
                raise RequestError(400, name, "truncated BYTES tensor")
            try:
                values.append(raw[offset : offset + size].decode("utf-8"))
            except UnicodeDecodeError:
                raise RequestError(400, name, "BYTES element is not UTF-8 text") from None
            offset += size
        return values
    dtype = np.dtype(_NUMPY_TYPES[datatype]).newbyteorder("<")
    if len(raw) % dtype.itemsize:
        raise RequestError(400, name, f"binary data of {len(raw)} bytes is not a whole number of {datatype}")
    return np.frombuffer(raw, dtype=dtype).astype(np.float64).tolist()
