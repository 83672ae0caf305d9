"""Developer entry points behind the Makefile (not part of the DAG package)."""

# Not parsed by Airflow: what runs from here stays off model hubs and telemetry from the start.
from include.core.config import apply_offline_env  # noqa: E402  (after the docstring)

apply_offline_env()
