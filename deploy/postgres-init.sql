-- Databases next to Airflow's own: the model registry and the demo warehouse.
CREATE DATABASE registry OWNER airflow;
CREATE DATABASE warehouse OWNER airflow;
