"""`SqliteWriteSerializer`'s rules: writes enter one at a time on SQLite, reads never wait, other DBs untouched.

The stall it prevents needs a real API server; tests/integration/test_airflow_rest.py sends it
the pair of writes that used to stall it for 60 s.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pipelines.orchestration.sqlite_writes import SqliteWriteSerializer


class _SlowApp:
    """An ASGI app whose requests take a while and that records how many were inside at once."""

    def __init__(self) -> None:
        self.inside: list[str] = []
        self.most_at_once = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.inside.append(scope["method"])
        self.most_at_once = max(self.most_at_once, len(self.inside))
        await asyncio.sleep(0.05)
        self.inside.remove(scope["method"])


async def _requests(middleware: SqliteWriteSerializer, *methods: str) -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    await asyncio.gather(
        *(middleware({"type": "http", "method": m, "path": "/api/v2/x"}, receive, send) for m in methods)
    )


def test_writes_enter_one_at_a_time_on_sqlite_and_reads_do_not_wait():
    app = _SlowApp()
    asyncio.run(_requests(SqliteWriteSerializer(app, enabled=True), "POST", "PATCH", "DELETE", "PUT"))
    assert app.most_at_once == 1

    app = _SlowApp()
    asyncio.run(_requests(SqliteWriteSerializer(app, enabled=True), "POST", "GET", "GET", "HEAD"))
    assert app.most_at_once == 4  # the reads went in beside the write


def test_another_database_gets_its_writes_at_once():
    app = _SlowApp()
    asyncio.run(_requests(SqliteWriteSerializer(app, enabled=False), "POST", "PATCH", "DELETE"))
    assert app.most_at_once == 3


def test_websockets_pass_through():
    app = _SlowApp()
    middleware = SqliteWriteSerializer(app, enabled=True)

    async def both() -> None:
        async def receive() -> dict[str, Any]:
            return {}

        async def send(message: dict[str, Any]) -> None:
            return None

        await asyncio.gather(
            middleware({"type": "http", "method": "POST"}, receive, send),
            middleware({"type": "websocket", "method": "POST"}, receive, send),
        )

    asyncio.run(both())
    assert app.most_at_once == 2
