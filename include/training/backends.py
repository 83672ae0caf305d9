"""What the training DAG hands to each backend, as plain data (rendered and asserted on in
tests; no cluster or workspace needed to check it)."""
from __future__ import annotations

from datetime import UTC, datetime

from include.core import names, storage
from include.core.config import TrainingSettings

BACKENDS = ("kubernetes", "databricks", "local")


def training_run_id(when: datetime) -> str:
    """`planner_acceptance-vYYYYMMDD_HHMMSS` from the DAG run's time: a retry of the same run gets the same id."""
    return when.astimezone(UTC).strftime(names.TRAINING_RUN_ID_FORMAT)


# The trainer's options for GPU scale and resumption, with planner-train's own defaults (DAG Params of the same names).
SCALE_DEFAULTS = {"mixed_precision": "auto", "gradient_accumulation_steps": 1, "gradient_checkpointing": False,
                  "early_stopping_patience": 0, "checkpoint_steps": 0, "keep_checkpoints": False}


def trainer_options(dataset_uri: str, output_root: str, run_id: str, params: dict,
                    airflow: dict | None = None, checkpoint_root: str = "") -> dict[str, str]:
    """planner-train's options as {name: value} (flags as 'true'/'false'). `airflow`: the training DAG
    run's `{dag_id, run_id}`, passed as `--airflow-dag-id` / `--airflow-run-id` (recorded in the manifest
    and the MLflow run, for the lineage); omitted when not given. `checkpoint_root`: where the
    checkpoints go (`--checkpoint-root`), the trainer's default when empty."""
    options = {
        "dataset-uri": dataset_uri, "output-root": output_root, "training-run-id": run_id,
        "base-model": str(params["base_model"]), "epochs": str(params["epochs"]),
        "learning-rate": str(params["learning_rate"]), "batch-size": str(params["batch_size"]),
        "seed": str(params["seed"]), "max-rows": str(params["max_rows"]),
        "holdout-days": str(params["holdout_days"]), "lora": "true" if params["lora"] else "false",
    }
    for param, default in SCALE_DEFAULTS.items():
        value = params.get(param, default)
        options[param.replace("_", "-")] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    if checkpoint_root:
        options["checkpoint-root"] = checkpoint_root
    for key in ("dag_id", "run_id"):
        if (airflow or {}).get(key):
            options[f"airflow-{key.replace('_', '-')}"] = str(airflow[key])
    return options


def trainer_argv(options: dict[str, str]) -> list[str]:
    argv = []
    for name, value in options.items():
        if value in ("true", "false"):
            argv.append(f"--{name}" if value == "true" else f"--no-{name}")
        else:
            argv += [f"--{name}", value]
    return argv


def databricks_argv(named_parameters: dict[str, str]) -> list[str]:
    """The argv a python_wheel_task's entry point gets from named_parameters: `--key=value` each, in
    order (flags as `--lora=false`), so tests can run the console script exactly as Databricks does."""
    return [f"--{name}={value}" for name, value in named_parameters.items()]


def pick_dataset_version(param_version: str | None, triggering_versions: list[str], root: str | None = None) -> str:
    """The Param wins, then the triggering Asset event's version, then the newest complete one."""
    if param_version:
        return param_version
    if triggering_versions:
        return triggering_versions[-1]
    newest = storage.newest_complete_child(storage.datasets_root(root))
    if newest is None:
        raise ValueError(f"no complete dataset version under {storage.datasets_root(root)}: run planner_dataset first")
    return newest


LOOPBACK_HOSTS = ("localhost", "localhost.", "::1", "0.0.0.0")


def _local_reason(uri: str) -> str | None:
    """Why `uri` only exists on this machine (a path, file:, sqlite:, memory:, a loopback host), else None."""
    from urllib.parse import urlsplit

    if uri == "databricks" or uri.startswith(("databricks://", "databricks-uc")):
        return None  # MLflow's name for the workspace's own tracking server
    parts = urlsplit(uri)
    if not parts.scheme:
        return "is a local path"
    if parts.scheme in ("file", "sqlite", "memory"):
        return f"is a {parts.scheme}: URI on this machine"
    host = parts.hostname or ""
    if host in LOOPBACK_HOSTS or host.startswith("127."):
        return "names a loopback host (the job's own container, not this machine)"
    return None


def remote_backend_problems(backend: str, storage_root: str, tracking_uri: str) -> list[str]:
    """Every reason a remote backend cannot work with these settings; empty when it can.

    A pod or a Databricks job runs where this machine's disk and loopback do not exist: a local
    storage root fails it at once for want of the dataset, a local tracking URI lets it train
    for hours and log its run into a file that dies with it. The local backend is never refused.
    """
    if backend == "local":
        return []
    problems = []
    if reason := _local_reason(storage_root):
        problems.append(f"the storage root {storage_root!r} (PLANNER_STORAGE_ROOT) {reason}: the {backend} job "
                        "cannot read the dataset or write the model there; use object storage (s3://...)")
    if reason := _local_reason(tracking_uri):
        problems.append(f"the MLflow tracking URI {tracking_uri!r} (MLFLOW_TRACKING_URI) {reason}: the {backend} "
                        "job cannot log its run where registration looks for it; use a tracking server (https://...)")
    return problems


