"""`make airflow`: the Airflow UI for people, on the same services and home as `make lifecycle`.

Starts api-server, scheduler, dag-processor and triggerer on loopback (LocalExecutor), prints
the URL and the login, and runs until Ctrl-C. The DAGs show their docs, tags, Params forms and
the Asset graph; the runs `make lifecycle` made are there with their logs.
"""
from __future__ import annotations

import os
import time

from include.core.config import settings
from include.core.local_postgres import ensure_database
from scripts.airflow_services import AirflowServices, stop_on_termination
from scripts.lifecycle import CHAIN, SERVICES_HOME, services_env


def main() -> int:
    port = int(os.environ.get("AIRFLOW_PORT", "8080"))
    dsn = ensure_database(settings().events_dsn)
    services = AirflowServices(SERVICES_HOME, services_env(dsn), port=port)
    print(f"starting Airflow in {SERVICES_HOME} ...", flush=True)
    try:
        services.start()
        for dag_id in CHAIN:
            services.wait_for_dag(dag_id)
        print(f"\nAirflow UI: {services.url}  (login admin / admin)")
        print(f"MLflow UI:  .venv/bin/mlflow ui --backend-store-uri {settings().mlflow_tracking_uri}")
        print("Ctrl-C stops the services.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        services.stop()
    return 0


if __name__ == "__main__":
    with stop_on_termination():  # SIGTERM or SIGHUP stop the services, as Ctrl-C does
        raise SystemExit(main())
