"""planner_training up to each boundary: the GPU pod rendered offline, the Databricks payload as
it would be submitted, and a real local training run through the DAG."""
from __future__ import annotations

from pathlib import Path

import pytest

from include.core import names, storage
from include.core.config import training_settings
from include.training import cli
from include.training.backends import (
    DATABRICKS_TOKEN_MAX_CHARS,
    databricks_argv,
    kubernetes_pod_kwargs,
    pick_dataset_version,
    pod_command,
    trainer_argv,
    trainer_options,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PARAMS = {"base_model": "tiny", "epochs": 1, "learning_rate": 0.001, "batch_size": 32, "seed": 7, "max_rows": 300,
          "holdout_days": 7, "lora": False}
RUN_ID = "planner_acceptance-v20261123_000000"
OPTIONS = trainer_options("/data/datasets/planner/2026-11-23", "/data/models/planner_acceptance", RUN_ID, PARAMS)
INPUTS = {"training_run_id": RUN_ID, "options": OPTIONS}  # what train_databricks reads of resolve_inputs


def test_every_backend_gets_the_same_trainer_options():
    args = cli.parse_args(trainer_argv(OPTIONS))
    assert (args.dataset_uri, args.output_root, args.training_run_id) == (
        "/data/datasets/planner/2026-11-23", "/data/models/planner_acceptance", RUN_ID)
    assert (args.epochs, args.learning_rate, args.batch_size, args.max_rows, args.lora) == (1, 0.001, 32, 300, False)
    assert cli.parse_args(trainer_argv({**OPTIONS, "lora": "true"})).lora is True


def test_the_gpu_pod_renders_with_limits_placement_secret_and_the_console_script(training_dag):
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    settings = training_settings()
    dag_task = training_dag.get_task("train_kubernetes")
    assert dag_task.pool == settings.gpu_pool and dag_task.reattach_on_restart is True
    assert dag_task.on_finish_action.value == "delete_succeeded_pod" and dag_task.get_logs is True
    assert dag_task.execution_timeout.total_seconds() == 12 * 3600

    operator = KubernetesPodOperator(task_id="train_kubernetes", cmds=pod_command(1), arguments=trainer_argv(OPTIONS),
                                     **kubernetes_pod_kwargs(settings))
    operator.render_template_fields({"params": {"gpu_count": 1, "image": "registry.internal/planner-trainer:7"}})
    pod = operator.build_pod_request_obj(dry_run=True)  # offline: no cluster is asked anything

    container = pod.spec.containers[0]
    assert container.image == "registry.internal/planner-trainer:7" and container.command == ["planner-train"]
    assert training_dag.params["image"] == settings.image  # the form defaults to the configured image
    assert container.args == trainer_argv(OPTIONS)
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    assert container.resources.limits["memory"] == "48Gi"
    assert container.resources.requests == {"cpu": "6", "memory": "32Gi"}
    assert pod.spec.node_selector == settings.gpu_node_selector
    assert [(t.key, t.operator, t.effect) for t in pod.spec.tolerations] == [("nvidia.com/gpu", "Exists", "NoSchedule")]
    assert [e.secret_ref.name for e in container.env_from] == [settings.secret_name]
    assert {e.name: e.value for e in container.env}["HF_HUB_OFFLINE"] == "1"
    assert not any(e.name.startswith(("AWS_", "MLFLOW_TRACKING")) for e in container.env), "secrets belong in the Secret"
    assert pod.metadata.namespace == settings.namespace


def test_a_pod_of_four_gpus_runs_one_training_process_per_gpu_with_a_memory_backed_shm(training_dag):
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    settings = training_settings()
    operator = KubernetesPodOperator(task_id="train_kubernetes", cmds=pod_command(4), arguments=trainer_argv(OPTIONS),
                                     **kubernetes_pod_kwargs(settings))
    operator.render_template_fields({"params": {"gpu_count": 4, "image": "registry.internal/planner-trainer:7"}})
    pod = operator.build_pod_request_obj(dry_run=True)

    container = pod.spec.containers[0]
    # planner-train-ddp, not torchrun: torch's elastic launcher, but a worker's exit 2 (bad input) or 3 (busy)
    # stays the pod's exit code (tests/training/test_wheel.py runs this command on two processes)
    assert container.command == ["planner-train-ddp", "--nproc-per-node=4", "--"]
    assert container.args == trainer_argv(OPTIONS)
    assert container.resources.limits["nvidia.com/gpu"] == "4"
    # every rank builds its examples: memory and CPU grow with the processes (/dev/shm is in the base)
    assert container.resources.limits["memory"] == "84Gi"
    assert container.resources.requests == {"cpu": "24", "memory": "68Gi"}
    (shm,) = [v for v in pod.spec.volumes if v.name == "dshm"]
    assert shm.empty_dir.medium == "Memory" and shm.empty_dir.size_limit == settings.shm_size
    assert [(m.name, m.mount_path) for m in container.volume_mounts] == [("dshm", "/dev/shm")]
    # and the DAG hands the pod that command: resolve_inputs' "command" is the operator's cmds
    assert training_dag.get_task("train_kubernetes").cmds.key == "command"


def test_the_scale_params_reach_the_trainer_on_every_backend(training_dag):
    from include.training.backends import SCALE_DEFAULTS, databricks_argv

    for name, default in SCALE_DEFAULTS.items():
        assert training_dag.params[name] == default, name  # the form's defaults are the trainer's
    params = {**PARAMS, "mixed_precision": "bf16", "gradient_accumulation_steps": 4, "gradient_checkpointing": True,
              "early_stopping_patience": 2, "checkpoint_steps": 50, "keep_checkpoints": True}
    options = trainer_options("s3://b/datasets/planner/2026-11-23", "s3://b/models/planner_acceptance", RUN_ID, params,
                              checkpoint_root="s3://b/checkpoints")
    for argv in (trainer_argv(options), databricks_argv(options)):
        args = cli.parse_args(argv)
        assert (args.mixed_precision, args.gradient_accumulation_steps, args.gradient_checkpointing,
                args.early_stopping_patience, args.checkpoint_steps, args.keep_checkpoints,
                args.checkpoint_root) == ("bf16", 4, True, 2, 50, True, "s3://b/checkpoints")


def test_the_databricks_payload_is_the_wheel_task_with_exactly_the_trainer_options(training_dag, databricks_try):
    settings = training_settings()
    operator, context = databricks_try(1, INPUTS)
    payload = operator._prepare_submit_json(context)  # what submit_run would send (DAG params must not leak in)
    (train,) = payload["tasks"]
    # the launcher: one training process per GPU of the node, planner-train's exit codes kept
    assert train["python_wheel_task"] == {"package_name": "planner_trainer", "entry_point": "planner-train-ddp",
                                          "named_parameters": OPTIONS}
    assert train["libraries"] == [{"whl": settings.trainer_wheel}]
    assert train["new_cluster"]["node_type_id"] and "gpu" in train["new_cluster"]["spark_version"]
    assert payload["idempotency_token"].startswith(RUN_ID)
    assert training_dag.get_task("train_databricks").pool == settings.gpu_pool


def test_the_trainer_parses_the_argv_databricks_builds_like_the_pods():
    argv = databricks_argv(OPTIONS)
    assert argv[0] == "--dataset-uri=/data/datasets/planner/2026-11-23" and "--lora=false" in argv
    assert cli.parse_args(argv) == cli.parse_args(trainer_argv(OPTIONS))
    assert cli.parse_args(databricks_argv({**OPTIONS, "lora": "true"})).lora is True


def test_a_databricks_retry_gets_a_new_idempotency_token_and_the_same_try_keeps_its_own(training_dag, databricks_try):
    """Databricks answers a known token with its run: a retry must not get the failed run back."""
    assert training_dag.get_task("resolve_inputs").multiple_outputs  # the token reads its training_run_id key
    first, again, retry = (databricks_try(n, INPUTS) for n in (1, 1, 2))
    tokens = [task._prepare_submit_json(context)["idempotency_token"] for task, context in (first, again, retry)]
    assert tokens[0] == tokens[1] != tokens[2]
    assert all(RUN_ID in token for token in tokens)
    late, context = databricks_try(9999, INPUTS)  # cleared and retried many times over
    assert len(late._prepare_submit_json(context)["idempotency_token"]) <= DATABRICKS_TOKEN_MAX_CHARS


def test_dataset_version_choice(tmp_path):
    root = str(tmp_path)
    for version, complete in [("2026-11-09", True), ("2026-11-16", True), ("2026-11-23", False)]:
        path = Path(storage.dataset_uri(version, root))
        path.mkdir(parents=True)
        if complete:
            (path / names.SUCCESS_MARKER).write_text("")
    assert pick_dataset_version("2026-10-01", ["2026-11-16"], root) == "2026-10-01"
    assert pick_dataset_version(None, ["2026-11-09"], root) == "2026-11-09"
    assert pick_dataset_version(None, [], root) == "2026-11-16"  # the newest *complete* one
    with pytest.raises(ValueError, match="run planner_dataset first"):
        pick_dataset_version(None, [], str(tmp_path / "empty"))


@pytest.mark.e2e
def test_a_local_training_run_through_the_dag_publishes_the_model_and_emits_the_asset(
        training_dag, published_dataset, monkeypatch):
    import json

    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    root = str(Path(published_dataset).parents[2])
    monkeypatch.setenv("PLANNER_STORAGE_ROOT", root)
    run = training_dag.test(run_conf={"backend": "local", "epochs": 2, "max_rows": 300, "batch_size": 32})
    assert run.state == "success"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["train_local"] == "success"
    assert states["train_kubernetes"] == states["train_databricks"] == "skipped"

    with create_session() as session:
        event = session.scalars(select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                                .where(AssetModel.name == names.ASSET_MODEL_ARTIFACTS)
                                .order_by(AssetEvent.id.desc())).first()
        extra = dict(event.extra)
    model_path = extra["model_path"]
    assert storage.is_complete(model_path) and model_path.startswith(storage.models_root(root))
    manifest = json.loads((Path(model_path) / names.MODEL_MANIFEST_FILE).read_text())
    assert extra == {"model_path": model_path, "training_run_id": manifest["training_run_id"],
                     "mlflow_run_id": manifest["mlflow_run_id"], "dataset_version": "2026-11-23"}
    assert manifest["training_run_id"].startswith("planner_acceptance-v")

    import mlflow
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    history = mlflow.MlflowClient().get_metric_history(manifest["mlflow_run_id"], "val_auc")
    assert [m.step for m in history] == [0, 1]
    model = AutoModelForSequenceClassification.from_pretrained(model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    with torch.no_grad():
        logits = model(**tokenizer(["workflow plan-first mode autopilot"], ["cuisine thai ingredients rice"],
                                   return_tensors="pt", padding=True)).logits
    assert logits.shape == (1, 2)


@pytest.mark.e2e
def test_dataset_dag_then_training_dag_on_the_version_it_built(training_dag, training_events_dsn, tmp_path,
                                                                monkeypatch):
    """The two phases chained through their contract: planner_dataset publishes a version,
    planner_training (no version given) picks that newest complete version and trains on it."""
    import json

    from airflow.dag_processing.dagbag import DagBag

    from include.core.local_postgres import airflow_connection_json

    monkeypatch.setenv("PLANNER_STORAGE_ROOT", str(tmp_path))
    monkeypatch.setenv("AIRFLOW_CONN_EVENTS_DB", airflow_connection_json(training_events_dsn))
    dataset_dag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "planner_dataset.py")).dags[names.DAG_DATASET]
    assert dataset_dag.test(run_conf={"end_date": "2026-11-23"}).state == "success"

    run = training_dag.test(run_conf={"backend": "local", "epochs": 1, "max_rows": 300, "batch_size": 32})
    assert run.state == "success"
    inputs = next(ti for ti in run.get_task_instances() if ti.task_id == "resolve_inputs").xcom_pull(
        task_ids="resolve_inputs")
    assert inputs["dataset_uri"] == storage.dataset_uri("2026-11-23") and str(tmp_path) in inputs["dataset_uri"]
    manifest = json.loads(storage.read_text(inputs["model_uri"], names.MODEL_MANIFEST_FILE))
    assert manifest["dataset_uri"] == inputs["dataset_uri"] and manifest["dataset_version"] == "2026-11-23"


