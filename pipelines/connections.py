"""One resolver for Airflow-style connections (sources, alerts, bucket, state store).

The core never imports Airflow.  Outside Airflow (CLI, ``dvc repro``, serving)
connections come from ``AIRFLOW_CONN_<ID>`` environment variables, in the URI
or the JSON form, parsed with Airflow's own rules (``Connection.from_uri``:
``postgresql`` → ``postgres``, query → extra, ``__extra__`` holds JSON).
Inside Airflow the orchestration layer installs a lookup backed by
``airflow.sdk.Connection.get`` (`use_lookup`), so a connection created in the
UI, the metadata DB or a secrets backend is seen by every consumer here.

Meaning is the providers' meaning, so one connection behaves the same in a
data-quality alert as in Airflow's own task-failure email: `smtp_config`
follows ``apache-airflow-providers-smtp`` (SSL and STARTTLS on unless the extra
``disable_ssl`` / ``disable_tls`` is truthy in Python's sense -- in the URI form
any non-empty value, even ``false``, disables, exactly as the provider reads it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from pipelines.errors import PipelineError

DEFAULT_SMTP_SENDER = "nightly-retrain@localhost"
#: Airflow's key for a JSON extra inside a URI's query string.
_EXTRA_KEY = "__extra__"


class ConnectionConfigError(PipelineError):
    """A connection exists but cannot be parsed (bad JSON, bad URI)."""


@dataclass(frozen=True)
class Connection:
    """The fields of an Airflow connection that the core uses (extra already decoded)."""

    conn_id: str
    conn_type: str = ""
    host: str | None = None
    port: int | None = None
    login: str | None = None
    password: str | None = None
    schema: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


#: Returns the connection or None when it is not defined anywhere.
Lookup = Callable[[str], Connection | None]


def env_var(conn_id: str) -> str:
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def from_env(conn_id: str) -> Connection | None:
    """``AIRFLOW_CONN_<ID>`` in either form; None when unset or empty."""
    raw = os.environ.get(env_var(conn_id), "").strip()
    if not raw:
        return None
    return parse(conn_id, raw)


def parse(conn_id: str, raw: str) -> Connection:
    """One connection string, JSON (starts with ``{``) or URI, as Airflow reads it."""
    raw = raw.strip()
    if raw.startswith("{"):
        data = _json_object(raw, env_var(conn_id))
        port = data.get("port")
        return Connection(
            conn_id=conn_id,
            conn_type=_normalise_type(str(data.get("conn_type") or "")),
            host=data.get("host") or None,
            port=int(port) if port not in (None, "") else None,
            login=data.get("login") or None,
            password=data.get("password") or None,
            schema=data.get("schema") or None,
            extra=_decode_extra(conn_id, data.get("extra")),
        )
    scheme, sep, rest = raw.partition("://")
    if not sep or not scheme:
        raise ConnectionConfigError(f"{env_var(conn_id)} is neither a URI (type://...) nor JSON")
    parts = urlsplit("//" + rest)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    extra: Any = query.get(_EXTRA_KEY) if _EXTRA_KEY in query else query
    try:
        port = parts.port
    except ValueError as exc:
        raise ConnectionConfigError(f"{env_var(conn_id)} has a bad port: {exc}") from exc
    return Connection(
        conn_id=conn_id,
        conn_type=_normalise_type(scheme),
        host=unquote(parts.hostname) if parts.hostname else None,
        port=port,
        login=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        schema=unquote(parts.path[1:]) if parts.path[1:] else None,
        extra=_decode_extra(conn_id, extra),
    )


def _normalise_type(conn_type: str) -> str:
    # Airflow's own normalisation (Connection._normalize_conn_type).
    if conn_type == "postgresql":
        return "postgres"
    return conn_type.replace("-", "_")


def _decode_extra(conn_id: str, extra: Any) -> dict[str, Any]:
    if extra in (None, ""):
        return {}
    if isinstance(extra, str):
        return _json_object(extra, f"connection {conn_id!r}: extra")
    if not isinstance(extra, dict):
        raise ConnectionConfigError(f"connection {conn_id!r}: extra must be a JSON object")
    return dict(extra)


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConnectionConfigError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConnectionConfigError(f"{what} must be a JSON object")
    return data


#: The process's lookup: one slot, replaced by `use_lookup` (the orchestration layer's, in a task).
_installed: list[Lookup] = [from_env]


def use_lookup(lookup: Lookup | None) -> None:
    """Install the process's connection lookup (the orchestration layer's); None restores env vars."""
    _installed[0] = lookup or from_env


def get(conn_id: str) -> Connection | None:
    """The connection ``conn_id`` from the installed lookup, or None when it is not defined."""
    return _installed[0](conn_id)


# -- the providers' meaning ------------------------------------------------------------


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    login: str | None = None
    password: str | None = None
    use_ssl: bool = True
    starttls: bool = True
    sender: str = DEFAULT_SMTP_SENDER
    timeout: float = 30.0


def smtp_config(conn: Connection) -> SmtpConfig:
    """What the smtp provider's ``SmtpHook`` would do with ``conn``.

    ``use_ssl = not bool(extra.get("disable_ssl", False))`` and the same for
    STARTTLS: the provider's rule, kept verbatim so both mail paths agree.
    """
    extra = conn.extra
    return SmtpConfig(
        host=conn.host or "localhost",
        port=conn.port or (465 if not bool(extra.get("disable_ssl", False)) else 25),
        login=conn.login,
        password=conn.password,
        use_ssl=not bool(extra.get("disable_ssl", False)),
        starttls=not bool(extra.get("disable_tls", False)),
        sender=str(extra.get("from_email") or DEFAULT_SMTP_SENDER),
        timeout=float(extra.get("timeout", 30)),
    )


def s3_options(conn: Connection) -> dict[str, Any]:
    """s3fs options from an AWS connection, as the amazon provider reads it (only what it sets)."""
    extra = conn.extra
    endpoint = extra.get("endpoint_url") or ((extra.get("service_config") or {}).get("s3") or {}).get("endpoint_url")
    options: dict[str, Any] = {
        "key": conn.login or extra.get("aws_access_key_id"),
        "secret": conn.password or extra.get("aws_secret_access_key"),
        "token": extra.get("aws_session_token"),
        "endpoint_url": endpoint,
    }
    if extra.get("region_name"):
        options["client_kwargs"] = {"region_name": extra["region_name"]}
    return {k: v for k, v in options.items() if v}
