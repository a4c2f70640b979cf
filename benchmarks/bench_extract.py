"""Extraction of a window from SQLite and PostgreSQL into raw Parquet partitions: rows/s and peak memory.

Measured: the project's extract (`pipelines.data.sources.extract_days`, one partition per
day) in a child process.  Baseline: a streaming copy of the same query
(`pandas.read_sql(chunksize=...)` into one `pyarrow.parquet.ParquetWriter`) in a
child process too.  Budget: flat memory, i.e. peak RSS within 1.5x of the
streaming copy's (the time ratio is reported alongside).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
from harness import Config, Figure, child_json

VERTICAL = "manufacturing"
DAYS = 30

_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
mode, home, first, last = sys.argv[1:5]
start = time.perf_counter()
if mode == "project":
    from pipelines.config import Settings, load_spec
    from pipelines.data.sources import extract_days
    from datetime import date, timedelta
    settings = Settings.from_env()
    spec = load_spec("manufacturing", settings)
    d0, d1 = date.fromisoformat(first), date.fromisoformat(last)
    days = [str(d0 + timedelta(days=i)) for i in range((d1 - d0).days + 1)]
    rows = sum(extract_days(spec, days, settings).values())
else:
    import pandas as pd, pyarrow as pa, pyarrow.parquet as pq, sqlalchemy as sa
    from pipelines.config import Settings, load_spec
    from pipelines.data.sources import resolve_connection_url
    settings = Settings.from_env()
    spec = load_spec("manufacturing", settings)
    engine = sa.create_engine(resolve_connection_url(spec.source.conn_id, settings))
    query = sa.text(f"select * from {spec.source.table} where event_date >= :a and event_date <= :b")
    writer, rows = None, 0
    with engine.connect().execution_options(stream_results=True) as conn:
        for chunk in pd.read_sql(query, conn, params={"a": first, "b": last}, chunksize=50_000):
            table = pa.Table.from_pandas(chunk, preserve_index=False)
            writer = writer or pq.ParquetWriter(Path(home) / "copy.parquet", table.schema)
            writer.write_table(table)
            rows += len(chunk)
    if writer:
        writer.close()
seconds = time.perf_counter() - start
# VmHWM, not ru_maxrss: Linux carries the parent's high-water mark into ru_maxrss across
# fork/exec, so a child of this harness (which holds the generated table) would report the harness.
try:
    hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")]
    peak_mib = int(hwm[0].split()[1]) / 1024
except (OSError, IndexError):
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"rows": rows, "seconds": seconds, "peak_mib": peak_mib}))
"""


def _child(mode: str, home: Path, env: dict[str, str], first: str, last: str) -> dict:
    return child_json(_CHILD, mode, str(home), first, last, env=env, what=f"extract child ({mode})")


def _warehouse(rows: int, url: str) -> tuple[str, str]:
    import sqlalchemy as sa
    from bench_gx import frame_of

    from pipelines.config import load_spec

    frame, days = frame_of(rows, days=DAYS)
    frame["event_date"] = pd.to_datetime(frame["event_date"]).dt.date  # a DATE column, as the demo seed writes
    engine = sa.create_engine(url)
    try:
        frame.to_sql(load_spec(VERTICAL).source.table, engine, if_exists="replace", index=False, chunksize=50_000)
    finally:
        engine.dispose()
    return days[0], days[-1]


def _env(home: Path, conn: dict | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINES_", "AIRFLOW_CONN_"))}
    env["PIPELINES_HOME"] = str(home)
    if conn is not None:
        env["AIRFLOW_CONN_WAREHOUSE_DEFAULT"] = json.dumps(conn)
    return env


def run(config: Config) -> list[Figure]:
    rows = 30_000 if config.quick else 5_000_000 if os.environ.get("BENCH_5M") else 1_000_000
    backends: dict[str, tuple[str, dict | None]] = {}
    sqlite_home = config.workdir / "extract-sqlite"
    sqlite_home.mkdir()
    backends["SQLite"] = (f"sqlite:///{sqlite_home / 'warehouse.db'}", None)
    pg = os.environ.get("PIPELINES_BENCH_POSTGRES")  # e.g. a conn JSON; default: the machine's server
    pg_conn = (
        json.loads(pg)
        if pg
        else {
            "conn_type": "postgres",
            "host": "127.0.0.1",
            "port": 5432,
            "login": "postgres",
            "schema": os.environ.get("PIPELINES_BENCH_PG_DB", "postgres"),
        }
    )
    try:
        import psycopg

        psycopg.connect(
            f"host={pg_conn['host']} port={pg_conn['port']} user={pg_conn['login']} dbname={pg_conn['schema']}",
            connect_timeout=3,
        ).close()
        backends["PostgreSQL"] = (
            f"postgresql+psycopg://{pg_conn['login']}@{pg_conn['host']}:{pg_conn['port']}/{pg_conn['schema']}",
            pg_conn,
        )
    except Exception as exc:  # reported, not fatal: SQLite still runs
        print(f"[bench] extract: PostgreSQL skipped ({exc})", file=sys.stderr)
    figures = []
    for name, (url, conn) in backends.items():
        home = config.workdir / f"extract-{name.lower()}"
        home.mkdir(exist_ok=True)
        first, last = _warehouse(rows, url)
        if conn is None:
            conn_env = _env(home, {"conn_type": "sqlite", "host": str(home / "warehouse.db")})
        else:
            conn_env = _env(home, conn)
        project, copy = [], []
        for _ in range(config.reps):
            project.append(_child("project", home, conn_env, first, last))
            copy.append(_child("copy", home, conn_env, first, last))
        med = lambda runs, key: sorted(r[key] for r in runs)[len(runs) // 2]  # noqa: E731
        figures.append(
            Figure(
                name=f"extract {rows:,} rows from {name}: peak RSS vs a streaming copy",
                measured=med(project, "peak_mib"),
                baseline=med(copy, "peak_mib"),
                unit="M",
                budget=1.5,
                detail=f"{rows / med(project, 'seconds'):,.0f} rows/s (project) vs "
                f"{rows / med(copy, 'seconds'):,.0f} rows/s (streaming copy); "
                f"time ratio {med(project, 'seconds') / med(copy, 'seconds'):.2f}x",
                samples={"measured": [r["peak_mib"] for r in project], "baseline": [r["peak_mib"] for r in copy]},
            )
        )
        if conn is not None:
            import sqlalchemy as sa

            from pipelines.config import load_spec

            engine = sa.create_engine(url)
            with engine.begin() as c:
                c.execute(sa.text(f"drop table if exists {load_spec(VERTICAL).source.table}"))
            engine.dispose()
    return figures