def _complete_datasets(*versions: str) -> None:
    for version in versions:
        path = Path(storage.dataset_uri(version))
        path.mkdir(parents=True)
        (path / names.SUCCESS_MARKER).write_text("")


@pytest.fixture()
def queued_dataset_events(queue_asset_events):
    return lambda *extras: queue_asset_events(names.ASSET_DATASET, *extras)


def _resolve_inputs(run):
    ti = next(ti for ti in run.get_task_instances() if ti.task_id == "resolve_inputs")
    return ti, ti.xcom_pull(task_ids="resolve_inputs"), ti.xcom_pull(task_ids="resolve_inputs", key="skipped_events")


def test_two_queued_dataset_events_train_on_the_newest_and_record_the_other(
        training_dag, storage_root, queued_dataset_events):
    """The older version queued last (the old `triggered[-1]` picked it): the newer one is trained on."""
    _complete_datasets("2026-11-16", "2026-11-23")
    queued_dataset_events({"dataset_version": "2026-11-23", "rows": 2}, {"dataset_version": "2026-11-16", "rows": 1})
    run = training_dag.test(run_conf={"backend": "local"}, mark_success_pattern="train_local|publish_model_artifacts")
    assert run.state == "success"
    ti, inputs, skipped = _resolve_inputs(run)
    assert ti.state == "success"
    assert inputs["dataset_version"] == "2026-11-23" and inputs["dataset_uri"] == storage.dataset_uri("2026-11-23")
    assert skipped == ["dataset 2026-11-16 superseded by 2026-11-23 (queued in the same run)"]


def test_an_event_older_than_the_newest_complete_dataset_trains_nothing(
        training_dag, storage_root, queued_dataset_events):
    """A rebuilt old week must not become a challenger over the newer week's model: the run skips, saying why."""
    _complete_datasets("2026-11-16", "2026-11-23")
    queued_dataset_events({"dataset_version": "2026-11-16"})
    run = training_dag.test(run_conf={"backend": "local"})
    assert run.state == "success"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert set(states.values()) == {"skipped"}, states
    _, _, skipped = _resolve_inputs(run)
    assert skipped == ["dataset 2026-11-16 is older than the newest complete dataset 2026-11-23: not training on it, "
                       "so it cannot displace a newer challenger (trigger with dataset_version to train on it anyway)"]
