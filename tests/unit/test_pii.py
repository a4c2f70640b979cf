"""PII pseudonymised at extract: keyed, stable, join-preserving, and never without a secret."""

from __future__ import annotations

import json
import stat
from datetime import date, timedelta

import pandas as pd
import pytest
import sqlalchemy as sa

from pipelines.config import VerticalSpec
from pipelines.data.pii import (
    DEMO_KEY_FILE,
    PII_KEY_ENV,
    PiiKey,
    pseudonym,
    pseudonymise,
    resolve_pii_key,
)
from pipelines.data.sources import extract_days
from pipelines.errors import SpecError
from pipelines.layout import Layout

KEY = PiiKey(secret=b"0123456789abcdef0123", source="test")
OTHER_KEY = PiiKey(secret=b"fedcba9876543210fedc", source="test")
NAMES = ["Alice Smith", "Bob Jones", "Carol King"]


@pytest.fixture(autouse=True)
def _no_secret(monkeypatch):
    for var in (PII_KEY_ENV, "AIRFLOW_CONN_PII_DEFAULT", "AIRFLOW_CONN_WAREHOUSE_DEFAULT", "AIRFLOW_CONN_VAULT"):
        monkeypatch.delenv(var, raising=False)


def make_spec(source: dict | None = None, **extra: object) -> VerticalSpec:
    return VerticalSpec.model_validate(
        {
            "name": "clinic",
            "description": "test vertical",
            "owner": "tests",
            "source": source or {"kind": "sql", "conn_id": "src", "table": "visits"},
            "key": "id",
            "label": {"column": "y", "positive": 1},
            "features": {"numeric": ["x"]},
            "pii": ["patient", "name"],
            "window": {"train_days": 10, "holdout_days": 3},
            "gate": {"thresholds": {"accuracy": 0.5, "recall": 0.5, "f1": 0.5}},
            "alerts": {"emails": ["owner@example.com"]},
            **extra,
        }
    )


def visits(start: date, days: int) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "id": d * 10 + i,
                "x": float(i),
                "y": i % 2,
                "patient": 1000 + i,
                "name": NAMES[i],
                "event_date": start + timedelta(days=d),
            }
            for d in range(days)
            for i in range(3)
        ]
    )


def test_same_secret_and_value_give_the_same_pseudonym_in_any_column_and_type():
    assert pseudonym("Alice", KEY) == pseudonym("Alice", KEY)
    assert len(pseudonym("Alice", KEY)) == 32 and pseudonym("Alice", KEY) != "Alice"
    # An id read as int, as float (an int column with nulls) or as text is one id.
    assert pseudonym(7, KEY) == pseudonym(7.0, KEY) == pseudonym("7", KEY)
    assert pseudonym("Alice", KEY) != pseudonym("Alice", OTHER_KEY)  # keyed: no secret, no lookup table
    assert pseudonym("Alice", KEY) != pseudonym("Alicf", KEY)


def test_pseudonymise_keeps_nulls_and_other_columns():
    frame = pd.DataFrame({"patient": [1, None, 1], "name": ["A", "B", None], "x": [1.0, 2.0, 3.0]})
    out = pseudonymise(frame, ["patient", "name", "not_there"], KEY)
    assert out["patient"].iloc[0] == out["patient"].iloc[2] == pseudonym(1, KEY)
    assert out["patient"].isna().tolist() == [False, True, False]
    assert out["name"].isna().tolist() == [False, False, True]
    assert out["x"].tolist() == [1.0, 2.0, 3.0]
    assert frame["name"].tolist()[:2] == ["A", "B"]  # the input is not modified


def test_a_join_on_a_pseudonymised_key_matches_the_join_on_the_clear_key():
    events = pd.DataFrame({"patient": [1, 2, 2, 3, 9], "x": [1, 2, 3, 4, 5]})
    # The dimension table comes from another source, with the id as text.
    patients = pd.DataFrame({"patient": ["1", "2", "3"], "ward": ["a", "b", "c"]})
    clear = events.merge(patients.astype({"patient": "int64"}), on="patient", how="left")
    hidden = pseudonymise(events, ["patient"], KEY).merge(
        pseudonymise(patients, ["patient"], KEY), on="patient", how="left"
    )
    assert hidden["ward"].tolist() == clear["ward"].tolist()
    assert hidden["ward"].isna().sum() == 1  # the unmatched row stays unmatched


