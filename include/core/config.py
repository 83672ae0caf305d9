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
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
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
    extract_work_mem: str      # PostgreSQL work_mem of the extraction's sessions (its sorts and CTEs stay in memory)
    dataset_schedule: str | None  # cron of planner_dataset (default: Monday 00:00 UTC + the lateness allowance);
    #                               None: only triggered (from the UI, REST or make lifecycle)
    dataset_lateness_hours: int  # planner_dataset waits this long after a window's Monday 00:00 UTC end (0..72)


def _lateness_hours() -> int:
    hours = int(_env("PLANNER_DATASET_LATENESS_HOURS", "6"))
    if not 0 <= hours <= 72:
        raise ValueError(f"PLANNER_DATASET_LATENESS_HOURS must be 0..72, got {hours}")
    return hours


def settings() -> Settings:
    """Current settings: env var if set, else the embedded local default."""
    var = PROJECT_ROOT / "var"
    lateness = _lateness_hours()
    weekly = f"0 {lateness % 24} * * {1 + lateness // 24}"  # Monday 00:00 UTC + the allowance (72 h: Thursday)
    return Settings(
        storage_root=_env("PLANNER_STORAGE_ROOT", str(var / "storage")),
        mlflow_tracking_uri=_env("MLFLOW_TRACKING_URI", f"sqlite:///{var / 'mlflow' / 'mlflow.db'}"),
        mlflow_artifact_root=_env("PLANNER_MLFLOW_ARTIFACT_ROOT", str(var / "mlflow" / "artifacts")),
        events_dsn=_env("PLANNER_EVENTS_DSN", "postgresql://postgres@127.0.0.1:5432/planner_events"),
        lookback_days=int(_env("PLANNER_LOOKBACK_DAYS", "28")),
        holdout_days=int(_env("PLANNER_HOLDOUT_DAYS", "7")),
        max_bad_share=float(_env("PLANNER_MAX_BAD_SHARE", "0.05")),
        extract_parallelism=max(1, int(_env("PLANNER_EXTRACT_PARALLELISM", "2"))),
        extract_work_mem=_env("PLANNER_EXTRACT_WORK_MEM", "256MB"),
        dataset_schedule=None if _env("PLANNER_DATASET_SCHEDULE", weekly).lower() in ("none", "off", "manual")
        else _env("PLANNER_DATASET_SCHEDULE", weekly),
        dataset_lateness_hours=lateness,
    )


@dataclass(frozen=True)
class TrainingSettings:
    """Where and how training runs; production sets these in the Airflow deployment's env."""
    backend: str               # kubernetes | databricks | local
    image: str
    namespace: str
    kubernetes_conn_id: str
    gpu_node_selector: dict
    gpu_toleration_key: str
    secret_name: str           # Kubernetes Secret with MLFLOW_TRACKING_URI, AWS_* ... (never values in the DAG)
    gpu_pool: str              # Airflow pool bounding concurrent GPU jobs
    deferrable: bool
    databricks_conn_id: str
    databricks_cluster: dict
    trainer_wheel: str         # where the planner-trainer wheel was uploaded (a Volume or DBFS path)
    shm_size: str              # the pod's memory-backed /dev/shm (NCCL, multi-GPU runs)


def training_settings() -> TrainingSettings:
    import json

    return TrainingSettings(
        backend=_env("PLANNER_TRAINING_BACKEND", "local"),
        image=_env("PLANNER_TRAINING_IMAGE", "registry.example.com/ml/planner-trainer:0.1.0"),
        namespace=_env("PLANNER_K8S_NAMESPACE", "ml-training"),
        kubernetes_conn_id=_env("PLANNER_K8S_CONN_ID", "kubernetes_default"),
        gpu_node_selector=json.loads(_env("PLANNER_GPU_NODE_SELECTOR", '{"workload": "gpu-training"}')),
        gpu_toleration_key=_env("PLANNER_GPU_TOLERATION_KEY", "nvidia.com/gpu"),
        secret_name=_env("PLANNER_TRAINING_SECRET", "planner-training-env"),
        gpu_pool=_env("PLANNER_GPU_POOL", "gpu_training"),
        deferrable=_env("PLANNER_TRAINING_DEFERRABLE", "false").lower() == "true",
        databricks_conn_id=_env("PLANNER_DATABRICKS_CONN_ID", "databricks_default"),
        databricks_cluster=json.loads(_env("PLANNER_DATABRICKS_CLUSTER", json.dumps({
            "spark_version": "16.4.x-gpu-ml-scala2.12", "node_type_id": "g5.xlarge", "num_workers": 0,
            "spark_conf": {"spark.master": "local[*]", "spark.databricks.cluster.profile": "singleNode"},
            "custom_tags": {"ResourceClass": "SingleNode", "project": "planner"}}))),
        trainer_wheel=_env("PLANNER_TRAINER_WHEEL",
                           "/Volumes/ml/planner/wheels/planner_trainer-0.1.0-py3-none-any.whl"),
        shm_size=_env("PLANNER_TRAINING_SHM_SIZE", "16Gi"),
    )


@dataclass(frozen=True)
class RegistrationSettings:
    """How long and how registration waits for a model directory, and how it retries the registry."""
    poke_interval_s: int       # the sensor's check interval
    wait_timeout_s: int        # give up waiting for the published marker after this long
    register_retries: int      # Airflow retries of register_model (an unreachable registry)
    register_retry_delay_s: int
    wait_mode: str = "reschedule"   # reschedule (worker slot freed between pokes) | deferrable (the triggerer)
    aws_conn_id: str | None = "aws_default"  # S3KeySensor's connection on an s3:// root; None: boto3's own chain


def registration_settings() -> RegistrationSettings:
    mode = _env("PLANNER_ARTIFACT_WAIT_MODE", "reschedule").lower()
    if mode not in ("reschedule", "deferrable"):
        raise ValueError(f"PLANNER_ARTIFACT_WAIT_MODE must be reschedule or deferrable, got {mode!r}")
    conn_id = _env("PLANNER_AWS_CONN_ID", "aws_default")
    return RegistrationSettings(
        poke_interval_s=int(_env("PLANNER_ARTIFACT_POKE_INTERVAL_S", "60")),
        wait_timeout_s=int(_env("PLANNER_ARTIFACT_WAIT_TIMEOUT_S", str(6 * 3600))),
        register_retries=int(_env("PLANNER_REGISTER_RETRIES", "3")),
        register_retry_delay_s=int(_env("PLANNER_REGISTER_RETRY_DELAY_S", "60")),
        wait_mode=mode,
        aws_conn_id=None if conn_id.lower() == "none" else conn_id,
    )
