"""The Airflow glue, in one place: DAG factory, callbacks, notifiers, local runner.

`pipelines` core modules never import Airflow; everything that does lives here.
Importing this package itself imports nothing from Airflow, so helpers such as
`pipelines.orchestration.dag_files` stay usable (and fast) without it.
"""
