"""One connection resolver: Airflow's URI and JSON forms mean the same thing; a lookup can be handed in."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from pipelines import connections
from pipelines.config import Settings
from pipelines.data.sources import resolve_connection_url
from pipelines.errors import DeployError, SourceError
from pipelines.release.bucket import storage_options


@pytest.fixture(autouse=True)
def _env_lookup() -> Iterator[None]:
    connections.use_lookup(None)
    yield
    connections.use_lookup(None)


def test_uri_and_json_forms_parse_to_the_same_connection():
    uri = connections.parse("wh", "postgresql://u%40x:p%2Fw@db.local:5433/sales?sslmode=require")
    js = connections.parse(
        "wh",
        json.dumps(
            {
                "conn_type": "postgres",
                "host": "db.local",
                "port": 5433,
                "login": "u@x",
                "password": "p/w",
                "schema": "sales",
                "extra": {"sslmode": "require"},
            }
        ),
    )
    assert uri == js
    assert uri.conn_type == "postgres"  # Airflow's own normalisation


def test_uri_extra_given_as_json_under_the_airflow_key():
    conn = connections.parse("s3", 'aws://K:S@/?__extra__={"endpoint_url": "http://127.0.0.1:9"}')
    assert conn.extra == {"endpoint_url": "http://127.0.0.1:9"}
    assert connections.s3_options(conn) == {"key": "K", "secret": "S", "endpoint_url": "http://127.0.0.1:9"}


def test_bad_json_names_the_variable():
    with pytest.raises(connections.ConnectionConfigError, match="AIRFLOW_CONN_WH is not valid JSON"):
        connections.parse("wh", "{not json")


def test_smtp_follows_the_provider_rule_even_for_the_string_false():
    # apache-airflow-providers-smtp: use_ssl = not bool(extra.get("disable_ssl", False)); a URI gives strings.
    conn = connections.parse("smtp_default", "smtp://relay:25?disable_ssl=false")
    assert connections.smtp_config(conn).use_ssl is False
    assert connections.smtp_config(connections.parse("smtp_default", "smtp://relay:25")).use_ssl is True


def test_sql_source_url_is_the_same_from_either_form(monkeypatch, tmp_path):
    settings = Settings.from_env()
    monkeypatch.setenv("AIRFLOW_CONN_WH", "postgresql://u:p%40ss@db:5432/sales")
    from_uri = resolve_connection_url("wh", settings)
    monkeypatch.setenv(
        "AIRFLOW_CONN_WH",
        json.dumps(
            {"conn_type": "postgres", "host": "db", "port": 5432, "login": "u", "password": "p@ss", "schema": "sales"}
        ),
    )
    assert resolve_connection_url("wh", settings) == from_uri == "postgresql+psycopg://u:p%40ss@db:5432/sales"
    monkeypatch.setenv("AIRFLOW_CONN_WH", f"sqlite:///{tmp_path}/w.db")
    assert resolve_connection_url("wh", settings) == f"sqlite:///{tmp_path}/w.db"


def test_a_handed_in_lookup_wins_over_the_environment(monkeypatch):
    """What the orchestration layer does inside Airflow: its chain, not only env vars."""
    monkeypatch.delenv("AIRFLOW_CONN_ONLY_IN_AIRFLOW", raising=False)
    seen: list[str] = []

    def lookup(conn_id: str) -> connections.Connection | None:
        seen.append(conn_id)
        if conn_id == "only_in_airflow":
            return connections.Connection(conn_id, "aws", login="K", password="S", extra={"endpoint_url": "http://e"})
        return None

    monkeypatch.setenv("PIPELINES_BUCKET_CONN_ID", "only_in_airflow")
    with pytest.raises(DeployError, match="not configured"):
        storage_options("s3://b/p")
    connections.use_lookup(lookup)
    assert storage_options("s3://b/p") == ("s3://b/p", {"key": "K", "secret": "S", "endpoint_url": "http://e"})
    with pytest.raises(SourceError, match="'missing' is not configured"):
        resolve_connection_url("missing", Settings.from_env())
    assert seen == ["only_in_airflow", "missing"]
