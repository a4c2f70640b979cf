"""DAG integrity: every spec gives one well-formed DAG that parses fast and cleanly.

Parametrised over the DagBag of the repo's ``dags/`` (the Astro-template
shape), plus the two failure modes a config-only platform must get right: a
broken spec hides only its own vertical, and a new spec needs no Python.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from pipelines.config import PROJECT_ROOT, Settings, load_spec, vertical_names
from pipelines.memory import COLLECTOR_THRESHOLDS
from pipelines.orchestration.dag_files import DAGS_DIR, render_dag_file, sync_dag_files

pytestmark = pytest.mark.airflow

VERTICALS = vertical_names(Settings.from_env())
#: Every DAG file: one generated per vertical, plus the hand-written rollback DAG.
DAG_FILES = [*VERTICALS, "rollback_model"]
TASK_IDS = ["extract", "validate", "snapshot", "train", "evaluate", "gate", "deploy", "report"]
#: CPython's own thresholds, what a process without the hook keeps.
PYTHON_DEFAULT_THRESHOLDS = (700, 10, 10)
HEAVY = ("torch", "lightning", "pytorch_lightning", "great_expectations", "dvc", "pandas")


def test_specs_exist():
    assert VERTICALS, "no verticals/*.yaml found"


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_one_dag_per_spec_plus_the_rollback_dag(dagbag):
    assert sorted(dagbag.dag_ids) == sorted([*VERTICALS, "rollback_model"])


def test_rollback_dag_is_manual_and_validates_its_form(dagbag):
    dag = dagbag.dags["rollback_model"]
    assert type(dag.timetable).__name__ == "NullTimetable"  # manual only
    assert dag.max_active_runs == 1
    assert [t.task_id for t in dag.tasks] == ["rollback"]
    params = dag.params
    assert set(params.keys()) == {"vertical", "to_version", "reason"}
    assert params.get_param("vertical").schema["enum"] == sorted(VERTICALS)
    with pytest.raises(Exception):  # noqa: B017 - Airflow raises its own ParamValidationError
        params.get_param("vertical").resolve("retail")
    with pytest.raises(Exception):  # noqa: B017
        params.get_param("to_version").resolve("../../etc")
    assert params.get_param("to_version").resolve("mv-0123456789ab") == "mv-0123456789ab"
    # A rollback needs a reason: the form refuses none, an empty one and a blank one.
    for blank in (None, "", "   "):
        with pytest.raises(Exception):  # noqa: B017
            params.get_param("reason").resolve(blank)
    assert params.get_param("reason").resolve("recall complaints") == "recall complaints"


def test_dag_files_are_generated_and_in_sync():
    """``dags/`` holds exactly the generated files: no hand-written per-vertical Python."""
    report = sync_dag_files(DAGS_DIR, VERTICALS, check=True)
    assert not report.changed, f"dags/ is stale ({report}); run `make dags`"
    for name in VERTICALS:
        assert (DAGS_DIR / f"{name}.py").read_text() == render_dag_file(name)


@pytest.mark.parametrize("vertical", VERTICALS)
def test_dag_shape(dagbag, vertical):
    dag = dagbag.dags[vertical]
    spec = load_spec(vertical)
    assert [t.task_id for t in dag.topological_sort()] == TASK_IDS
    for upstream, downstream in itertools.pairwise(TASK_IDS):
        assert dag.task_dict[upstream].downstream_task_ids == {downstream}
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert type(dag.timetable).__name__ == "UtcDayTimetable"
    assert dag.timetable.summary == spec.schedule
    assert dag.owner == spec.owner
    assert set(dag.tags) == {*spec.tags, f"vertical:{vertical}"}
    assert spec.label.column in dag.doc_md
    for metric, value in spec.gate.thresholds.items():
        assert f"{metric} ≥ {value:g}" in dag.doc_md


@pytest.mark.parametrize("vertical", VERTICALS)
def test_trigger_form_submits_with_its_defaults(dagbag, vertical):
    """Every field optional (type admits null), defaults valid: the form's Trigger button is enabled."""
    params = dagbag.dags[vertical].params
    assert params.validate() == {"dry_run": False, "force_promotion": False, "force_reason": None}
    for key in ("dry_run", "force_promotion", "force_reason"):
        # Airflow's form marks a field required unless its type admits null.
        assert "null" in params.get_param(key).schema["type"], key
    assert params.get_param("force_reason").resolve("x" * 500) == "x" * 500
    with pytest.raises(Exception):  # noqa: B017 - Airflow raises its own ParamValidationError
        params.get_param("force_reason").resolve("x" * 501)


