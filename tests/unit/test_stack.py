"""`make stack` without starting it: configuration, refusals, and one topology with docker-compose.yml."""

from __future__ import annotations

import importlib
import importlib.util
import random
import socket
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.config import PROJECT_ROOT
from pipelines.orchestration import stack as stack_module
from pipelines.orchestration.stack import Stack, StackConfig, StackError, free_ports, hostname, main


def test_config_from_the_environment(tmp_path: Path):
    config = StackConfig.from_env(
        {"PIPELINES_STACK_DIR": str(tmp_path), "PIPELINES_STACK_API_PORT": "9280", "PIPELINES_STACK_WORKERS": "3"}
    )
    assert (config.root, config.api_port, config.workers) == (tmp_path.resolve(), 9280, 3)
    assert config.worker_names == ["worker-1", "worker-2", "worker-3"]
    assert config.db_url("_registry") == "postgresql+psycopg://postgres@127.0.0.1:5432/pipelines_stack_registry"
    with pytest.raises(ValueError, match="PIPELINES_STACK_S3_PORT must be a number, got 'x'"):
        StackConfig.from_env({"PIPELINES_STACK_S3_PORT": "x"})


def test_a_taken_port_is_refused_before_anything_starts(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stack = Stack(StackConfig(root=tmp_path, api_port=port))
        with pytest.raises(StackError, match=rf"API port {port} already in use.*PIPELINES_STACK_API_PORT"):
            stack.start()
    assert stack.processes == {}
    assert not (tmp_path / "worker-1").exists()


def test_one_shot_commands_run_side_by_side_and_each_failure_is_named_with_its_log(tmp_path: Path):
    # The migration, the registry upgrade and the seed run at once (each on its own database).  Here the
    # first only succeeds if the second runs meanwhile, so run one after the other it would fail too.
    (tmp_path / "logs").mkdir()
    signal_file = tmp_path / "second-ran"
    waits_for_the_second = (
        f"import pathlib, sys, time\nfor _ in range(300):\n    if pathlib.Path({str(signal_file)!r}).exists(): "
        "sys.exit(0)\n    time.sleep(0.05)\nsys.exit(9)"
    )
    stack = Stack(StackConfig(root=tmp_path))
    started = stack._start_one_shots(
        {
            "migrate": [sys.executable, "-c", waits_for_the_second],
            "registry": [
                sys.executable,
                "-c",
                f"import pathlib; pathlib.Path({str(signal_file)!r}).touch(); print('relation is locked'); exit(3)",
            ],
            "seed": [sys.executable, "-c", "exit(4)"],
        }
    )
    with pytest.raises(StackError) as raised:
        stack._finish_one_shots(started)
    message = str(raised.value)
    assert (
        "failed (3)" in message
        and "relation is locked" in message
        and str(tmp_path / "logs" / "registry.log") in message
    )
    assert "failed (4)" in message and "seed.log" in message
    assert "migrate.log" not in message  # it succeeded: only the failures are named
    assert all(process.poll() is not None for process in started.values())  # nothing left running


def test_free_ports_avoid_the_range_outgoing_connections_take_their_ports_from():
    low, high = stack_module._ephemeral_range()  # the kernel's, from /proc
    for _ in range(20):
        ports = free_ports(9)
        assert len(set(ports)) == 9
        assert all(not low <= port <= high and port >= 10000 for port in ports), (ports, low, high)
        first = free_ports(4, consecutive=True)
        assert first == list(range(first[0], first[0] + 4))
        assert not any(low <= port <= high for port in first)


def test_a_port_a_server_listens_on_is_never_handed_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Leave ten ports outside the "ephemeral range", then listen on all of them but one.  The ten are
    # any ten in a row that this test can bind: other tests' servers hold random ports meanwhile.
    held = _listen_on_nine_of_ten_free_ports()
    try:
        candidates = [listener.getsockname()[1] for listener in held]
        free = candidates[-1] + 1
        (tmp_path / "range").write_text(f"{free + 1}\t65535\n")
        monkeypatch.setattr(stack_module, "EPHEMERAL_RANGE_FILE", tmp_path / "range")
        monkeypatch.setattr(stack_module, "LOWEST_FREE_PORT", candidates[0])
        assert {free_ports(1)[0] for _ in range(10)} == {free}
        # Nor one chosen already for a server that has not bound it yet.
        with pytest.raises(StackError, match=f"no 1 free loopback ports outside the ephemeral range {free + 1}-65535"):
            free_ports(1, avoid={free})
        with pytest.raises(StackError, match=f"no 2 free loopback ports outside the ephemeral range {free + 1}-65535"):
            free_ports(2)
    finally:
        for listener in held:
            listener.close()


def _listen_on_nine_of_ten_free_ports() -> list[socket.socket]:
    """Listeners on nine consecutive ports whose tenth is free too, from a random start."""
    chooser = random.Random()
    for _ in range(100):
        first = chooser.randrange(20000, 30000)
        held: list[socket.socket] = []
        try:
            for port in range(first, first + 9):
                listener = socket.socket()
                held.append(listener)
                listener.bind(("127.0.0.1", port))
                listener.listen()
            if not stack_module._port_taken(first + 9, reuse=False):
                return held
        except OSError:
            pass
        for listener in held:
            listener.close()
    pytest.fail("no ten consecutive free ports in 20000-29999 after 100 tries")


def test_each_process_gets_its_own_homes_and_the_workers_their_own_names_and_log_ports(tmp_path: Path):
    stack = Stack(StackConfig(root=tmp_path, log_port=9000))
    one, two, scheduler = (stack.process_env(n) for n in ("worker-1", "worker-2", "scheduler"))
    homes = {env["PIPELINES_HOME"] for env in (one, two, scheduler)}
    assert len(homes) == 3 and len({env["AIRFLOW_HOME"] for env in (one, two, scheduler)}) == 3
    assert (one["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"], two["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"]) == (
        "9000",
        "9001",
    )
    assert one["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"] == "9002"
    assert one["PIPELINES_STACK_HOSTNAME"] == "worker-1"
    assert one["AIRFLOW__CORE__HOSTNAME_CALLABLE"] == "pipelines.orchestration.stack.hostname"
    # Secrets are generated once and kept: a restart keeps logins and tokens.
    assert Stack(StackConfig(root=tmp_path)).secrets == stack.secrets
    assert (tmp_path / "secrets.json").stat().st_mode & 0o077 == 0


def test_hostname_is_the_worker_name_or_the_fqdn(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PIPELINES_STACK_HOSTNAME", "worker-2")
    assert hostname() == "worker-2"
    monkeypatch.delenv("PIPELINES_STACK_HOSTNAME")
    assert hostname() == socket.getfqdn()


def test_stack_and_compose_are_one_topology(tmp_path: Path):
    """Every setting compose gives its Airflow containers, the stack gives its processes (same meaning)."""
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())["x-airflow"]["environment"]
    spec = importlib.util.spec_from_file_location("entrypoint", PROJECT_ROOT / "deploy" / "entrypoint.py")
    assert spec and spec.loader
    entrypoint = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entrypoint)
    compose = {**compose, **entrypoint.database_env("secret")}
    compose.pop("POSTGRES_PASSWORD")  # the entrypoint's input, turned into the URLs above

    stack = Stack(StackConfig(root=tmp_path)).process_env("worker-1")

    assert set(compose) <= set(stack), set(compose) - set(stack)
    same = (
        "AIRFLOW__CORE__EXECUTOR",
        "AIRFLOW__CORE__AUTH_MANAGER",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS",
        "AIRFLOW__CORE__LOAD_EXAMPLES",
        "PIPELINES_STATE_URL",
        "PIPELINES_DVC_REMOTE",
        "PIPELINES_BUCKET_URL",
        "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS",
    )
    assert {k: str(compose[k]).lower() for k in same} == {k: stack[k].lower() for k in same}
    assert stack["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == "1"
    assert stack["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql")


def test_stack_env_prints_the_shell_variables_and_starts_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PIPELINES_STACK_DIR", str(tmp_path))
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "export PIPELINES_STATE_URL='s3://state'" in out
    assert "export AIRFLOW__CORE__EXECUTOR='CeleryExecutor'" in out
    assert not (tmp_path / "logs").exists()
    assert main(["up"]) == 2


def test_celery_workers_import_the_pipeline_stack_once_on_top_of_airflows_settings():
    from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

    from pipelines.orchestration import celery_config

    option = Stack(StackConfig(root=Path("/unused"))).process_env("worker-1")["AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS"]
    module, _, name = option.rpartition(".")
    config = getattr(importlib.import_module(module), name)
    assert config is celery_config.CELERY_CONFIG
    # Airflow's settings (broker, serialisation, timeouts) are all kept; the preload is added.
    assert {k: v for k, v in config.items() if k != "imports"} == {
        k: v for k, v in DEFAULT_CELERY_CONFIG.items() if k != "imports"
    }
    assert celery_config.PRELOAD_MODULE in config["imports"]
    assert importlib.util.find_spec(celery_config.PRELOAD_MODULE) is not None
    # Whether the workers really start with it and run tasks: tests/distributed.
