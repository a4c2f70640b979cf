"""Nightly retraining pipelines per industry vertical.

Every stage is plain, typed Python (no Airflow imports here): the DAGs in
``dags/``, the CLI (``python -m pipelines``) and ``dvc repro`` all call the
functions in `pipelines.stages`.
"""
