"""A backfill's days joined in one lookup get, day by day, exactly what a day joined alone got.

`join_batches` looks every day's partners up at once; a backfilled day's partition
must still be byte for byte the one its nightly run writes.  Checked against the
one-frame join as it was (`integration_reference`) on seeded random days: keys of
mixed types and nulls, unparseable event times, days with every partner found or
none, tables with several validity periods per key, ``valid_to``, and joined
columns of every dtype a SQL driver returns.
"""

from __future__ import annotations

import io
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from pipelines.config import Join
from pipelines.data.integration import index_table, index_tables, join_batches, join_point_in_time
from pipelines.data.preparation import prepare_frame, prepare_frames

from .integration_reference import join_point_in_time as reference_join
from .test_preparation import JOIN, make_spec

DAY0 = date(2026, 1, 1)


def _table(rng: np.random.Generator, *, keys: int, timeless: bool, valid_to: bool) -> pd.DataFrame:
    periods = 1 if timeless else 3
    shop = np.repeat(np.arange(keys), periods)
    n = len(shop)
    table = pd.DataFrame(
        {
            "shop": shop,
            "size": rng.integers(1, 500, n),  # int64
            "score": rng.normal(size=n),  # float64
            "open": rng.random(n) < 0.5,  # bool
            "region": pd.Series(rng.choice(["north", "south", "east"], n), dtype="str"),
            "note": pd.Series([f"n{i}" if i % 4 else None for i in range(n)], dtype=object),
            "since": pd.to_datetime("2025-01-01") + pd.to_timedelta(rng.integers(0, 400, n), unit="D"),
        }
    )
    if not timeless:
        starts = [DAY0 + timedelta(days=int(d)) for d in rng.integers(-30, 40, n)]
        table["valid_from"] = [s.isoformat() if i % 2 else s for i, s in enumerate(starts)]  # text and dates
        if valid_to:
            table["valid_to"] = [
                s + timedelta(days=int(rng.integers(1, 30))) if i % 3 else None for i, s in enumerate(starts)
            ]
    return table


def _day(rng: np.random.Generator, day: int, *, keys: int, kind: str) -> pd.DataFrame:
    n = int(rng.integers(1, 12))
    shop: pd.Series
    if kind == "int":
        shop = pd.Series(rng.integers(0, keys + 2, n))  # some keys no table row has
    elif kind == "float":
        shop = pd.Series(np.where(rng.random(n) < 0.2, np.nan, rng.integers(0, keys, n)).astype(float))
    elif kind == "text":
        shop = pd.Series([str(k) if k % 5 else None for k in rng.integers(0, keys, n)], dtype=object)
    else:  # mixed objects: ints, integral floats, text
        shop = pd.Series([[int(k), float(k), str(k)][k % 3] for k in rng.integers(0, keys, n)], dtype=object)
    when = (DAY0 + timedelta(days=day)).isoformat()
    times = pd.Series([when if rng.random() > 0.1 else rng.choice([None, "not a date"]) for _ in range(n)], dtype="str")
    return pd.DataFrame({"id": np.arange(n) + 100 * day, "event_date": times, "shop": shop, "x": rng.normal(size=n)})


def _parquet(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("timeless", "valid_to"), [(False, False), (False, True), (True, False)], ids=["valid_from", "valid_to", "timeless"]
)
@pytest.mark.parametrize("seed", range(4))
def test_each_day_of_a_batch_joins_as_it_did_alone(seed: int, timeless: bool, valid_to: bool) -> None:
    rng = np.random.default_rng(seed)
    keys = int(rng.integers(2, 8))
    # With valid_to, only columns that already held a null could take an expired row's (pandas 3 refuses
    # None in int64 and bool): the old join stopped there, see the test below.
    columns = ["score", "region", "note", "since"] if valid_to else ["size", "score", "open", "region", "note", "since"]
    join = Join(
        name="shops",
        table="shops",
        keys=["shop"],
        columns=columns,
        **({} if timeless else {"valid_from": "valid_from"}),
        **({"valid_to": "valid_to"} if valid_to else {}),
    )
    table = _table(rng, keys=keys, timeless=timeless, valid_to=valid_to)
    days = [_day(rng, d, keys=keys, kind=["int", "float", "text", "mixed"][d % 4]) for d in range(-5, 45, 5)]
    indexed = index_table(table, join)

    batched = join_batches(days, indexed, join, event_time="event_date")

    for day, joined in zip(days, batched, strict=True):
        assert joined.equals(join_point_in_time(day, indexed, join, event_time="event_date"))
        expected = reference_join(day, indexed, join, event_time="event_date")
        pd.testing.assert_frame_equal(joined, expected, check_exact=True)
        # The partition's bytes (the mixed-type key column aside: Parquet cannot store it at all).
        assert _parquet(joined.drop(columns=["shop"])) == _parquet(expected.drop(columns=["shop"]))


