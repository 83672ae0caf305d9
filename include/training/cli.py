"""`planner-train`: the trainer the GPU pod, the Databricks wheel task and local runs all execute.

    planner-train --dataset-uri <root>/datasets/planner/2026-11-23 --output-root <root>/models/planner_acceptance \
        --training-run-id planner_acceptance-v20261123_000000 [--base-model tiny|/path/to/checkpoint] ...

Exit codes: 0 trained (or the run's artifacts were already complete: nothing to do), 2 bad input
(rejected before any training, with the reason: not worth a retry), 3 busy (another live trainer
holds this run's checkpoint lease, see checkpoints.Lease: a retry later proceeds), 1 anything else.
Under several processes, `planner-train-ddp` (include/training/launch.py) keeps 2 and 3.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from include.core import hashing, names, storage
from include.core.features import recipe_index
from include.training.examples import (
    REQUIRED_COLUMNS,
    DatasetError,
    shuffled_label_columns,
    split_example_columns,
    training_cutoff,
)

log = logging.getLogger("planner.train")

TRUE_WORDS = ("true", "1", "yes")
PROCESS_GROUP_TIMEOUT_S = 2 * 3600  # how long the other processes wait for rank 0 (a large checkpoint to S3)
FALSE_WORDS = ("false", "0", "no")
EXIT_BAD_INPUT, EXIT_BUSY = 2, 3
SCRATCH_PREFIX = "planner-train-"  # <tmp>/planner-train-<training run id>/: the trainer's local scratch


def boolean_word(value: str) -> bool:
    """`--flag=true|false`: the form Databricks builds from a wheel task's named_parameters."""
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def add_boolean_option(parser: argparse.ArgumentParser, name: str, help: str | None = None) -> None:
    """`--name`, `--no-name` and `--name=true|false` all work (BooleanOptionalAction takes no value,
    so the Databricks form would exit 2); default false."""
    dest = name.replace("-", "_")
    parser.add_argument(f"--{name}", dest=dest, nargs="?", const=True, default=False, type=boolean_word,
                        metavar="true|false", help=help)
    parser.add_argument(f"--no-{name}", dest=dest, action="store_false", default=False,
                        help=f"same as --{name}=false")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="planner-train", description="Train the planner acceptance classifier.")
    parser.add_argument("--dataset-uri", required=True, help="a published dataset version directory")
    parser.add_argument("--output-root", required=True, help="models root; the run writes <root>/<training-run-id>/")
    parser.add_argument("--training-run-id", required=True, help="planner_acceptance-vYYYYMMDD_HHMMSS")
    parser.add_argument("--base-model", default="tiny", help="'tiny' (built from a config) or a local HF checkpoint dir")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-rows", type=int, default=0, help="use at most this many dataset rows (0: all)")
    parser.add_argument("--holdout-days", type=int, default=7, help="days before the version's end kept for replay")
    parser.add_argument("--val-share", type=float, default=0.2, help="share of households held out for validation")
    add_boolean_option(parser, "lora", help="LoRA adapters on the base model (merged before saving)")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-alpha", type=int, default=32)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: CUDA when present; several processes under torchrun share the work (DDP)")
    parser.add_argument("--mixed-precision", default="auto", choices=("auto", "bf16", "fp32"),
                        help="auto: bf16 on a GPU that supports it, else fp32")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    add_boolean_option(parser, "gradient-checkpointing", help="recompute activations in backward (less GPU memory)")
    parser.add_argument("--early-stopping-patience", type=int, default=0,
                        help="stop after this many epochs without a better val_auc (0: run every epoch); the "
                             "published weights are always the best epoch's")
    parser.add_argument("--checkpoint-root", default="",
                        help="where checkpoints go, <root>/<training-run-id>/ (default: <storage root>/checkpoints "
                             "beside the models root)")
    parser.add_argument("--checkpoint-steps", type=int, default=0,
                        help="also checkpoint every N optimizer steps (0: at the end of each epoch only)")
    add_boolean_option(parser, "keep-checkpoints", help="keep the checkpoints once the model is published")
    parser.add_argument("--airflow-dag-id", default="", help="the Airflow DAG that runs this training (lineage)")
    parser.add_argument("--airflow-run-id", default="", help="the Airflow DAG run that runs this training (lineage)")
    add_boolean_option(parser, "shuffle-labels",
                       help="negative control: permute the training labels (seeded), so the model can learn "
                            "nothing; offline evaluation and the promotion gate must reject it")
    args = parser.parse_args(argv)
    if not re.match(names.TRAINING_RUN_ID_PATTERN, args.training_run_id):
        parser.error(f"--training-run-id must look like {names.REGISTERED_MODEL_NAME}-vYYYYMMDD_HHMMSS")
    for name in ("epochs", "batch_size", "gradient_accumulation_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("early_stopping_patience", "checkpoint_steps"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.learning_rate <= 0:
        parser.error("--learning-rate must be > 0")
    return args


def load_dataset(uri: str, holdout_days: int, max_rows: int):
    """(Arrow table of the rows before the cutoff, recipe table, cutoff, version, the revision read);
    DatasetError on anything unusable. The revision is resolved once, so the rows and the lineage the manifest records agree."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(uri)
    if not fs.isdir(path):
        raise DatasetError(f"dataset {uri} does not exist")
    if not storage.is_complete(uri):
        raise DatasetError(f"dataset {uri} has no {names.SUCCESS_MARKER}: it is incomplete or still being written")
    version = uri.rstrip("/").rsplit("/", 1)[-1]
    content = storage.published_content(uri)
    if content is None:
        raise DatasetError(f"dataset {uri} was replaced while it was read: run again")
    fs, path = storage.filesystem(content["uri"])
    rows_file = f"{path.rstrip('/')}/{names.DATASET_TRAINING_FILE}"
    schema = pq.read_schema(rows_file, filesystem=fs)
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if missing:
        raise DatasetError(f"dataset {uri}: {names.DATASET_TRAINING_FILE} lacks columns {missing}")
    try:
        cutoff = training_cutoff(version, holdout_days)
    except ValueError as exc:
        raise DatasetError(f"dataset {uri}: directory name {version!r} is not a version (YYYY-MM-DD)") from exc
    if content["digest"] and storage.revision_digest(content["uri"]) != content["digest"]:
        raise DatasetError(f"dataset {uri}: revision {content['revision']} no longer holds the content "
                           f"{content['digest'][:16]} it was published with (its files changed): nothing was trained")
    table = pq.read_table(rows_file, columns=list(REQUIRED_COLUMNS), filesystem=fs)
    table = table.filter(pc.less(table["accepted_at"], cutoff))
    if max_rows:
        table = table.slice(0, max_rows)
    if table.num_rows == 0:
        raise DatasetError(f"dataset {uri} has no rows accepted before the training cutoff {cutoff.isoformat()}")
    recipes = pq.read_table(f"{path.rstrip('/')}/{names.DATASET_RECIPES_FILE}", filesystem=fs)
    revision = {"dataset_revision": content["revision"], "dataset_revision_uri": content["uri"],
                "dataset_digest": content["digest"]}
    return table, recipes, cutoff, version, revision


def write_manifest(directory: Path, content: dict) -> dict:
    """The manifest lists every file with its sha256 (the manifest itself and _SUCCESS excepted)."""
    from include.core.hashing import file_sha256

    files = {p.relative_to(directory).as_posix(): file_sha256(p)
             for p in sorted(directory.rglob("*")) if p.is_file() and p.name not in (names.MODEL_MANIFEST_FILE, names.SUCCESS_MARKER)}
    manifest = {**content, "files": files}
    (directory / names.MODEL_MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _dataset_reference(uri: str, version: str, digest: str = ""):
    """The dataset version as an MLflow input: its location and content digest, without loading it."""
    from mlflow.data.meta_dataset import MetaDataset

    from include.core.hashing import content_digest
    from include.core.tracking import dataset_source

    return MetaDataset(source=dataset_source(uri), name=f"{names.DATASET_NAME}/{version}",
                       digest=(digest or content_digest(uri, names.DATASET_TRAINING_FILE))[:16])


def accelerator_for(args: argparse.Namespace):
    """Accelerate's Accelerator for the device and precision asked for; under torchrun it joins the
    process group (NCCL on GPUs, gloo on CPU)."""
    import torch
    from accelerate import Accelerator

    if args.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda, but this machine has no CUDA device")
    cpu = args.device == "cpu" or not torch.cuda.is_available()
    precision = args.mixed_precision
    if precision == "auto":
        precision = "bf16" if not cpu and torch.cuda.is_bf16_supported() else "fp32"
    # Accelerate keeps its settings process-wide; a second training in one process (tests, a notebook) may
    # ask for another precision, so they start afresh (the process group, if any, stays).
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    from datetime import timedelta

    from accelerate.utils import InitProcessGroupKwargs

    # step_scheduler_with_optimizer=False: Accelerate would otherwise step the schedule once per process per
    # optimizer step, so under DDP it would reach zero after 1/world_size of the training. The process group
    # waits PROCESS_GROUP_TIMEOUT for rank 0's checkpoint uploads and MLflow calls (torch's default: 10 min).
    return Accelerator(cpu=cpu, mixed_precision="no" if precision == "fp32" else precision,
                       step_scheduler_with_optimizer=False,
                       kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=PROCESS_GROUP_TIMEOUT_S))]
                       ), precision


def model_uri(args: argparse.Namespace) -> str:
    return storage.join(args.output_root, args.training_run_id)


def checkpoint_store(args: argparse.Namespace):
    from include.training.checkpoints import CheckpointStore, default_checkpoint_root

    return CheckpointStore(args.checkpoint_root or default_checkpoint_root(args.output_root), args.training_run_id)


def hyperparameters(args: argparse.Namespace, device: str, precision: str, world_size: int) -> dict:
    return {"epochs": args.epochs, "learning_rate": args.learning_rate, "batch_size": args.batch_size,
            "seed": args.seed, "max_rows": args.max_rows, "holdout_days": args.holdout_days,
            "val_share": args.val_share, "lora": args.lora, "lora_r": args.lora_r, "lora_alpha": args.lora_alpha,
            "base_model": args.base_model, "device": device, "shuffle_labels": args.shuffle_labels,
            "mixed_precision": precision, "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "gradient_checkpointing": args.gradient_checkpointing,
            "early_stopping_patience": args.early_stopping_patience, "world_size": world_size}


def start_tracking(store, args: argparse.Namespace, tags: dict):
    """The MLflow run of this training: the one `run.json` names when an earlier attempt started it
    (continued, so it does not stay RUNNING), else a new one, recorded at once."""
    import mlflow

    from include.core.tracking import configure_mlflow, ensure_experiment

    configure_mlflow()
    record = store.read_run()
    if record:
        try:
            earlier = mlflow.MlflowClient().get_run(record["mlflow_run_id"])
        except mlflow.exceptions.MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise  # the server is unreachable or failing: retry later rather than open a second run
            earlier = None
        if earlier is None or earlier.info.lifecycle_stage == "deleted":
            log.warning("the MLflow run %s of an earlier attempt is gone or deleted: starting a new one",
                        record["mlflow_run_id"])
            record = None
    if record:
        log.info("continuing MLflow run %s of an earlier attempt", record["mlflow_run_id"])
        run = mlflow.start_run(run_id=record["mlflow_run_id"])
    else:
        run = mlflow.start_run(experiment_id=ensure_experiment(names.EXPERIMENT_TRAINING),
                               run_name=args.training_run_id)
        store.write_run({"mlflow_run_id": run.info.run_id, "training_run_id": args.training_run_id})
    mlflow.set_tags(tags)
    return run


def log_missing_epochs(run_id: str, history: list[dict]) -> None:
    """Log each epoch of `history` that the run lacks (step = epoch), so a resume logs none twice."""
    import mlflow

    logged = {m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "val_auc")}
    for epoch, metrics in enumerate(history):
        if epoch not in logged:
            mlflow.log_metrics(metrics, step=epoch)
            log.info("epoch %d: %s", epoch, metrics)


def training_fingerprint(args: argparse.Namespace, hyper: dict, revision: dict, train_examples: int,
                         tokenizer_sha256: str = "") -> dict:
    """What a checkpoint must match to be resumed: the settings, the dataset and the run id.

    The precision is the one asked for (`auto`, `bf16`, `fp32`), not what it resolved to on this
    machine, so a retry of an `auto` training on a GPU without bf16 (or on a CPU) resumes the
    checkpoints a bf16 GPU wrote. That is safe: bf16 here is autocast only (Accelerate keeps the
    weights fp32 and has no GradScaler for bf16; fp16, which has one, is not offered), so the weights
    and the AdamW moments in a checkpoint are fp32 whichever precision wrote them. The device is left
    out for the same reason. The feature code and the tokenizer are in: weights learned on other
    texts or other token ids must not be resumed after a deployment changes `include/core/features.py`
    or the tokenizer.
    """
    fingerprint = {**hyper, "mixed_precision": args.mixed_precision, "training_run_id": args.training_run_id,
                   "dataset_digest": revision["dataset_digest"], "dataset_revision": revision["dataset_revision"],
                   "train_examples": train_examples, "feature_code_sha256": hashing.feature_code_sha256(),
                   "tokenizer_sha256": tokenizer_sha256}
    fingerprint.pop("device")
    return fingerprint


def scratch_dir(training_run_id: str) -> Path:
    return Path(tempfile.gettempdir()) / f"{SCRATCH_PREFIX}{training_run_id}"


def clear_stale_scratch(training_run_id: str) -> list[Path]:
    """Remove what an earlier attempt of this run id killed on this machine (SIGKILL, OOM: no `finally`
    ran) left in the temp dir: its scratch `<tmp>/planner-train-<run id>/` (checkpoints being written or
    read back) and the local staging copies of the model it was uploading to object storage
    (`<tmp>/<run id>-<12 hex>-<8 chars>/`, storage.new_staging_dir's names). Only those names: nothing
    else is touched. Called with the lease held, so no live trainer of this run id uses them."""
    temp = Path(tempfile.gettempdir())
    staging = re.compile(rf"^{re.escape(training_run_id)}-[0-9a-f]{{12}}-[a-z0-9_]{{8}}$")
    stale = [path for path in [scratch_dir(training_run_id), *temp.glob(f"{training_run_id}-*")]
             if path.is_dir() and not path.is_symlink()
             and (path == scratch_dir(training_run_id) or staging.match(path.name))]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
        log.warning("removed %s, left by an earlier attempt of %s that was killed", path, training_run_id)
    return stale


def take_lease(accelerator, store):
    """The main process takes the lease of the run's checkpoint prefix (checkpoints.Lease); every
    process raises LeaseHeld alike when another live trainer holds it. The lease, on the main process."""
    from include.training.checkpoints import LeaseHeld

    lease, refusal = None, [None]
    if accelerator.is_main_process:
        lease = store.lease()
        try:
            lease.acquire()
        except LeaseHeld as exc:
            refusal = [str(exc)]
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        refusal = broadcast_object_list(refusal)
    if refusal[0]:
        raise LeaseHeld(refusal[0])
    return lease


def train(args: argparse.Namespace) -> dict | None:
    """Train (or resume) and publish; the result on the main process, None on the others."""
    import mlflow
    import pyarrow.parquet as pq
    import torch

    from include.training import modeling
    from include.training.loop import LoopSettings, Trainer, selection

    accelerator, precision = accelerator_for(args)
    table, recipe_table, cutoff, version, revision = load_dataset(args.dataset_uri, args.holdout_days, args.max_rows)
    train_set, val_set = split_example_columns(table, recipe_index(recipe_table.to_pylist()), args.val_share,
                                               args.seed)
    del table
    if args.shuffle_labels:
        train_set = shuffled_label_columns(train_set, args.seed)
    if not len(train_set) or not len(val_set) or len(set(val_set.labels.tolist())) < 2:
        raise DatasetError(f"dataset {args.dataset_uri}: too few rows to train and validate "
                           f"({len(train_set)} train / {len(val_set)} validation examples)")
    store = checkpoint_store(args)
    lease = take_lease(accelerator, store)  # before anything is written under the run's checkpoints or scratch
    if storage.is_complete(model_uri(args)):  # the trainer it waited for (or took over) published meanwhile
        lease.release()
        return {"published_meanwhile": True}
    main_process = accelerator.is_main_process
    scratch = scratch_dir(args.training_run_id)
    run, failed = None, True
    try:
        if main_process:
            clear_stale_scratch(args.training_run_id)
            scratch.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        modeling.seed_everything(args.seed)
        tokenizer, vocabulary = None, {}
        if args.base_model == modeling.TINY:
            tokenizer = modeling.train_tokenizer((text for chunk in train_set.text_chunks() for texts in chunk
                                                  for text in texts), report=vocabulary)
        lora = {"r": args.lora_r, "alpha": args.lora_alpha} if args.lora else None
        model, tokenizer = modeling.build_model(args.base_model, tokenizer, lora)
        if args.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        encoded_train, encoded_val = modeling.encode(tokenizer, train_set), modeling.encode(tokenizer, val_set)
        baseline = modeling.keep_rate_baseline(train_set, val_set)
        train_examples, val_examples = len(train_set), len(val_set)
        del train_set, val_set  # the texts: training reads the token ids only
        device = accelerator.device.type
        hyper = hyperparameters(args, device, precision, accelerator.num_processes)
        airflow = {key: value for key, value in (("airflow_dag_id", args.airflow_dag_id),
                                                 ("airflow_run_id", args.airflow_run_id)) if value}
        settings = LoopSettings(epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size,
                                seed=args.seed, pad_id=tokenizer.pad_token_id,
                                gradient_accumulation_steps=args.gradient_accumulation_steps,
                                checkpoint_steps=args.checkpoint_steps,
                                early_stopping_patience=args.early_stopping_patience)
        fingerprint = training_fingerprint(args, hyper, revision, train_examples, modeling.tokenizer_sha256(tokenizer))
        from accelerate.utils import gather_object

        if len({json.dumps(f, sort_keys=True) for f in gather_object([fingerprint])}) > 1:
            raise RuntimeError("the training processes read different data, settings or code (the dataset was "
                               "republished while they started, or the image differs between nodes?): not training")
        trainer = Trainer(accelerator, model, encoded_train, encoded_val, settings, store, scratch, fingerprint,
                          started_at=getattr(args, "started_at", None), lease=lease)
        trainer.check_resumable()
        if main_process:
            # the device and the precision it resolved to are tags: a resumed attempt may run on another
            # device (MLflow refuses to change a param); the param is the precision asked for
            run = start_tracking(store, args, {"training_run_id": args.training_run_id, "dataset_version": version,
                                               "dataset_uri": args.dataset_uri, "device": device,
                                               "mixed_precision": precision, **revision, **airflow})
            if not mlflow.MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs:  # once per run
                mlflow.log_input(_dataset_reference(args.dataset_uri, version, revision["dataset_digest"]),
                                 context="training")
                mlflow.log_metrics({**baseline, **vocabulary,
                                    "tokenization_seconds": encoded_train.seconds + encoded_val.seconds})
            mlflow.log_params({**{k: v for k, v in hyper.items() if k != "device"},
                               "mixed_precision": args.mixed_precision, "dataset_version": version,
                               "training_cutoff": cutoff.isoformat(), "train_examples": train_examples,
                               "val_examples": val_examples})
        resumed = trainer.resume()
        if main_process and resumed:
            log_missing_epochs(run.info.run_id, trainer.progress.history)
        progress = trainer.fit(on_epoch=lambda epoch, metrics: log_missing_epochs(
            run.info.run_id, trainer.progress.history))
        accelerator.wait_for_everyone()
        if not main_process:
            failed = False
            return None
        chosen = selection(progress, settings)
        best = progress.history[progress.best_epoch]
        final = {**best, **baseline, "best_epoch": progress.best_epoch,
                 "train_examples_per_s": trainer.examples_per_second}
        mlflow.log_metrics({"train_examples_per_s": trainer.examples_per_second, "best_epoch": progress.best_epoch,
                            "best_val_auc": progress.best_val_auc, "epochs_run": len(progress.history)})
        mlflow.set_tags({"best_epoch": str(progress.best_epoch), "selection": chosen["reason"]})
        model = trainer.best_model()
        if args.lora:
            model = model.merge_and_unload()
        final_uri = model_uri(args)
        staging = storage.new_staging_dir(final_uri)
        try:
            model.to("cpu").save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            pq.write_table(recipe_table, staging / names.MODEL_RECIPES_FILE)
            manifest = write_manifest(staging, {
                "training_run_id": args.training_run_id, "mlflow_run_id": run.info.run_id,
                "dataset_version": version, "dataset_uri": args.dataset_uri, **revision,
                "base_model": args.base_model, "training_cutoff": cutoff.isoformat(), "hyperparameters": hyper,
                "final_metrics": final, "epoch_metrics": progress.history, "selection": chosen,
                "world_size": accelerator.num_processes, "resumed_from": progress.resumed_from,
                "optimizer_steps": progress.optimizer_steps, "scheduler_steps": trainer.scheduler_steps,
                "torch_version": torch.__version__, "feature_code_sha256": hashing.feature_code_sha256(), **airflow})
            mlflow.log_dict(manifest, names.MODEL_MANIFEST_FILE)
            storage.publish_dir(staging, final_uri)
        except BaseException:
            storage.discard_staging(staging)
            raise
        failed = False
        mlflow.end_run("FINISHED")  # before the clean-up: a published model's run is never left open or FAILED
        run = None
        if not args.keep_checkpoints:  # under the lease still, so a retry taking it next finds them gone
            lease.stop_refreshing()
            try:
                store.remove_all()
            except Exception as exc:  # noqa: BLE001 - the model is published; retention removes what is left
                log.warning("could not remove the checkpoints under %s: %s", store.uri, exc)
        lease.release()  # the model is published and its checkpoints gone: nothing more is written here
        return {"model_uri": final_uri, **manifest}
    except (SystemExit, KeyboardInterrupt):
        if run is not None:
            mlflow.end_run("KILLED")  # SIGTERM (a preempted pod, torchrun stopping its workers)
            run = None
        raise
    finally:
        if run is not None:
            mlflow.end_run("FAILED" if failed else "FINISHED")
        if main_process:
            shutil.rmtree(scratch, ignore_errors=True)
        if lease is not None:
            lease.release()


def finish_published(args: argparse.Namespace) -> None:
    """The model is already published (a retry after publication): close what an attempt killed
    after publishing left, i.e. its checkpoints and a run still RUNNING."""
    import mlflow

    from include.core.tracking import configure_mlflow

    store = checkpoint_store(args)
    record = store.read_run()
    if record:
        configure_mlflow()
        try:
            client = mlflow.MlflowClient()
            if client.get_run(record["mlflow_run_id"]).info.status == "RUNNING":
                client.set_terminated(record["mlflow_run_id"], "FINISHED")
        except mlflow.exceptions.MlflowException as exc:
            log.warning("could not close MLflow run %s: %s", record["mlflow_run_id"], exc)
    if not args.keep_checkpoints:
        store.remove_all()


def main(argv: list[str] | None = None) -> int:
    from include.core.config import apply_offline_env

    apply_offline_env()  # before any library loads: no model hub, no telemetry

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    started_at = time.monotonic()
    args = parse_args(argv)
    _exit_on_sigterm()
    args.started_at = started_at
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    final_uri = model_uri(args)
    if storage.is_complete(final_uri):
        if _is_main_process():
            finish_published(args)
        print(f"{final_uri} is already complete: nothing to train (a retry of a finished run)")
        return 0
    from include.training.checkpoints import LeaseHeld
    from include.training.loop import CheckpointMismatch

    try:
        result = train(args)
    except (DatasetError, CheckpointMismatch) as exc:
        print(f"planner-train: bad input: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except LeaseHeld as exc:
        print(f"planner-train: busy: {exc}", file=sys.stderr)
        return EXIT_BUSY
    finally:
        _end_process_group()
    if result is None:
        return 0  # not the main process: it published nothing
    if result.get("published_meanwhile"):
        finish_published(args)
        print(f"{final_uri} was published by another attempt while this one started: nothing to train")
        return 0
    metrics, chosen = result["final_metrics"], result["selection"]
    print(f"trained {args.training_run_id}: val_auc {metrics['val_auc']:.4f} at epoch {chosen['best_epoch']} "
          f"({chosen['reason']}; baseline {metrics['baseline_val_auc']:.4f}); published {result['model_uri']}")
    return 0


def _end_process_group() -> None:
    """Tear down the process group (several processes) before the interpreter exits: left alive, its
    threads can abort the process at exit (SIGABRT), and the launcher would report 1 for an exit 2 or 3."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception as exc:  # noqa: BLE001 - the exit code is decided; this is tidying up
        log.warning("could not destroy the process group: %s", exc)


def _exit_on_sigterm() -> None:
    """SIGTERM (Kubernetes preempting the pod, torchrun stopping the workers) ends the process through
    SystemExit, so the MLflow run is closed as KILLED instead of staying RUNNING; a retry resumes it."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


if __name__ == "__main__":
    raise SystemExit(main())
