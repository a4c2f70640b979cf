"""Waiting on a test's ``airflow standalone`` stops at once when one of its components exits.

standalone keeps running when a component dies (its API server on a port taken meanwhile, say);
a wait that watched standalone's own process alone ran out its whole timeout (minutes) and then
reported a timeout.  Here a stand-in standalone: a process whose children are named like its
components and which, like standalone, never reaps them.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..integration.airflow_support import StandaloneWatch, stop_standalone

FAKE_STANDALONE = """
import subprocess, sys, time
sleep = "import sys, time; time.sleep(float(sys.argv[1]))"
children = [
    subprocess.Popen([sys.executable, "-c", sleep, "120", "scheduler"]),
    subprocess.Popen([sys.executable, "-c", sleep, "2", "api-server"]),
]
time.sleep(120)
"""


def test_a_wait_fails_at_once_naming_the_component_that_exited(tmp_path: Path):
    log = tmp_path / "standalone.log"
    log.write_text("api-server | OSError: [Errno 98] Address already in use\n")
    fake = subprocess.Popen([sys.executable, "-c", FAKE_STANDALONE], start_new_session=True)
    watch = StandaloneWatch(fake, log)
    started = time.monotonic()
    try:
        with pytest.raises(pytest.fail.Exception) as failed:
            watch.wait_for("a healthy scheduler", lambda: False, timeout=60)
        waited = time.monotonic() - started
    finally:
        stop_standalone(fake)

    message = str(failed.value)
    assert message.startswith("airflow standalone's api-server exited (standalone itself still runs)"), message
    assert "waiting for a healthy scheduler" in message and "Address already in use" in message  # the log's tail
    assert waited < 30  # not the wait's whole timeout
    assert set(watch.components) == {"scheduler", "api-server"}


def test_a_wait_returns_what_the_check_found_while_every_component_runs(tmp_path: Path):
    log = tmp_path / "standalone.log"
    log.write_text("")
    fake = subprocess.Popen([sys.executable, "-c", FAKE_STANDALONE.replace('"2"', '"120"')], start_new_session=True)
    watch = StandaloneWatch(fake, log)
    polls = iter(range(100))
    try:
        # Ready once both components have been seen, and not before the check's second poll.
        found = watch.wait_for("ready", lambda: len(watch.components) == 2 and next(polls) >= 1 and "ready", timeout=60)
        assert found == "ready"
    finally:
        stop_standalone(fake)
    assert set(watch.components) == {"scheduler", "api-server"}