def test_secret_comes_from_the_spec_connection_then_the_environment(settings, monkeypatch):
    spec = make_spec(pii_key_conn="vault")
    monkeypatch.setenv(PII_KEY_ENV, "e" * 20)
    assert resolve_pii_key(spec, settings).secret == b"e" * 20
    monkeypatch.setenv("AIRFLOW_CONN_VAULT", json.dumps({"conn_type": "generic", "password": "c" * 24}))
    key = resolve_pii_key(spec, settings)
    assert key.secret == b"c" * 24 and "vault" in key.source
    assert "c" * 24 not in repr(key)  # the secret is never printed
    monkeypatch.setenv("AIRFLOW_CONN_VAULT", "generic://:" + "u" * 18 + "@")
    assert resolve_pii_key(spec, settings).secret == b"u" * 18


def test_a_short_or_empty_secret_is_refused(settings, monkeypatch):
    monkeypatch.setenv(PII_KEY_ENV, "short")
    with pytest.raises(SpecError, match="too short"):
        resolve_pii_key(make_spec(), settings)
    monkeypatch.setenv("AIRFLOW_CONN_PII_DEFAULT", json.dumps({"conn_type": "generic"}))
    with pytest.raises(SpecError, match="empty"):
        resolve_pii_key(make_spec(), settings)


def test_the_embedded_demo_warehouse_gets_one_generated_key_beside_it(settings):
    spec = make_spec({"kind": "sql", "table": "visits"})  # warehouse_default, no connection configured
    first = resolve_pii_key(spec, settings)
    path = settings.home / DEMO_KEY_FILE
    assert path.is_file() and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert resolve_pii_key(spec, settings).secret == first.secret  # created once, then reused
    assert "demo key" in first.source


def write_table(url: str, frame: pd.DataFrame) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        frame.to_sql("visits", conn, index=False, if_exists="replace", dtype={"event_date": sa.Date()})
    engine.dispose()


def test_extract_writes_only_pseudonyms_and_the_same_person_keeps_one_pseudonym(settings, monkeypatch):
    url = f"sqlite:///{settings.home / 'src.db'}"
    write_table(url, visits(date(2026, 1, 1), 3))
    monkeypatch.setenv("AIRFLOW_CONN_SRC", url)
    monkeypatch.setenv(PII_KEY_ENV, KEY.secret.decode())
    spec = make_spec()

    extract_days(spec, ["2026-01-01", "2026-01-02"], settings)

    layout = Layout(settings, "clinic")
    day1, day2 = (pd.read_parquet(layout.raw(d)) for d in ("2026-01-01", "2026-01-02"))
    raw_bytes = layout.raw("2026-01-01").read_bytes()
    assert not any(name.encode() in raw_bytes for name in NAMES)
    assert day1["name"].tolist() == [pseudonym(n, KEY) for n in NAMES]
    assert day1["patient"].tolist() == day2["patient"].tolist() == [pseudonym(1000 + i, KEY) for i in range(3)]
    assert day1["x"].tolist() == [0.0, 1.0, 2.0]  # non-PII columns as pulled


def test_unset_secret_is_a_clear_error_and_nothing_is_written_or_lost(settings, monkeypatch):
    """Bad input: PII columns, a real source, no secret -> a SpecError naming what to set; no partition."""
    url = f"sqlite:///{settings.home / 'src.db'}"
    write_table(url, visits(date(2026, 1, 1), 3))
    monkeypatch.setenv("AIRFLOW_CONN_SRC", url)
    spec = make_spec()
    layout = Layout(settings, "clinic")
    validated = layout.validated("2026-01-01")
    validated.parent.mkdir(parents=True)
    validated.write_bytes(b"an earlier validated day")

    with pytest.raises(SpecError) as caught:
        extract_days(spec, ["2026-01-01", "2026-01-02"], settings)

    message = str(caught.value)
    assert PII_KEY_ENV in message and "AIRFLOW_CONN_PII_DEFAULT" in message and "'patient', 'name'" in message
    assert not layout.raw("2026-01-01").exists() and not layout.raw("2026-01-02").exists()
    assert validated.read_bytes() == b"an earlier validated day"
    # The demo fallback is only for the embedded warehouse: a configured warehouse needs the secret too.
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE_DEFAULT", url)
    with pytest.raises(SpecError, match=PII_KEY_ENV):
        resolve_pii_key(make_spec({"kind": "sql", "table": "visits"}), settings)
    assert not (settings.home / DEMO_KEY_FILE).exists()
