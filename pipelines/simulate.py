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
            f"{n_rows} rows cannot cover {n_days} days with at least one row each; "
            "shorten the span or supply more rows"
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
    vibration = (
        1.5 + 1.2 * machine_wear[machine] + 0.006 * tool_wear + 0.0006 * (rpm - 1540.0)
    ) * rng.lognormal(0.0, 0.18, n_rows)
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

    frame = pd.DataFrame(
        {
            "reading_id": np.arange(1, n_rows + 1, dtype=np.int64),
            "event_date": dates.astype("datetime64[s]"),
            "machine_id": np.char.mod("M-%03d", machine + 1),
            "line_id": np.char.mod("line_%d", line + 1),
            "machine_type": np.asarray(MACHINE_TYPES)[mtype],
            "shift": np.asarray(SHIFTS)[shift],
            "air_temperature_k": air.round(2),
            "process_temperature_k": process.round(2),
            "rotational_speed_rpm": rpm.round(0),
            "torque_nm": torque.round(2),
            "tool_wear_min": tool_wear,
            "vibration_mm_s": vibration.round(3),
            "hydraulic_pressure_bar": pressure.round(3),
        }
    )
    if n_extra_features:
        frame = pd.concat([frame, _extra_sensors(frame, n_extra_features, rng)], axis=1)
    frame["machine_failure"] = np.where(failed, LABEL_POSITIVE, LABEL_NEGATIVE)
    for column in ("machine_id", "line_id", "machine_type", "shift", "machine_failure"):
        frame[column] = frame[column].astype("str")
    return frame


SENSOR_COLUMNS = (
    "air_temperature_k",
    "process_temperature_k",
    "rotational_speed_rpm",
    "torque_nm",
    "tool_wear_min",
    "vibration_mm_s",
    "hydraulic_pressure_bar",
)


def _extra_sensors(frame: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Auxiliary sensor columns: correlated mixtures (odd) and pure noise (even)."""
    core = frame.loc[:, SENSOR_COLUMNS].to_numpy(dtype=np.float64)
    core = (core - core.mean(axis=0)) / core.std(axis=0)
    columns: dict[str, np.ndarray] = {}
    for i in range(1, n + 1):
        noise = rng.normal(0.0, 1.0, len(frame))
        if i % 2:
            mix = rng.normal(0.0, 1.0, core.shape[1])
            values = core @ (mix / np.linalg.norm(mix)) + 0.7 * noise
        else:
            values = noise
        columns[f"aux_sensor_{i:02d}"] = (10.0 + 2.0 * values).round(4)
    return pd.DataFrame(columns, index=frame.index)
