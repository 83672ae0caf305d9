"""Configuration in one place: local defaults, environment overrides for production.

Every value is read when asked for (not at import) so tests and tasks can change the
environment; nothing here touches the network or a database.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Nothing the project runs may reach a model hub or a telemetry endpoint.  Set where the project runs
# things (its tasks, through `on_execute_callback`; its CLIs and scripts; the services it starts), never
# as a side effect of importing this module: Airflow parses the DAG files for every team's DAGs.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def apply_offline_env(*_context) -> None:
    """Keep this process off model hubs and telemetry (an explicit setting wins). Also each DAG's
    `on_execute_callback`: it runs in the task's process before the task, and before any heavy import."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


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
    online_eval_schedule: str | None = "0 7 * * *"  # cron of planner_online_eval (daily looks at a running
    #                                                  canary); None: only triggered (make lifecycle triggers it)
    dataset_batch_rows: int = 10_000  # rows per batch (at most one row group) wherever the dataset phase reads a
    #                                   table back (assembly, quarantine, validation, summary, log_dataset): its
    #                                   memory follows this, not the window


def _lateness_hours() -> int:
    hours = int(_env("PLANNER_DATASET_LATENESS_HOURS", "6"))
    if not 0 <= hours <= 72:
        raise ValueError(f"PLANNER_DATASET_LATENESS_HOURS must be 0..72, got {hours}")
    return hours


def _batch_rows() -> int:
    rows = int(_env("PLANNER_DATASET_BATCH_ROWS", "10000"))
    if rows < 1:
        raise ValueError(f"PLANNER_DATASET_BATCH_ROWS must be a positive number of rows, got {rows}")
    return rows


def _schedule(name: str, default: str) -> str | None:
    """A cron from the environment; `none` (or off, manual): the DAG is only triggered."""
    cron = _env(name, default)
    return None if cron.strip().lower() in ("none", "off", "manual") else cron


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
        dataset_schedule=_schedule("PLANNER_DATASET_SCHEDULE", weekly),
        dataset_lateness_hours=lateness,
        online_eval_schedule=_schedule("PLANNER_ONLINE_EVAL_SCHEDULE", "0 7 * * *"),
        dataset_batch_rows=_batch_rows(),
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
    memory_base_gib: int       # the pod's memory limit: this base (it holds /dev/shm) ...
    memory_per_gpu_gib: int    # ... plus this per training process (each rank builds its examples)
    cpu_per_gpu: int           # CPU request per training process


def _at_least(value: int, minimum: int, what: str) -> int:
    if value < minimum:
        raise ValueError(f"{what} must be at least {minimum}, got {value}")
    return value


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
        memory_base_gib=_at_least(int(_env("PLANNER_TRAINING_MEMORY_BASE_GIB", "36")), 20,
                                  "PLANNER_TRAINING_MEMORY_BASE_GIB (it holds /dev/shm; the request is 16 GiB less)"),
        memory_per_gpu_gib=int(_env("PLANNER_TRAINING_MEMORY_PER_GPU_GIB", "12")),
        cpu_per_gpu=int(_env("PLANNER_TRAINING_CPU_PER_GPU", "6")),
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


# ------------------------------------------------------------------------------------------- the MLflow UI, alerts

MLFLOW_UI_LOCAL_DEFAULT = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default (scripts print the command)


def mlflow_ui_url() -> str | None:
    """The MLflow UI's address for links (the models page, the tasks' extra links): PLANNER_MLFLOW_UI_URL,
    else the tracking server when it is one (http/https), else None (a local store: no UI is known)."""
    explicit = _env("PLANNER_MLFLOW_UI_URL", "")
    if explicit:
        return explicit.rstrip("/")
    uri = settings().mlflow_tracking_uri
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else None


@dataclass(frozen=True)
class AlertSettings:
    """Who is told when the lifecycle needs a person (include/alerts/). Off unless recipients are set."""
    email_to: tuple[str, ...]      # PLANNER_ALERT_EMAIL_TO, comma-separated; empty: no e-mail alerts
    email_from: str | None         # PLANNER_ALERT_EMAIL_FROM; empty: the SMTP connection's from_email
    smtp_conn_id: str              # PLANNER_ALERT_SMTP_CONN_ID (an Airflow connection, e.g. AIRFLOW_CONN_SMTP_ALERTS)
    airflow_ui_url: str            # PLANNER_AIRFLOW_UI_URL: where the messages' Airflow links point
    chain_deadline_hours: int      # PLANNER_CHAIN_DEADLINE_HOURS: promotion decided by the dataset's Monday + this
    drift_alerts: bool             # PLANNER_ALERT_ON_DRIFT (default true): alert when drift is over its threshold

    @property
    def enabled(self) -> bool:
        return bool(self.email_to)


def alert_settings() -> AlertSettings:
    hours = int(_env("PLANNER_CHAIN_DEADLINE_HOURS", "30"))
    if not 1 <= hours <= 24 * 7:
        raise ValueError(f"PLANNER_CHAIN_DEADLINE_HOURS must be 1..168, got {hours}")
    return AlertSettings(
        email_to=tuple(a.strip() for a in _env("PLANNER_ALERT_EMAIL_TO", "").split(",") if a.strip()),
        email_from=_env("PLANNER_ALERT_EMAIL_FROM", "") or None,
        smtp_conn_id=_env("PLANNER_ALERT_SMTP_CONN_ID", "smtp_default"),
        airflow_ui_url=_env("PLANNER_AIRFLOW_UI_URL", f"http://127.0.0.1:{_env('AIRFLOW_PORT', '8080')}").rstrip("/"),
        chain_deadline_hours=hours,
        drift_alerts=_env("PLANNER_ALERT_ON_DRIFT", "true").lower() not in ("false", "0", "no", "off"),
    )
