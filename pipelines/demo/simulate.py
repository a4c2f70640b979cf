"""Seeded simulators for the demo sources: event dates and machine sensor readings.

No packaged dataset is a realistic predictive-maintenance *stream*, so the
manufacturing vertical is simulated.  The physics is loosely modelled on the
AI4I 2020 Predictive Maintenance data set (S. Matzka, "Explainable Artificial
Intelligence for Predictive Maintenance Applications", AI4I 2020, UCI ML
repository): failures come from heat-dissipation, power, over-strain and
tool-wear modes, plus vibration and hydraulic-pressure faults added here.  The
rule is hidden (no column exposes it) and blurred by noise, so a model has
something real but imperfect to learn.

Everything is vectorised numpy (a 5M-row benchmark uses the same function) and
a pure function of its arguments: the same seed gives the same frame.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd

#: Machines on the simulated shop floor: (line, machine) pairs, fixed per seed.
N_LINES = 6
MACHINES_PER_LINE = 8
#: Product quality variants as in AI4I 2020: low / medium / high.
MACHINE_TYPES = ("L", "M", "H")
MACHINE_TYPE_SHARE = (0.5, 0.3, 0.2)
SHIFTS = ("day", "evening", "night")
#: Over-strain limit (tool wear [min] x torque [Nm]) per machine type (AI4I 2020).
OVERSTRAIN_LIMIT = {"L": 11_000.0, "M": 12_000.0, "H": 13_000.0}
#: Tuned so that about 14 % of readings end in a failure.
FAILURE_BASE_LOGIT = -3.3
LABEL_POSITIVE = "failure"
LABEL_NEGATIVE = "normal"
SENSOR_COLUMNS = (
    "air_temperature_k",
    "process_temperature_k",
    "rotational_speed_rpm",
    "torque_nm",
    "tool_wear_min",
    "vibration_mm_s",
    "hydraulic_pressure_bar",
)


def spread_over_days(
    n_rows: int,
    *,
    start: date,
    end: date,
    rng: np.random.Generator,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Return ``n_rows`` sorted dates in ``[start, end]`` with every day used at least once.

    Each day gets one row, and the remaining rows are drawn multinomially with
    ``weights`` (one per day, uniform when omitted).  Rows taken in their
    existing order are then stamped with these dates, so an order that means
    something (a real day index) survives; shuffle first where it does not.
    """
    n_days = (end - start).days + 1
    if n_days < 1:
        raise ValueError(f"end {end} is before start {start}")
    if n_rows < n_days:
        raise ValueError(
            f"{n_rows} rows cannot cover {n_days} days with at least one row each; shorten the span or supply more rows"
        )
    p = np.full(n_days, 1.0 / n_days) if weights is None else np.asarray(weights, dtype=float)
    if p.shape != (n_days,) or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"weights must be {n_days} non-negative numbers with a positive sum")
    counts = 1 + rng.multinomial(n_rows - n_days, p / p.sum())
    days = np.datetime64(start, "D") + np.arange(n_days)
    return np.repeat(days, counts)