@pytest.mark.parametrize(
    ("conf", "accepted"),
    [
        ({}, True),
        ({"dry_run": True}, True),
        ({"force_promotion": True, "force_reason": "CFO sign-off #12"}, True),
        ({"force_reason": "no force: ignored"}, True),
        ({"force_promotion": True}, False),
        ({"force_promotion": True, "force_reason": "   "}, False),
        ({"force_promotion": True, "force_reason": None}, False),
    ],
)
def test_trigger_conf_validation(dagbag, conf, accepted):
    """What Airflow checks at trigger (each param's schema), then the run start (the cross-field rule)."""
    from airflow.sdk.definitions.param import ParamsDict

    from pipelines.orchestration.dag_factory import run_params
    from pipelines.orchestration.tasks import InvalidRunParams, RunOptions

    assert set(dagbag.dags["finance"].params.keys()) == set(run_params())  # the form is run_params()
    params = ParamsDict(run_params())  # fresh: update() changes the Param objects in place
    params.update(conf)
    values = params.validate()  # per-param JSON schema: every one of these conf passes it
    if accepted:
        options = RunOptions.from_params(values)
        forced = bool(conf.get("force_promotion"))
        assert options.force_reason == (conf["force_reason"] if forced else None)
    else:
        with pytest.raises(InvalidRunParams, match="force_reason is empty"):
            RunOptions.from_params(values)


def test_rollback_reason_is_required_in_the_form(dagbag):
    from pipelines.orchestration.rollback_dag import rollback_params

    assert "reason" in dagbag.dags["rollback_model"].params
    param = rollback_params(["finance"])["reason"]  # fresh: resolve() in other tests stores values
    assert "null" not in param.schema["type"]  # the form keeps Trigger disabled until it is filled
    assert not param.has_value  # no default to submit
    for blank in ("", "   ", None):
        with pytest.raises(Exception):  # noqa: B017 - Airflow raises its own ParamValidationError
            param.resolve(blank)
    assert param.resolve("bad model in prod") == "bad model in prod"


@pytest.mark.parametrize("vertical", VERTICALS)
def test_every_task_retries_with_exponential_backoff_and_alerts(dagbag, vertical):
    from pipelines.orchestration.notifiers import FailureNotifier

    for task in dagbag.dags[vertical].tasks:
        assert task.retries >= 1, task.task_id
        assert task.retry_exponential_backoff > 1, task.task_id
        assert task.max_retry_delay >= timedelta(minutes=1), task.task_id
        assert task.owner == load_spec(vertical).owner
        notifiers = [cb for cb in task.on_failure_callback if isinstance(cb, FailureNotifier)]
        assert len(notifiers) == 1 and notifiers[0].vertical == vertical, task.task_id


@pytest.mark.parametrize("vertical", VERTICALS)
def test_gate_skips_only_deploy_and_report_tolerates_it(dagbag, vertical):
    from airflow.providers.standard.operators.python import ShortCircuitOperator

    dag = dagbag.dags[vertical]
    gate = dag.task_dict["gate"]
    assert isinstance(gate, ShortCircuitOperator)
    assert gate.ignore_downstream_trigger_rules is False
    assert dag.task_dict["report"].trigger_rule == "none_failed"
    for task_id in TASK_IDS[:-1]:
        assert dag.task_dict[task_id].trigger_rule == "all_success"


