"""The environment every local Airflow command of this project runs with (one place)."""
from __future__ import annotations

import os

from include.core.config import OFFLINE_ENV, PROJECT_ROOT
from include.core.local_postgres import airflow_connection_json


def airflow_env(events_dsn: str | None = None, home: str | None = None) -> dict[str, str]:
    """This process's environment plus what every Airflow process of the project needs; without
    `events_dsn`, the `events_db` connection stays as the environment has it."""
    env = dict(os.environ)
    env.update(OFFLINE_ENV)
    env.update({
        "AIRFLOW_HOME": home or str(PROJECT_ROOT / "var" / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": env.get("AIRFLOW__CORE__UNIT_TEST_MODE", "False"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")])),
    })
    if events_dsn is not None:
        env["AIRFLOW_CONN_EVENTS_DB"] = airflow_connection_json(events_dsn)
    return env