def stale_dataset_reason(chosen: str, newest_complete: str | None) -> str | None:
    """Why a version chosen from Asset events must not be trained on: a newer complete one exists,
    and a model trained on the older data would become the challenger over the newer one's."""
    if newest_complete and chosen < newest_complete:
        return (f"dataset {chosen} is older than the newest complete dataset {newest_complete}: not training on "
                "it, so it cannot displace a newer challenger (trigger with dataset_version to train on it anyway)")
    return None


TRAINER_ENTRY_POINT = "planner-train"
LAUNCHER_ENTRY_POINT = "planner-train-ddp"  # include/training/launch.py: torch's elastic launcher, exit codes kept


def pod_command(gpu_count: int) -> list[str]:
    """The pod's entry point: planner-train itself on one GPU (or none); on several, planner-train-ddp
    with one process per GPU (DDP; rank 0 logs and publishes). Not torchrun itself: it turns a worker's
    exit 2 (bad input, not retried) or 3 (busy, retried) into 1; the launcher keeps them."""
    if gpu_count > 1:
        return [LAUNCHER_ENTRY_POINT, f"--nproc-per-node={gpu_count}", "--"]
    return [TRAINER_ENTRY_POINT]


SHM_VOLUME = "dshm"
_PROCESSES = "[params.gpu_count, 1] | max"  # one training process per GPU, one on a CPU-only pod


def pod_memory(base_gib: int, per_gpu_gib: int) -> str:
    """The pod's memory as a template of the run's gpu_count: a base (/dev/shm, rank 0's uploads)
    plus one share per training process."""
    return f"{{{{ {base_gib} + {per_gpu_gib} * {_PROCESSES} }}}}Gi"


def kubernetes_pod_kwargs(settings: TrainingSettings) -> dict:
    """KubernetesPodOperator arguments for a GPU training pod (the command and arguments come from XCom)."""
    from kubernetes.client import models as k8s

    gpus = "{{ params.gpu_count }}"
    processes = f"({_PROCESSES})"
    return {
        "name": "planner-train",
        "namespace": settings.namespace,
        "kubernetes_conn_id": settings.kubernetes_conn_id,
        "image": "{{ params.image }}",  # the DAG's Param, defaulting to settings.image
        # NCCL and the processes of a multi-GPU run share memory through /dev/shm; a container's default is 64 MB
        "volumes": [k8s.V1Volume(name=SHM_VOLUME, empty_dir=k8s.V1EmptyDirVolumeSource(
            medium="Memory", size_limit=settings.shm_size))],
        "volume_mounts": [k8s.V1VolumeMount(name=SHM_VOLUME, mount_path="/dev/shm")],
        # Every rank builds its own examples and /dev/shm counts against the limit: memory grows with the GPUs
        "container_resources": k8s.V1ResourceRequirements(
            limits={"nvidia.com/gpu": gpus, "memory": pod_memory(settings.memory_base_gib, settings.memory_per_gpu_gib)},
            requests={"cpu": f"{{{{ {settings.cpu_per_gpu} * {processes} }}}}",
                      "memory": pod_memory(settings.memory_base_gib - 16, settings.memory_per_gpu_gib)}),
        "node_selector": settings.gpu_node_selector,
        "tolerations": [k8s.V1Toleration(key=settings.gpu_toleration_key, operator="Exists", effect="NoSchedule")],
        "env_from": [k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=settings.secret_name))],
        "env_vars": [k8s.V1EnvVar(name="HF_HUB_OFFLINE", value="1"),
                     k8s.V1EnvVar(name="MLFLOW_DISABLE_TELEMETRY", value="true")],
        "labels": {"app": "planner-train", "model": names.REGISTERED_MODEL_NAME},
        "pool": settings.gpu_pool,
        "reattach_on_restart": True,
        "on_finish_action": "delete_succeeded_pod",
        "get_logs": True,
        "startup_timeout_seconds": 900,
        "deferrable": settings.deferrable,
    }


DATABRICKS_TOKEN_MAX_CHARS = 64  # runs/submit rejects a longer idempotency_token


def databricks_idempotency_token(run_id: str) -> str:
    """One token per Airflow try: Databricks answers a submit carrying a known token with that token's
    run, so a token per training run would hand a retry the run that just failed, while a repeated
    submit within the try (the hook retrying a timed-out request) still gets the one it started.

    `run_id` is a value or a Jinja template (the operator's `json` is a templated field).
    """
    return f"{run_id}-try{{{{ ti.try_number }}}}"


def databricks_run_json(settings: TrainingSettings, options, run_id: str) -> dict:
    """runs/submit payload: the same wheel on a GPU job cluster, through planner-train-ddp, which
    starts one training process per GPU of the node (planner-train in-process on a one-GPU node)
    and keeps planner-train's exit codes; named_parameters are planner-train's options.

    `options` may be a value or an XCom reference, `run_id` a value or a Jinja template; both are
    resolved when the operator renders its templates, per try.
    """
    return {
        "run_name": "planner-train",
        "idempotency_token": databricks_idempotency_token(run_id),
        "tasks": [{
            "task_key": "planner_train",
            "python_wheel_task": {"package_name": "planner_trainer", "entry_point": LAUNCHER_ENTRY_POINT,
                                  "named_parameters": options},
            "new_cluster": settings.databricks_cluster,
            "libraries": [{"whl": settings.trainer_wheel}],
        }],
    }
