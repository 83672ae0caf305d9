"""Configuration in one place: local defaults, environment overrides for production.

Every value is read when asked for (not at import) so tests and tasks can change the
environment; nothing here touches the network or a database.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Nothing the project runs may reach a model hub or a telemetry endpoint.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "GX_ANALYTICS_ENABLED": "false",
}
for _key, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_key, _value)


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


@dataclass(frozen=True)
class Settings:
    storage_root: str
    mlflow_tracking_uri: str
    mlflow_artifact_root: str
    events_dsn: str
    lookback_days: int
    holdout_days: int
    max_bad_share: float
    extract_parallelism: int


def settings() -> Settings:
    """Current settings: env var if set, else the embedded local default."""
    var = PROJECT_ROOT / "var"
    return Settings(
        storage_root=_env("PLANNER_STORAGE_ROOT", str(var / "storage")),
        mlflow_tracking_uri=_env("MLFLOW_TRACKING_URI", f"sqlite:///{var / 'mlflow' / 'mlflow.db'}"),
        mlflow_artifact_root=_env("PLANNER_MLFLOW_ARTIFACT_ROOT", str(var / "mlflow" / "artifacts")),
        events_dsn=_env("PLANNER_EVENTS_DSN", "postgresql://postgres@127.0.0.1:5432/planner_events"),
        lookback_days=int(_env("PLANNER_LOOKBACK_DAYS", "28")),
        holdout_days=int(_env("PLANNER_HOLDOUT_DAYS", "7")),
        max_bad_share=float(_env("PLANNER_MAX_BAD_SHARE", "0.05")),
        extract_parallelism=max(1, int(_env("PLANNER_EXTRACT_PARALLELISM", "2"))),
    )
