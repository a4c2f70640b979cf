"""Imported once by each Celery worker before it forks (`celery_config`): what the stages import lazily.

Never imported by a DAG file or the scheduler: parsing a DAG stays free of these (ARCHITECTURE's
parse budget), and only a worker that runs tasks pays for them, once.
"""

from __future__ import annotations

import gc

import dvc.repo  # noqa: F401  # snapshot
import great_expectations  # noqa: F401  # validate
import optuna  # noqa: F401  # train (sweeps)
import pandas  # noqa: F401
import pyarrow.parquet  # noqa: F401
import pytorch_lightning  # noqa: F401  # train
import sklearn.metrics  # noqa: F401  # evaluate, gate
import torch  # noqa: F401

import pipelines.stages  # noqa: F401

# As Airflow's own preload does: keep these objects out of the collector's generations, so a
# collection in a forked task does not touch (and copy) the pages the worker's tasks share.
gc.freeze()
