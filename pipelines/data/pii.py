"""Pseudonymise the spec's PII columns at extract time with a keyed hash.

Every value of a ``pii`` column is replaced by HMAC-SHA256(secret, value),
shortened to 32 hex digits (128 bits), before the raw partition is written: the
raw, validated and quarantined partitions, the GX results and data docs, the
reports and the emails only ever see pseudonyms.  The same secret and value
always give the same pseudonym, in any column and any table, so a join on a
pseudonymised key still matches; without the secret a pseudonym cannot be
recomputed from a guessed value (an unkeyed hash of a name or an id could).

The secret never lives in the repository.  It is looked up in this order:

1. the Airflow-style connection ``spec.pii_key_conn`` (``pii_default``):
   ``AIRFLOW_CONN_PII_DEFAULT``, its password (JSON or URI form);
2. ``PIPELINES_PII_KEY``;
3. only for a vertical that reads the embedded demo warehouse (no
   ``AIRFLOW_CONN_WAREHOUSE_DEFAULT``): a random key generated once beside
   the warehouse file (``.state/pii.key``), so ``make run`` needs no setup.

Anything else with PII columns and no secret is a `SpecError` naming what to set.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import Settings, SqlSource, VerticalSpec
from pipelines.errors import SpecError

log = logging.getLogger(__name__)

#: Environment variable holding the secret when no connection does.
PII_KEY_ENV = "PIPELINES_PII_KEY"
#: The embedded warehouse's generated key, beside the warehouse file.
DEMO_KEY_FILE = "pii.key"
#: A shorter secret could be guessed, and then every pseudonym reversed by trying values.
MIN_SECRET_CHARS = 16
#: Hex digits kept of the HMAC: 128 bits, no collision among any realistic number of values.
PSEUDONYM_HEX = 32


@dataclass(frozen=True)
class PiiKey:
    """The pseudonymisation secret and where it came from (the source is logged, never the value)."""

    secret: bytes
    source: str

    def __repr__(self) -> str:  # never print the secret by accident
        return f"PiiKey(source={self.source!r})"


def resolve_pii_key(spec: VerticalSpec, settings: Settings) -> PiiKey:
    """The secret for ``spec``'s PII columns, or a `SpecError` saying what to set.

    The connection goes through the one resolver (`pipelines.connections`), so a
    connection kept in Airflow's metadata DB or a secrets backend works on a worker.
    """
    from pipelines import connections

    var = connections.env_var(spec.pii_key_conn)
    try:
        conn = connections.get(spec.pii_key_conn)
    except connections.ConnectionConfigError as exc:
        raise SpecError(f"the pseudonymisation connection cannot be read: {exc}", vertical=spec.name) from exc
    if conn is not None:
        return _checked(spec, conn.password or "", f"connection {spec.pii_key_conn!r}")
    from_env = os.environ.get(PII_KEY_ENV, "")
    if from_env:
        return _checked(spec, from_env, PII_KEY_ENV)
    if _reads_embedded_warehouse(spec):
        return demo_key(settings)
    raise SpecError(
        f"the spec lists PII columns {spec.pii} but no pseudonymisation secret is configured, so they cannot "
        f"be pseudonymised at extract and nothing was extracted. Set {PII_KEY_ENV} (a random string of at least "
        f"{MIN_SECRET_CHARS} characters, e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`) or the "
        f"connection {spec.pii_key_conn!r} (e.g. {var}, the secret as its password), the same on every worker; "
        "changing it later changes every pseudonym",
        vertical=spec.name,
    )


def _checked(spec: VerticalSpec, secret: str, source: str) -> PiiKey:
    if len(secret) < MIN_SECRET_CHARS:
        raise SpecError(
            f"the pseudonymisation secret from {source} is {'empty' if not secret else 'too short'}: use at "
            f"least {MIN_SECRET_CHARS} random characters (its password, for a connection)",
            vertical=spec.name,
        )
    return PiiKey(secret=secret.encode(), source=source)


def _reads_embedded_warehouse(spec: VerticalSpec) -> bool:
    # Mirrors `sources.resolve_connection_url`: only then does the source fall back to the demo file.
    return (
        isinstance(spec.source, SqlSource)
        and spec.source.conn_id == "warehouse_default"
        and not os.environ.get("AIRFLOW_CONN_WAREHOUSE_DEFAULT")
    )


def demo_key(settings: Settings) -> PiiKey:
    """The embedded warehouse's key: created once (random, mode 0600) beside the warehouse file.

    Created by a hard link from a complete temp file, so two processes
    starting at once agree on one key and nobody reads a half-written one.
    """
    warehouse = settings.warehouse_file or settings.home / "warehouse.db"
    path = warehouse.parent / DEMO_KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{DEMO_KEY_FILE}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
        try:
            os.link(tmp, path)
            log.warning(
                "generated a pseudonymisation key for the embedded demo warehouse at %s; a real source needs "
                "%s or the pii_default connection (docs/decisions.md, PII)",
                path,
                PII_KEY_ENV,
            )
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            tmp.unlink(missing_ok=True)
    return PiiKey(secret=_read_key_file(path), source=f"demo key {path}")


def _read_key_file(path: Path) -> bytes:
    secret = path.read_text().strip()
    if len(secret) < MIN_SECRET_CHARS:
        raise SpecError(f"the demo pseudonymisation key {path} is damaged (too short); delete it to make a new one")
    return secret.encode()


def pseudonym(value: Any, key: PiiKey) -> str:
    """The pseudonym of one value (see `pseudonymise` for how values are written before hashing)."""
    return hmac.new(key.secret, _canonical(value).encode(), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX]


def _canonical(value: Any) -> str:
    # The same id read as 7, 7.0 (an int column with nulls) or "7" must give the same pseudonym.
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _canonical(value.item())
    return str(value)


def pseudonymise(frame: pd.DataFrame, columns: list[str], key: PiiKey) -> pd.DataFrame:
    """``frame`` with each of ``columns`` (those present) replaced by pseudonyms; nulls stay null.

    One HMAC per distinct value, so a key repeated over many rows costs one hash.
    The other columns are shared with ``frame``, not copied: a backfill calls this
    once per day, and a deep copy and a pandas ``map`` per column were most of its
    cost on days of a few dozen rows.
    """
    present = [c for c in columns if c in frame.columns]
    if not present:
        return frame
    out = frame.copy(deep=False)
    for column in present:
        values = out[column]
        given_at = values.notna().to_numpy()
        given = values.to_numpy(dtype=object)[given_at]
        mapping = {v: pseudonym(v, key) for v in dict.fromkeys(given)}
        written = np.full(len(values), None, dtype=object)
        written[given_at] = [mapping[v] for v in given]
        out[column] = pd.Series(written, index=values.index, dtype=object)
    return out
