"""GX validation of the manufacturing suite vs plain vectorised pandas checks of the same rules.

The measured side is what the validate stage calls (`pipelines.data.quality.validate_frame`:
the GX checkpoint, its data docs, the batch-level checks); the baseline evaluates
every expectation of ``expectations/manufacturing.json`` with pandas.  Both see
the same simulated frame, warm (the first GX call of a process is reported
apart).  Budget: <= 3x at 1M rows.
"""

from __future__ import annotations

import statistics
import time
from datetime import date, timedelta
from typing import Any

import pandas as pd
from harness import Config, Figure, median_pair, settings_at, timed

VERTICAL = "manufacturing"
BUDGET_AT_1M = 3.0


def frame_of(rows: int, days: int = 30) -> tuple[pd.DataFrame, list[str]]:
    """A manufacturing-shaped frame of ``rows`` readings over ``days`` days (the simulator)."""
    from pipelines.demo.simulate import simulate_sensor_readings

    end = date(2026, 11, 27)
    start = end - timedelta(days=days - 1)
    frame = simulate_sensor_readings(rows, seed=0, start=start, end=end)
    frame["event_date"] = pd.to_datetime(frame["event_date"]).dt.strftime("%Y-%m-%d")
    return frame, [str(start + timedelta(days=i)) for i in range(days)]


