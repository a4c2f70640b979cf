"""Airflow's own connection lookup, handed to the core's resolver (`pipelines.connections`).

Inside a task ``airflow.sdk.Connection.get`` asks the worker's secrets chain:
environment variables, any configured secrets backend, then the metadata DB
(through the Execution API).  Installing it lets a connection created in the
UI or a secrets backend reach sources, alerts, the bucket and the state store;
the core itself never imports Airflow.
"""

from __future__ import annotations

from pipelines import connections


def airflow_lookup(conn_id: str) -> connections.Connection | None:
    """``conn_id`` from Airflow's chain, as the core's `Connection`; None when Airflow knows none."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = Connection.get(conn_id)
    except AirflowNotFoundException:
        return None
    if conn is None:
        return None
    return connections.Connection(
        conn_id=conn_id,
        conn_type=str(conn.conn_type or ""),
        host=conn.host or None,
        port=int(conn.port) if conn.port else None,
        login=conn.login or None,
        password=conn.password or None,
        schema=conn.schema or None,
        extra=dict(conn.extra_dejson),
    )


def install() -> None:
    """Make every connection the core resolves in this process come from Airflow's chain."""
    connections.use_lookup(airflow_lookup)