@pytest.mark.parametrize("vertical", VERTICALS)
def test_snapshot_publishes_the_training_window_asset(dagbag, vertical):
    dag = dagbag.dags[vertical]
    assert [a.name for a in dag.task_dict["snapshot"].outlets] == [f"{vertical}_training_window"]
    assert all(not dag.task_dict[t].outlets for t in TASK_IDS if t != "snapshot")


@pytest.mark.parametrize("vertical", VERTICALS)
def test_dag_serializes(dagbag, vertical):
    """What the dag-processor stores; a failure here would be an import error in production."""
    from airflow.serialization.serialized_objects import DagSerialization

    data = DagSerialization.to_dict(dagbag.dags[vertical])
    assert data["dag"]["dag_id"] == vertical


def test_the_dagbag_parses_every_dag_file_and_only_those(dagbag):
    """One stat per file (parse times are `make bench`'s, not a test's: see below)."""
    parsed = {Path(s.file).name for s in dagbag.dagbag_stats}
    assert parsed == {f"{name}.py" for name in DAG_FILES}


_PARSE_PROBE = """
import importlib.util, json, os, socket, sys, time, traceback

def _no_network(*args, **kwargs):
    raise AssertionError("DAG parsing opened a network connection")

socket.socket.connect = _no_network
import airflow.sdk  # noqa: F401  (Airflow itself is loaded before any DAG file, as in the dag-processor)
import gc
print(json.dumps({{"interpreter": {{"gc_threshold": gc.get_threshold()}}}}))

db = sys.argv[1]
for path in sys.argv[2:]:
    # Each file in a child forked from here, as the dag-processor parses each file: a cold parse.
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            existed = os.path.exists(db)
            start = time.perf_counter()
            spec = importlib.util.spec_from_file_location("probe_dag", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            elapsed = time.perf_counter() - start
            heavy = sorted({{m.split(".")[0] for m in sys.modules}} & {heavy})
            result = {{"seconds": elapsed, "heavy": heavy, "dag_id": module.dag.dag_id,
                       "created_db": os.path.exists(db) and not existed}}
        except BaseException:
            result = {{"error": traceback.format_exc()}}
        with os.fdopen(write, "w") as pipe:
            pipe.write(json.dumps(result))
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        result = json.loads(pipe.read() or '{{"error": "the child died"}}')
    os.waitpid(pid, 0)
    print(json.dumps({{"path": path, **result}}))
"""