def pandas_checks(frame: pd.DataFrame, suite: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """Every expectation of ``suite``, vectorised; the names of those that fail."""

    def value(v: Any) -> Any:
        return params[v["$PARAMETER"]] if isinstance(v, dict) and "$PARAMETER" in v else v

    failed = []
    for exp in suite["expectations"]:
        kw = {k: value(v) for k, v in exp["kwargs"].items()}
        kind = exp["type"]
        if kind == "expect_table_columns_to_match_set":
            ok = set(kw["column_set"]) <= set(frame.columns)
        elif kind == "expect_table_row_count_to_be_between":
            ok = kw["min_value"] <= len(frame) <= kw["max_value"]
        elif kind == "expect_column_values_to_not_be_null":
            ok = not frame[kw["column"]].isna().any()
        elif kind == "expect_column_values_to_be_unique":
            ok = not frame[kw["column"]].dropna().duplicated().any()
        elif kind == "expect_column_values_to_be_in_set":
            col = frame[kw["column"]].dropna()
            ok = bool(col.isin(kw["value_set"]).all())
        elif kind == "expect_column_values_to_be_between":
            col = frame[kw["column"]].dropna()
            ok = bool(col.between(kw.get("min_value"), kw.get("max_value")).all())
        elif kind == "expect_column_pair_values_a_to_be_greater_than_b":
            a, b = frame[kw["column_A"]], frame[kw["column_B"]]
            ok = bool(((a >= b) if kw.get("or_equal") else (a > b)).all())
        else:
            raise ValueError(f"no pandas baseline for {kind}; add one to benchmarks/bench_gx.py")
        if not ok:
            failed.append(f"{kind}({kw.get('column', '')})")
    return failed


def run(config: Config) -> list[Figure]:
    from pipelines.config import load_spec, load_suite

    home = config.workdir / "gx"
    settings = settings_at(home)
    spec = load_spec(VERTICAL, settings)
    # A benchmark frame is denser than the demo's ~60 rows a day: widen the row-count bounds only.
    spec = spec.model_copy(update={"quality": spec.quality.model_copy(update={"max_rows_per_day": 10**9})})
    suite = load_suite(spec, settings)
    sizes = [2_000] if config.quick else [100_000, 1_000_000, 5_000_000]

    from pipelines.data.quality import check_batch, validate_frame

    figures = []
    first_call = None
    for rows in sizes:
        frame, days = frame_of(rows)
        params = {"min_rows": spec.quality.min_rows_per_day * len(days), "max_rows": 10**9 * len(days), "days": days}
        if first_call is None:
            start = time.perf_counter()
            validate_frame(frame, spec, ds=days[-1], days=days, settings=settings)
            first_call = time.perf_counter() - start
        report = validate_frame(frame, spec, ds=days[-1], days=days, settings=settings)
        plain = pandas_checks(frame, suite, params)
        if not report.success or plain:
            raise AssertionError(f"the benchmark frame must pass both: GX {report.failed}, pandas {plain}")
        m, b, samples = median_pair(
            config.reps,
            lambda frame=frame, days=days: timed(
                lambda: validate_frame(frame, spec, ds=days[-1], days=days, settings=settings)
            ),
            lambda frame=frame, params=params: timed(lambda: pandas_checks(frame, suite, params)),
        )
        # The measured side also runs the stage's own batch checks (pandas, not suite rules); timed apart
        # here so the table shows how much of the ratio is GX (checkpoint, validator, data docs) itself.
        batch = statistics.median(
            timed(lambda frame=frame, days=days: check_batch(frame, spec, days=days, settings=settings))
            for _ in range(config.reps)
        )
        details = [f"first GX call in the process: {first_call:.2f} s"] if rows == sizes[0] else []
        details.append(
            f"of which the stage's batch checks (columns, types, leaks, distribution; pandas): {batch:.3g} s;"
            f" without them {(m - batch) / b:.2f}x"
        )
        figures.append(
            Figure(
                name=f"GX validation vs pandas, {rows:,} rows ({len(suite['expectations'])} rules)",
                measured=m,
                baseline=b,
                budget=BUDGET_AT_1M if rows == 1_000_000 else None,
                detail="; ".join(details),
                samples=samples,
            )
        )
        figures.append(gx_alone(config, frame, params=params, suite=suite, spec=spec))
    return figures


def gx_alone(
    config: Config, frame: pd.DataFrame, *, params: dict[str, Any], suite: dict[str, Any], spec: Any
) -> Figure:
    """The floor of the figure above: GX's own validation of the suite, nothing of the project's around it.

    The registered validation definition run directly (``ValidationDefinition.run``, GX's
    public API) with the result format the stage's checkpoint asks for (counts and the keys
    of failing rows, for the alert): no checkpoint, so no freshness checks of the checkpoint
    and no data docs action, and none of the stage's batch checks.  No validate stage that
    asks GX for that much can be faster than this.  The detail also gives GX with
    ``BOOLEAN_ONLY`` (pass or fail per rule, nothing for an alert or the data docs).
    """
    from pipelines.data.quality import _gx_checkpoint

    settings = settings_at(config.workdir / "gx")  # the project `run` validated in: its checkpoint is registered
    checkpoint = _gx_checkpoint(settings, spec, suite).checkpoint
    [definition] = checkpoint.validation_definitions

    def validate(result_format: Any = checkpoint.result_format) -> Any:
        return definition.run(
            batch_parameters={"dataframe": frame}, expectation_parameters=params, result_format=result_format
        )

    if not validate().success:
        raise AssertionError("the benchmark frame must pass GX's validation on its own too")
    m, b, samples = median_pair(
        config.reps, lambda: timed(validate), lambda: timed(lambda: pandas_checks(frame, suite, params))
    )
    boolean = statistics.median(timed(lambda: validate("BOOLEAN_ONLY")) for _ in range(config.reps))
    over = len(frame) == 1_000_000 and m / b > BUDGET_AT_1M
    return Figure(
        name=f"  floor: GX alone vs pandas, {len(frame):,} rows",
        measured=m,
        baseline=b,
        detail="ValidationDefinition.run of the same suite with the stage's result format: no checkpoint, data docs"
        f" or batch checks; with BOOLEAN_ONLY instead {boolean:.3g} s, {boolean / b:.2f}x"
        + (f"; the 1M budget ({BUDGET_AT_1M:g}x) is below it" if over else ""),
        samples={**samples, "boolean_only": [boolean]},
    )
