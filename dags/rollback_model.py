# The manual one-step rollback for every vertical (trigger it from the Airflow UI).
from pipelines.orchestration.rollback_dag import build_rollback_dag

dag = build_rollback_dag()