def _workday_weights(start: date, end: date) -> np.ndarray:
    """Fewer readings at weekends: the plant runs one shift instead of three."""
    days = np.datetime64(start, "D") + np.arange((end - start).days + 1)
    weekday = (days.astype("int64") + 3) % 7  # 1970-01-01 was a Thursday (3)
    return np.where(weekday >= 5, 0.6, 1.0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def simulate_sensor_readings(
    n_rows: int,
    *,
    seed: int,
    start: date,
    end: date,
    n_extra_features: int = 0,
) -> pd.DataFrame:
    """Simulate ``n_rows`` machine sensor readings between ``start`` and ``end``.

    Columns: ``reading_id`` (unique, in time order), ``event_date``,
    ``machine_id``, ``line_id``, ``machine_type``, ``shift``, seven sensor
    readings, optional ``aux_sensor_NN`` columns and the label
    ``machine_failure`` (``"failure"`` / ``"normal"``).  Every day in the span
    has at least one reading, weekdays more than weekends.

    ``n_extra_features`` adds float columns for scale tests: odd-numbered ones
    are noisy linear mixtures of the real sensors (correlated, weakly
    informative), even-numbered ones are pure noise.
    """
    if n_extra_features < 0:
        raise ValueError("n_extra_features must be >= 0")
    rng = np.random.default_rng(seed)
    dates = spread_over_days(n_rows, start=start, end=end, rng=rng, weights=_workday_weights(start, end))

    # The floor: a fixed set of machines, each with a type and a latent health
    # (bearing condition) that the model never sees directly.
    n_machines = N_LINES * MACHINES_PER_LINE
    machine_type_idx = rng.choice(len(MACHINE_TYPES), size=n_machines, p=MACHINE_TYPE_SHARE)
    machine_wear = rng.gamma(shape=2.0, scale=0.25, size=n_machines)
    line_heat = rng.normal(0.0, 0.6, size=N_LINES)  # some halls run warmer
    machine = rng.integers(0, n_machines, size=n_rows)
    line = machine // MACHINES_PER_LINE
    mtype = machine_type_idx[machine]
    shift = rng.choice(len(SHIFTS), size=n_rows, p=(0.45, 0.35, 0.20))

    # Ambient air temperature follows the season (peak in late July) and the hall.
    day_of_year = (dates - dates.astype("datetime64[Y]")).astype("int64")
    season = np.sin(2 * np.pi * (day_of_year - 110) / 365.25)
    air = 298.0 + 4.0 * season + line_heat[line] - 0.8 * (shift == 2) + rng.normal(0, 1.0, n_rows)
    rpm = np.clip(rng.normal(1540.0, 170.0, n_rows), 1150.0, 2900.0)
    # Torque falls as speed rises at roughly constant power, with load noise.
    torque = np.clip(40.0 - 0.035 * (rpm - 1540.0) + rng.normal(0, 9.0, n_rows), 3.0, 80.0)
    process = air + 10.0 + 0.002 * (rpm - 1540.0) + rng.normal(0, 0.9, n_rows)
    tool_wear = np.floor(rng.uniform(0, 240, n_rows) + 2.0 * mtype)
    vibration = (1.5 + 1.2 * machine_wear[machine] + 0.006 * tool_wear + 0.0006 * (rpm - 1540.0)) * rng.lognormal(
        0.0, 0.18, n_rows
    )
    pressure = rng.normal(6.0, 0.35, n_rows) - 0.4 * (rng.random(n_rows) < 0.05)  # occasional leak

    # The hidden failure rule: soft versions of the AI4I failure modes plus
    # vibration and pressure faults, then Bernoulli noise.
    power_w = torque * rpm * 2 * np.pi / 60.0
    limit = np.asarray([OVERSTRAIN_LIMIT[t] for t in MACHINE_TYPES])[mtype]
    logit = (
        FAILURE_BASE_LOGIT
        + 3.0 * _sigmoid((8.6 - (process - air)) / 0.4) * _sigmoid((1380.0 - rpm) / 40.0)
        + 3.0 * _sigmoid((3500.0 - power_w) / 250.0)
        + 3.0 * _sigmoid((power_w - 9000.0) / 250.0)
        + 3.0 * _sigmoid((tool_wear * torque - limit) / 600.0)
        + 1.5 * _sigmoid((tool_wear - 200.0) / 8.0)
        + 1.0 * (vibration - 3.0)
        + 1.5 * np.clip(5.4 - pressure, 0.0, None)
    )
    failed = rng.random(n_rows) < _sigmoid(logit)

    # All floats live in one preallocated (columns x rows) block that becomes
    # the frame's single float block without a copy: at 5M rows x 30 features
    # pandas' usual consolidation would otherwise double the peak memory.
    names = [*SENSOR_COLUMNS, *(f"aux_sensor_{i:02d}" for i in range(1, n_extra_features + 1))]
    block = np.empty((len(names), n_rows))
    decimals = (2, 2, 0, 2, 0, 3, 3)
    for row, values, digits in zip(
        block[: len(SENSOR_COLUMNS)],
        (air, process, rpm, torque, tool_wear, vibration, pressure),
        decimals,
        strict=True,
    ):
        np.round(values, digits, out=row)
    del air, process, rpm, torque, tool_wear, vibration, pressure, power_w, logit
    _fill_extra_sensors(block, n_core=len(SENSOR_COLUMNS), rng=rng)

    frame = pd.DataFrame(block.T, columns=names, copy=False)
    leading = {
        "reading_id": np.arange(1, n_rows + 1, dtype=np.int64),
        "event_date": dates.astype("datetime64[s]"),
        "machine_id": _labels([f"M-{i:03d}" for i in range(1, n_machines + 1)], machine),
        "line_id": _labels([f"line_{i}" for i in range(1, N_LINES + 1)], line),
        "machine_type": _labels(MACHINE_TYPES, mtype),
        "shift": _labels(SHIFTS, shift),
    }
    for position, (name, values) in enumerate(leading.items()):
        frame.insert(position, name, values)
    frame["machine_failure"] = _labels((LABEL_NEGATIVE, LABEL_POSITIVE), failed.astype(np.int8))
    return frame


def _labels(names: tuple[str, ...] | list[str], codes: np.ndarray) -> pd.api.extensions.ExtensionArray:
    """Map integer codes to string labels without building millions of Python strings."""
    return pd.array(list(names), dtype="str").take(codes)


def _fill_extra_sensors(block: np.ndarray, *, n_core: int, rng: np.random.Generator) -> None:
    """Fill rows ``n_core:`` of ``block`` with auxiliary sensors, in place.

    Odd-numbered ones mix the standardised core sensors (correlated, weakly
    informative); even-numbered ones are pure noise.
    """
    core = block[:n_core]
    mean, std = core.mean(axis=1), core.std(axis=1)
    for i, row in enumerate(block[n_core:], start=1):
        rng.standard_normal(out=row)
        if i % 2:
            mix = rng.normal(0.0, 1.0, n_core)
            weights = mix / np.linalg.norm(mix) / std
            np.multiply(row, 0.7, out=row)
            np.add(row, weights @ core - weights @ mean, out=row)
        np.multiply(row, 2.0, out=row)
        np.add(row, 10.0, out=row)
        np.round(row, 4, out=row)
