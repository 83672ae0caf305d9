"""Benchmarks (`python -m bench.<name>`): each prints ratios against a baseline measured in the same run."""
# Not parsed by Airflow: what runs from here stays off model hubs and telemetry from the start.
from include.core.config import apply_offline_env

apply_offline_env()
