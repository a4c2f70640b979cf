#!/usr/bin/env python3
"""Entrypoint of the Airflow image: build the database URLs from the secrets, then run the command.

Compose pastes variables into strings verbatim, so a password holding ``@ : / # %``
breaks a URL it is pasted into.  Here each URL is built once, with the password
URL-quoted (the warehouse connection is JSON, where it needs no quoting at all).
Anything already set in the environment wins, so a deployment can pass its own URLs.
"""

from __future__ import annotations

import json
import os
import sys
from urllib.parse import quote


def database_env(password: str, host: str = "postgres", user: str = "airflow") -> dict[str, str]:
    def url(database: str) -> str:
        return f"postgresql+psycopg://{quote(user, safe='')}:{quote(password, safe='')}@{host}:5432/{database}"

    warehouse = {"conn_type": "postgres", "host": host, "port": 5432, "login": user, "password": password}
    return {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url("airflow"),
        # psycopg 3 serves Airflow's async engine too (it would otherwise want asyncpg).
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": url("airflow"),
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{url('airflow')}",
        "PIPELINES_REGISTRY_URL": url("registry"),
        "AIRFLOW_CONN_WAREHOUSE_DEFAULT": json.dumps({**warehouse, "schema": "warehouse"}),
    }


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("entrypoint: no command given")
    password = os.environ.get("POSTGRES_PASSWORD")
    if not password:
        sys.exit("entrypoint: POSTGRES_PASSWORD is not set (see .env.example)")
    for key, value in database_env(password).items():
        os.environ.setdefault(key, value)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
