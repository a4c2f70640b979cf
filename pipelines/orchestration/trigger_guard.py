"""Refuse a vertical's trigger that cannot run, at the API server, before a run exists.

Airflow validates a trigger's ``conf`` one param at a time (each against its
own JSON schema) and leaves a logical date in the future to the scheduler,
which then never starts the run (``Logical date is in future``) while it
counts against ``max_active_runs=1``.  This ASGI middleware, installed by the
``vertical_runs`` plugin, checks a ``POST /api/v2/dags/<vertical>/dagRuns``
(the UI's Trigger button and the REST API) before Airflow creates the run, and
answers HTTP 400 with the reason when

* the logical date's UTC day is not over (today or later), also when the
  caller passes an explicit data interval (which bypasses the timetable's own
  refusal, `pipelines.orchestration.timetable`);
* ``force_promotion`` is true without a non-empty ``force_reason``.

The same rules run again when the run starts (`pipelines.orchestration.tasks`),
for runs made any other way (``dag.test()``, the CLI, a clear).  Requests
without credentials pass through untouched: Airflow's auth answers them first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from functools import cache
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TRIGGER_PATH = re.compile(r"/api/v2/dags/(?P<dag_id>[^/]+)/dagRuns/?$")


@cache
def _verticals() -> frozenset[str]:
    from pipelines.config import Settings, vertical_names

    return frozenset(vertical_names(Settings.from_env()))


def trigger_problem(dag_id: str, body: bytes) -> str | None:
    """Why this trigger of vertical ``dag_id`` must be refused, or None (also for a body Airflow will reject)."""
    from pipelines.orchestration.tasks import InvalidRunParams, RunOptions
    from pipelines.orchestration.timetable import DayNotOverError, check_day_is_over

    try:
        request = json.loads(body or b"{}")
    except ValueError:
        return None  # Airflow answers malformed JSON itself (422)
    if not isinstance(request, dict):
        return None
    logical = request.get("logical_date")
    if isinstance(logical, str):
        try:
            when = datetime.fromisoformat(logical.replace("Z", "+00:00"))
        except ValueError:
            return None
        try:
            check_day_is_over((when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC).date())
        except DayNotOverError as exc:
            return f"{dag_id}: {exc}"
    conf = request.get("conf")
    if isinstance(conf, dict):
        try:
            RunOptions.from_params(conf)
        except InvalidRunParams as exc:
            return f"{dag_id}: {exc}"
    return None


def _has_credentials(scope: Scope) -> bool:
    return any(name in (b"authorization", b"cookie") for name, _ in scope.get("headers", ()))


class TriggerGuard:
    """ASGI middleware: a 400 for a vertical trigger that could never run correctly (see module doc)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = None
        if scope["type"] == "http" and scope.get("method") == "POST":
            match = TRIGGER_PATH.search(scope.get("path", ""))
        if match is None or match["dag_id"] not in _verticals() or not _has_credentials(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        problem = trigger_problem(match["dag_id"], body)
        if problem is not None:
            payload = json.dumps({"detail": problem}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
            await send({"type": "http.response.start", "status": 400, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
