"""`make run` migrates Airflow's metadata DB only when its schema is not current.

``migrate_metadata_db`` skips ``airflow db migrate`` (seconds per run) when the DB is
already at the installed Airflow's head, which it reads from Airflow's own
version-to-revision map.  These checks run in a subprocess on a throw-away
AIRFLOW_HOME, like every real-Airflow test (tests/integration/airflow_support.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .airflow_support import airflow_env, probe_json

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

_PROBE = """
import json, sqlite3, sys
from airflow.utils import db
from pipelines.orchestration.nightly import migrate_metadata_db, schema_is_current

seen = {"empty": schema_is_current()}
migrate_metadata_db()  # a new DB: created at the head
seen["migrated"] = schema_is_current()
seen["script_heads"] = db._get_script_object().get_heads()
with sqlite3.connect(sys.argv[1]) as conn:
    seen["db_heads"] = [row[0] for row in conn.execute("select version_num from alembic_version")]
    seen["pools"] = [row[0] for row in conn.execute("select pool from slot_pool")]
    conn.execute("update alembic_version set version_num = ?", (db._REVISION_HEADS_MAP["3.2.0"],))
seen["behind"] = schema_is_current()
print(json.dumps(seen))
"""


def test_only_a_db_behind_this_airflow_is_migrated(tmp_path: Path):
    home = tmp_path / "airflow"
    seen = probe_json(_PROBE, str(home / "airflow.db"), env=airflow_env(tmp_path / "state", home))
    assert seen["empty"] is False  # no DB yet: created by the full migration
    # The head the fast check expects is the one Airflow's migration scripts end at.
    assert seen["db_heads"] == seen["script_heads"] and len(seen["script_heads"]) == 1
    assert seen["migrated"] is True
    assert seen["pools"] == ["default_pool"]
    assert seen["behind"] is False  # an older schema still goes through `airflow db migrate`
