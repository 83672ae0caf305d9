"""
### planner_training: train the acceptance classifier on the GPU (or Databricks, or locally)

Runs when `planner_dataset` publishes a version (the `planner.dataset` Asset, so weekly) and
from the trigger form. The same `planner-train` entry point (the `planner-trainer` wheel) runs
on every backend:

| backend | how |
|---|---|
| `kubernetes` | `KubernetesPodOperator`: the training image on a GPU node pool (`nvidia.com/gpu` limit, node selector, toleration), MLflow/S3 settings from a Kubernetes Secret, pool `gpu_training` bounding concurrent GPU jobs, reattaches after a scheduler restart, deletes succeeded pods and keeps failed ones |
| `databricks` | `DatabricksSubmitRunOperator`: a `python_wheel_task` (`planner-train-ddp`: one process per GPU of the node) on a GPU job cluster; its idempotency token is the training run id and the try number, so a retry after a failed run submits a new one |
| `local` | the console script as a subprocess (the embedded default and CI) |

A remote backend (`kubernetes`, `databricks`) is refused in `resolve_inputs`, with every
reason and before anything is submitted, while the storage root or the MLflow tracking URI is
local (a path, `file:`, `sqlite:`, a loopback host): the job runs where this machine's disk
does not exist.

When several dataset events are queued for one run, it trains on the newest version and
records each other event with its reason (task log and XCom `skipped_events` of
`resolve_inputs`). A version chosen from events that is older than the newest complete dataset
(a rebuild of an old week) is not trained on: `resolve_inputs` skips with the reason and so
does the rest of the run, so it never displaces a newer challenger. Give `dataset_version` to
train on any version.

The training run id is `planner_acceptance-vYYYYMMDD_HHMMSS` from this DAG run, so a retry
reuses it, and a run whose artifacts are already complete finishes without training again.
The trainer checkpoints after every epoch (and every `checkpoint_steps`) under
`<storage root>/checkpoints/<training run id>/`: a retry after a preempted pod, a cleared task
or a Databricks repair resumes from the newest complete checkpoint in the same MLflow run. The
published weights are the best validation AUC's epoch (`early_stopping_patience` stops early).
With `gpu_count` > 1 the pod runs `planner-train-ddp` (torch's elastic launcher, keeping
planner-train's exit codes) with one process per GPU (DDP, bf16 where the GPU has it); the
Databricks task runs it too, on every GPU of its node. A second trainer of the same training run
id (a retry while a lost node's pod still runs) finds the first one's lease in the checkpoints
and exits 3 (busy, retried) instead of pruning its checkpoints.
Training uses the dataset's rows accepted before `end_date - holdout_days`; the later days
stay unseen for offline replay. `publish_model_artifacts` checks the model directory is
complete and emits the `planner.model_artifacts` Asset. Registration is not done here: the
registration DAG's sensor takes over.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.databricks.operators.databricks import DatabricksSubmitRunOperator
from airflow.sdk import Param, dag, get_current_context, task

from include.alerts import failure_notifiers
from include.core import names
from include.core.assets import DATASET_ASSET, MODEL_ARTIFACTS_ASSET
from include.core.config import apply_offline_env, settings, training_settings
from include.training.backends import BACKENDS, databricks_run_json, kubernetes_pod_kwargs

DEPLOY = training_settings()
# resolve_inputs' training run id as a Jinja string, to build the per-try Databricks idempotency token
TRAINING_RUN_ID_TEMPLATE = "{{ ti.xcom_pull(task_ids='resolve_inputs', key='training_run_id') }}"


@dag(
    dag_id=names.DAG_TRAINING,
    schedule=[DATASET_ASSET],
    start_date=datetime(2026, 1, 5),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["planner", "training", "gpu"],
    default_args={"owner": "ml-platform", "on_execute_callback": apply_offline_env,
                  "on_failure_callback": failure_notifiers(), "retries": 2,
                  "retry_delay": timedelta(minutes=5)},
    params={
        "backend": Param(DEPLOY.backend, type="string", enum=list(BACKENDS), title="Backend"),
        "dataset_version": Param(None, type=["null", "string"], format="date", title="Dataset version",
                                 description="Empty: the newest triggering dataset event's version (none older "
                                             "than the newest complete one), else the newest complete one."),
        "epochs": Param(3, type="integer", minimum=1, maximum=100),
        "learning_rate": Param(1e-3, type="number", exclusiveMinimum=0, maximum=1),
        "batch_size": Param(64, type="integer", minimum=1, maximum=4096),
        "base_model": Param("tiny", type="string", minLength=1,
                            description="'tiny' (built from a config) or a local Hugging Face checkpoint directory"),
        "lora": Param(False, type="boolean", description="LoRA (r=16, alpha=32) on a checkpoint base"),
        "max_rows": Param(0, type="integer", minimum=0, description="0: all rows"),
        "seed": Param(7, type="integer", minimum=0),
        "holdout_days": Param(settings().holdout_days, type="integer", minimum=0, maximum=60),
        "gpu_count": Param(1, type="integer", minimum=0, maximum=8, title="GPUs (kubernetes)",
                           description="More than one: torchrun starts one training process per GPU (DDP)"),
        "mixed_precision": Param("auto", type="string", enum=["auto", "bf16", "fp32"],
                                 description="auto: bf16 on a GPU that supports it, fp32 on CPU"),
        "gradient_accumulation_steps": Param(1, type="integer", minimum=1, maximum=1024),
        "gradient_checkpointing": Param(False, type="boolean",
                                        description="Recompute activations in backward: less GPU memory, slower"),
        "early_stopping_patience": Param(0, type="integer", minimum=0, maximum=100,
                                         description="Stop after this many epochs without a better val_auc (0: "
                                                     "never); the best epoch's weights are published either way"),
        "checkpoint_steps": Param(0, type="integer", minimum=0,
                                  description="Also checkpoint every N optimizer steps (0: at each epoch end only); "
                                              "a retried or preempted training resumes from the newest checkpoint"),
        "keep_checkpoints": Param(False, type="boolean",
                                  description="Keep the checkpoints once the model is published"),
        "image": Param(DEPLOY.image, type="string", minLength=1, title="Training image (kubernetes)"),
    },
)
def planner_training():
    @task(retries=0)
    def resolve_inputs() -> dict:
        """Refuses a remote backend with local settings before anything is submitted; trains on the
        newest triggering dataset (the others are recorded as skipped), never on one older than the
        newest complete dataset unless the Param names it."""
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from include.core import storage
        from include.core.triggering import choose_event, event_extras, report_skipped
        from include.training.backends import (
            pick_dataset_version,
            pod_command,
            remote_backend_problems,
            stale_dataset_reason,
            trainer_argv,
            trainer_options,
            training_run_id,
        )

        context = get_current_context()
        params = context["params"]
        config = settings()
        problems = remote_backend_problems(params["backend"], config.storage_root, config.mlflow_tracking_uri)
        if problems:
            raise AirflowFailException(f"backend {params['backend']} refused, nothing submitted: "
                                       + "; ".join(problems))
        chosen, skipped = choose_event(event_extras(context.get("triggering_asset_events")), "dataset_version",
                                       label="dataset")
        try:
            version = pick_dataset_version(params["dataset_version"], [chosen["dataset_version"]] if chosen else [])
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from exc
        stale = None
        if chosen and not params["dataset_version"]:
            stale = stale_dataset_reason(version, storage.newest_complete_child(storage.datasets_root()))
        if stale:
            report_skipped(context["ti"], [*skipped, stale])
            raise AirflowSkipException(stale)  # a rebuilt old version is no failure; downstream skips with it
        report_skipped(context["ti"], skipped)
        dataset_uri = storage.dataset_uri(version)
        if not storage.is_complete(dataset_uri):
            raise AirflowFailException(f"dataset {dataset_uri} is not complete (no {names.SUCCESS_MARKER})")
        run_id = training_run_id(context["dag_run"].run_after)
        options = trainer_options(dataset_uri, storage.models_root(), run_id, params,
                                  airflow={"dag_id": context["dag"].dag_id, "run_id": context["run_id"]},
                                  checkpoint_root=storage.checkpoints_root())
        return {"dataset_version": version, "dataset_uri": dataset_uri, "training_run_id": run_id,
                "model_uri": storage.join(storage.models_root(), run_id), "options": options,
                "argv": trainer_argv(options), "command": pod_command(params["gpu_count"])}

    @task.branch(retries=0)
    def choose_backend() -> str:
        return f"train_{get_current_context()['params']['backend']}"

    @task(execution_timeout=timedelta(hours=12))
    def train_local(inputs: dict) -> None:
        import subprocess
        import sys

        from airflow.sdk.exceptions import AirflowFailException

        from include.core.config import PROJECT_ROOT

        result = subprocess.run([sys.executable, "-m", "include.training.cli", *inputs["argv"]], cwd=PROJECT_ROOT)
        if result.returncode == 2:
            raise AirflowFailException("planner-train rejected its input (see the log above); not retrying")
        if result.returncode == 3:  # another live trainer holds the run's checkpoint lease: retried
            raise RuntimeError("planner-train is busy: another trainer of this training run id is still running "
                               "(see the log above); the retry trains, or finds its model published")
        if result.returncode:
            raise RuntimeError(f"planner-train exited with {result.returncode}")

    @task(trigger_rule="none_failed_min_one_success", outlets=[MODEL_ARTIFACTS_ASSET])
    def publish_model_artifacts(inputs: dict) -> dict:
        import json

        from airflow.sdk.exceptions import AirflowFailException

        from include.core import storage
        uri = inputs["model_uri"]
        if not storage.is_complete(uri):
            raise AirflowFailException(f"training finished but {uri} has no {names.SUCCESS_MARKER}")
        manifest = json.loads(storage.read_text(uri, names.MODEL_MANIFEST_FILE))
        extra = {"model_path": uri, "training_run_id": manifest["training_run_id"],
                 "mlflow_run_id": manifest["mlflow_run_id"], "dataset_version": manifest["dataset_version"]}
        get_current_context()["outlet_events"][MODEL_ARTIFACTS_ASSET].extra = extra
        return extra

    inputs = resolve_inputs()
    kubernetes = KubernetesPodOperator(task_id="train_kubernetes", cmds=inputs["command"], arguments=inputs["argv"],
                                       execution_timeout=timedelta(hours=12), **kubernetes_pod_kwargs(DEPLOY))
    databricks = DatabricksSubmitRunOperator(
        task_id="train_databricks", databricks_conn_id=DEPLOY.databricks_conn_id,
        json=databricks_run_json(DEPLOY, inputs["options"], TRAINING_RUN_ID_TEMPLATE),
        execution_timeout=timedelta(hours=12), pool=DEPLOY.gpu_pool)
    branch = choose_backend()
    inputs >> branch >> [kubernetes, databricks, train_local(inputs)] >> publish_model_artifacts(inputs)


planner_training()