def test_an_expired_partner_leaves_int_and_bool_columns_null_where_the_old_join_stopped() -> None:
    join = Join(
        name="shops",
        table="shops",
        keys=["shop"],
        columns=["size", "open"],
        valid_from="valid_from",
        valid_to="valid_to",
    )
    table = pd.DataFrame(
        {
            "shop": [1, 2],
            "valid_from": [date(2026, 1, 1), date(2026, 1, 1)],
            "valid_to": [date(2026, 1, 3), None],
            "size": [10, 20],
            "open": [True, False],
        }
    )
    day = pd.DataFrame({"id": [1, 2], "event_date": ["2026-01-05", "2026-01-05"], "shop": [1, 2]})
    with pytest.raises(TypeError):
        reference_join(day, table, join, event_time="event_date")

    [joined] = join_batches([day], table, join, event_time="event_date")

    assert joined["size"].dtype == "float64" and joined["open"].dtype == object
    assert pd.isna(joined["size"][0]) and pd.isna(joined["open"][0]), "shop 1's row ended on 2026-01-03"
    assert (joined["size"][1], joined["open"][1]) == (20.0, False)
    assert joined["joined_shops"].tolist() == [False, True]


def test_a_backfill_prepares_each_day_as_its_nightly_run_does() -> None:
    """`prepare_frames` (a backfill's group of days) against `prepare_frame` day by day: frames and counts.

    The days differ in what decides dtypes (an input column all null on one day, a range
    rule that fires on one day only) and in what the day-level rules see (a median, a
    duplicate): each must come out as it would alone.
    """
    spec = make_spec(
        features={"numeric": ["x", "age"], "categorical": ["region", "city"]},
        joins=[JOIN],
        cleaning={
            "deduplicate": {},
            "columns": {
                "city": {"trim": True, "case": "lower"},
                "age": {"range": {"min": 0, "max": 120, "action": "null"}, "impute": {"strategy": "median"}},
                "region": {"case": "upper"},
            },
        },
        label={"column": "y", "positive": "high", "negative": "low", "expression": "x > 0.5 and region == 'NORTH'"},
    )
    shops = pd.DataFrame(
        {
            "shop": [1, 1, 2],
            "valid_from": ["2026-01-01", "2026-01-03", "2026-01-01"],
            "region": ["north", "south", "north"],
        }
    )
    days = [
        pd.DataFrame(
            {
                "id": [1, 2, 2],
                "event_date": ["2026-01-01"] * 3,
                "shop": [1, 2, 2],
                "city": [" A", "b", "b"],
                "age": [30, 200, 200],
                "x": [0.9, 0.7, 0.7],
            }
        ),
        pd.DataFrame(
            {
                "id": [3, 4],
                "event_date": ["2026-01-02"] * 2,
                "shop": [1, 9],
                "city": [None, None],
                "age": [40, 41],
                "x": [None, None],
            }
        ),
        pd.DataFrame({"id": [5], "event_date": ["2026-01-04"], "shop": [1], "city": ["C "], "age": [None], "x": [1.0]}),
        pd.DataFrame(columns=["id", "event_date", "shop", "city", "age", "x"]),  # a day without rows
        pd.DataFrame(
            {
                "id": [6, 7],
                "event_date": ["2026-01-05"] * 2,
                "shop": ["2", 1.0],
                "city": ["d", "e"],
                "age": [1.5, 2.5],
                "x": [0.1, 0.6],
            }
        ),
    ]
    indexed = index_tables(spec, {"shops": shops})

    batched = prepare_frames(days, spec, indexed)

    for day, (frame, counts) in zip(days, batched, strict=True):
        alone, alone_counts = prepare_frame(day, spec, indexed)
        pd.testing.assert_frame_equal(frame, alone, check_exact=True)
        assert counts == alone_counts
    first, second, last = batched[0][0], batched[1][0], batched[4][0]
    assert first["y"].tolist() == ["high", "high"] and first["age"].tolist() == [30.0, 30.0]  # 200: out of range
    assert second["y"].isna().all() and second["age"].dtype == "int64"  # nothing out of range that day
    assert last["region"].tolist() == ["NORTH", "SOUTH"] and last["y"].tolist() == ["low", "low"]


def test_days_whose_inputs_differ_in_dtype_are_labelled_apart() -> None:
    """Evaluated together, an int64 input beside a float64 one would be read as float: 2**53 + 1 becomes 2**53."""
    from pipelines.data.labels import evaluate_label, evaluate_labels

    spec = make_spec(label={"column": "y", "positive": 1, "negative": 0, "expression": "x > 9007199254740992"})
    days = [pd.DataFrame({"x": [2**53 + 1, 1]}), pd.DataFrame({"x": [0.5, 2.0**60]})]

    together = evaluate_labels(days, spec.label)

    assert [s.tolist() for s in together] == [evaluate_label(day, spec.label).tolist() for day in days]
    assert together[0].tolist() == [1, 0] and together[1].tolist() == [0, 1]
