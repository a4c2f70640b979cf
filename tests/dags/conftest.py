"""DAG-integrity fixtures: a DagBag of the repo's ``dags/``, parsed like Airflow does.

Airflow reads its configuration once, when first imported, and creates
``AIRFLOW_HOME`` if it is missing: point it at a throw-away folder before any
test imports it, so these tests never touch a developer's real Airflow.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="pipelines-dagbag-airflow-")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
# The repo's plugins register the verticals' timetable (serialization needs it).
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(Path(__file__).resolve().parents[2] / "plugins")

from pipelines.orchestration.dag_files import DAGS_DIR  # after the env above

atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], ignore_errors=True)


@pytest.fixture(scope="session")
def dagbag():
    """Every DAG file in ``dags/``, parsed once per session with the repo's specs."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(str(DAGS_DIR))