@pytest.fixture(scope="module")
def cold_parses(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Each DAG file parsed alone, offline, with no DB, in a child forked after ``import airflow.sdk``.

    One interpreter imports Airflow once and forks a child per file, as the
    dag-processor does: each child starts with Airflow only, so its parse is cold
    and what it imports is the file's own doing.  The metadata DB's URL points at
    a file that must never appear (a DB touch would create it).
    """
    tmp_path = tmp_path_factory.mktemp("parse")
    db = tmp_path / "must-not-exist.db"
    env = {
        "PATH": str(Path(sys.executable).parent),
        "HOME": str(tmp_path),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),  # as every deployment sets it
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{db}",
        "PIPELINES_HOME": str(tmp_path / "state"),
    }
    if "PYTHONPYCACHEPREFIX" in os.environ:  # reuse the byte-code cache `make` keeps
        env["PYTHONPYCACHEPREFIX"] = os.environ["PYTHONPYCACHEPREFIX"]
    paths = [str(DAGS_DIR / f"{name}.py") for name in DAG_FILES]
    proc = subprocess.run(
        [sys.executable, "-c", _PARSE_PROBE.format(heavy=set(HEAVY)), str(db), *paths],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=PROJECT_ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"')]
    [interpreter] = [r["interpreter"] for r in lines if "interpreter" in r]  # what `import airflow` left set
    return {"interpreter": interpreter, **{Path(r["path"]).stem: r for r in lines if "path" in r}}


def test_every_airflow_process_collects_garbage_with_the_stacks_thresholds(cold_parses):
    """``import airflow`` runs plugins/airflow_local_settings.py (Airflow's local-settings hook).

    The collector's thresholds (`COLLECTOR_THRESHOLDS`) are then set in every Airflow process
    before the rest of Airflow loads (docs/benchmarks.md, "The cyclic collector in the test
    processes and in Airflow's").
    """
    assert COLLECTOR_THRESHOLDS != PYTHON_DEFAULT_THRESHOLDS
    assert tuple(cold_parses["interpreter"]["gc_threshold"]) == COLLECTOR_THRESHOLDS


@pytest.mark.parametrize("vertical", DAG_FILES)
def test_parsing_a_dag_file_is_light_and_offline(vertical, cold_parses):
    """A cold parse (`cold_parses`): no heavy import, no DB, no network.

    Its time is a budget (<= 0.3 s), measured by `make bench` (benchmarks/bench_parse.py)
    against a one-task DAG file in the same run, not asserted here: a test timed on a
    loaded 2-core machine fails for the load, not for the DAG file.
    """
    result = cold_parses[vertical]
    assert "error" not in result, result["error"]
    assert result["dag_id"] == vertical
    assert result["heavy"] == [], f"parsing {vertical}.py imported {result['heavy']}"
    assert not result["created_db"], "parsing touched the metadata DB"


def _copy_specs(tmp_path: Path) -> Path:
    specs = tmp_path / "verticals"
    shutil.copytree(PROJECT_ROOT / "verticals", specs)
    return specs


def test_broken_spec_is_an_import_error_of_that_vertical_only(tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    specs = _copy_specs(tmp_path)
    broken = VERTICALS[0]
    raw = yaml.safe_load((specs / f"{broken}.yaml").read_text())
    del raw["gate"]["thresholds"]["f1"]  # the typed schema requires accuracy, recall and f1
    (specs / f"{broken}.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("PIPELINES_SPECS_DIR", str(specs))

    bag = DagBag(str(DAGS_DIR))

    assert list(bag.import_errors) == [str(DAGS_DIR / f"{broken}.py")]
    error = bag.import_errors[str(DAGS_DIR / f"{broken}.py")]
    assert "SpecError" in error and "gate.thresholds" in error and f"{broken}.yaml" in error
    # The other verticals and the rollback DAG still load.
    assert sorted(bag.dag_ids) == sorted(v for v in DAG_FILES if v != broken)


def test_invalid_yaml_is_an_import_error_too(tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    specs = _copy_specs(tmp_path)
    broken = VERTICALS[-1]
    (specs / f"{broken}.yaml").write_text("name: [unclosed\n")
    monkeypatch.setenv("PIPELINES_SPECS_DIR", str(specs))

    bag = DagBag(str(DAGS_DIR))

    assert list(bag.import_errors) == [str(DAGS_DIR / f"{broken}.py")]
    assert "not valid YAML" in bag.import_errors[str(DAGS_DIR / f"{broken}.py")]
    assert len(bag.dag_ids) == len(DAG_FILES) - 1


def test_a_new_vertical_is_configuration_only(tmp_path, monkeypatch):
    """A spec file is all it takes: the generated DAG file and the DAG follow."""
    from airflow.dag_processing.dagbag import DagBag

    specs = _copy_specs(tmp_path)
    raw = yaml.safe_load((specs / f"{VERTICALS[0]}.yaml").read_text())
    raw.update(name="retail", owner="retail-ml", tags=["retail"])
    (specs / "retail.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("PIPELINES_SPECS_DIR", str(specs))
    dags = tmp_path / "dags"

    report = sync_dag_files(dags)

    assert report.written == sorted([*VERTICALS, "retail"])
    bag = DagBag(str(dags))
    assert bag.import_errors == {}
    assert bag.dags["retail"].owner == "retail-ml"
    assert "vertical:retail" in bag.dags["retail"].tags
