"""One state-changing request at a time in an API server whose metadata DB is SQLite.

Airflow's API server runs each write endpoint in a worker thread, but its audit-log
dependency (``action_logging``, on every POST, PATCH, PUT and DELETE) is a coroutine
that inserts and commits its ``log`` row with a synchronous session, on the event
loop itself.  SQLite has one write lock for the whole file.  When one request's
endpoint holds that lock (a ``POST .../dagRuns`` has inserted its run) and a second
request's audit row is written meanwhile, the second one blocks the event loop
waiting for the lock, and the first can never commit, because committing is handed
back through that event loop.  Both wait out SQLite's busy timeout (60 s,
`pipelines.orchestration.airflow_env.SQLITE_CONNECT_ARGS`); then the second answers
500.  The trigger dialog of a paused DAG sends exactly such a pair (unpause and
trigger): measured on a standalone, the trigger took 60.2 s and the unpause failed,
so the DAG stayed paused and its run queued for ever.

This ASGI middleware, installed by the ``vertical_runs`` plugin, lets one such
request into the application at a time, waiting asynchronously (the event loop stays
free).  SQLite takes one writer at a time anyway, so nothing is lost.  Reads pass
untouched.  On any other database (PostgreSQL in production) it steps aside.
"""

from __future__ import annotations

import asyncio
from functools import cache

from pipelines.orchestration.trigger_guard import ASGIApp, Receive, Scope, Send

#: Methods that change nothing: never queued.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@cache
def metadata_db_is_sqlite() -> bool:
    """Whether this Airflow process's metadata DB is SQLite (Airflow's own configuration)."""
    from airflow.configuration import conf

    return conf.get("database", "sql_alchemy_conn").strip().lower().startswith("sqlite")


class SqliteWriteSerializer:
    """ASGI middleware: state-changing HTTP requests enter ``app`` one at a time when the DB is SQLite."""

    def __init__(self, app: ASGIApp, *, enabled: bool | None = None) -> None:
        self.app = app
        self.enabled = metadata_db_is_sqlite() if enabled is None else enabled
        self._lock: asyncio.Lock | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.enabled or scope["type"] != "http" or scope.get("method", "GET") in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        if self._lock is None:  # made inside the server's event loop, on its first write
            self._lock = asyncio.Lock()
        async with self._lock:  # held until the response is sent: the endpoint's commit is done by then
            await self.app(scope, receive, send)
