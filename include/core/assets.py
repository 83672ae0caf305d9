"""Airflow Assets that chain the phases; names come from `names` so DAGs share one identity."""
from __future__ import annotations

from airflow.sdk import Asset

from include.core import names

DATASET_ASSET = Asset(name=names.ASSET_DATASET, uri=f"planner://{names.ASSET_DATASET}")
MODEL_ARTIFACTS_ASSET = Asset(
    name=names.ASSET_MODEL_ARTIFACTS, uri=f"planner://{names.ASSET_MODEL_ARTIFACTS}"
)
REGISTERED_MODEL_ASSET = Asset(
    name=names.ASSET_REGISTERED_MODEL, uri=f"planner://{names.ASSET_REGISTERED_MODEL}"
)
OFFLINE_EVAL_ASSET = Asset(name=names.ASSET_OFFLINE_EVAL, uri=f"planner://{names.ASSET_OFFLINE_EVAL}")
