"""planner-train on a real published dataset: bad input is refused before any training, a
failed run leaves nothing that looks complete, a retry of a finished run does nothing, CPU
runs are deterministic, and the published directory reloads and predicts."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from include.core import names, storage
from include.core.hashing import file_sha256
from include.training import cli

SMALL = ["--epochs", "1", "--max-rows", "400", "--batch-size", "32"]


def _run(dataset_uri: str, out: Path, run_id: str, *extra: str) -> int:
    return cli.main(["--dataset-uri", dataset_uri, "--output-root", str(out), "--training-run-id", run_id,
                     *SMALL, *extra])


def _copy_dataset(uri: str, tmp_path: Path) -> Path:
    target = tmp_path / "datasets" / "planner" / Path(uri).name
    shutil.copytree(uri, target)
    return target


@pytest.mark.parametrize("breakage", ["missing", "no_success", "wrong_schema", "all_after_cutoff", "not_a_version",
                                      "tampered"])
def test_bad_input_is_refused_before_training(published_dataset, tmp_path, capsys, breakage):
    dataset = _copy_dataset(published_dataset, tmp_path)
    content = Path(storage.resolve(str(dataset)))  # the copy's published revision
    if breakage == "missing":
        shutil.rmtree(dataset)
    elif breakage == "no_success":
        (content / names.SUCCESS_MARKER).unlink()
    elif breakage == "wrong_schema":
        table = pq.read_table(content / names.DATASET_TRAINING_FILE).drop_columns(["target"])
        pq.write_table(table, content / names.DATASET_TRAINING_FILE)
    elif breakage == "all_after_cutoff":
        pass  # holdout of the whole window below
    elif breakage == "tampered":  # same schema, one row fewer: only the revision's digest tells
        table = pq.read_table(content / names.DATASET_TRAINING_FILE)
        pq.write_table(table.slice(1), content / names.DATASET_TRAINING_FILE)
    else:
        dataset = dataset.rename(dataset.parent / "latest")
    extra = ["--holdout-days", "60"] if breakage == "all_after_cutoff" else []
    out = tmp_path / "models"

    assert _run(str(dataset), out, "planner_acceptance-v20261123_000000", *extra) == 2

    reason = capsys.readouterr().err
    assert reason.startswith("planner-train: bad input:")
    assert {"missing": "does not exist", "no_success": "_SUCCESS", "wrong_schema": "lacks columns ['target']",
            "all_after_cutoff": "no rows accepted before the training cutoff",
            "not_a_version": "not a version", "tampered": "no longer holds the content"}[breakage] in reason
    assert not out.exists() or not any(out.rglob(names.SUCCESS_MARKER))


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        cli.main(["--dataset-uri", "x", "--output-root", "y", "--training-run-id", "model-7"])
    with pytest.raises(SystemExit):
        cli.main(["--dataset-uri", "x", "--output-root", "y", "--training-run-id",
                  "planner_acceptance-v20261123_000000", "--epochs", "0"])


REQUIRED = ["--dataset-uri", "x", "--output-root", "y", "--training-run-id", "planner_acceptance-v20261123_000000"]


@pytest.mark.parametrize("flag", ["lora", "shuffle-labels"])
@pytest.mark.parametrize(("given", "expected"), [
    ([], False), (["--{}"], True), (["--no-{}"], False),
    (["--{}=true"], True), (["--{}=false"], False),  # what Databricks builds from named_parameters
    (["--{}=True"], True), (["--{}=FALSE"], False), (["--{}=1"], True), (["--{}=0"], False),
    (["--{}=yes"], True), (["--{}=no"], False), (["--{}", "false"], False), (["--{}", "--no-{}"], False),
])
def test_every_boolean_option_takes_the_flag_and_the_value_forms(flag, given, expected):
    args = cli.parse_args(REQUIRED + [arg.format(flag) for arg in given])
    assert getattr(args, flag.replace("-", "_")) is expected


@pytest.mark.parametrize("bad", ["--lora=maybe", "--lora=", "--no-lora=true", "--shuffle-labels=2"])
def test_a_boolean_option_with_any_other_value_is_a_usage_error(bad, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.parse_args([*REQUIRED, bad])
    assert exited.value.code == 2
    assert f"argument {bad.split('=')[0]}" in capsys.readouterr().err


def test_a_failing_run_leaves_nothing_that_looks_complete(published_dataset, tmp_path):
    out = tmp_path / "models"
    with pytest.raises(Exception):  # noqa: B017 - no CUDA here: fails after the staging dir exists
        _run(published_dataset, out, "planner_acceptance-v20261123_000001", "--device", "cuda")
    assert not (out / "planner_acceptance-v20261123_000001").exists()
    assert not any(out.rglob("*.safetensors"))


def test_training_publishes_a_complete_reloadable_model_and_a_retry_reuses_it(published_dataset, tmp_path, capsys):
    import mlflow
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from include.core.features import context_text, meal_text, recipe_index

    out = tmp_path / "models"
    run_id = "planner_acceptance-v20261123_010203"
    assert _run(published_dataset, out, run_id) == 0
    model_dir = out / run_id
    assert storage.is_complete(str(model_dir))
    manifest = json.loads((model_dir / names.MODEL_MANIFEST_FILE).read_text())
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(manifest["files"])
    for name, digest in manifest["files"].items():
        assert file_sha256(model_dir / name) == digest
    from include.registration.artifacts import artifact_problems

    assert artifact_problems(model_dir) == []  # the contract registration verifies
    assert manifest["training_run_id"] == run_id and manifest["dataset_version"] == "2026-11-23"
    assert manifest["training_cutoff"] == "2026-11-16T00:00:00+00:00"
    assert manifest["hyperparameters"]["epochs"] == 1 and manifest["base_model"] == "tiny"

    run = mlflow.MlflowClient().get_run(manifest["mlflow_run_id"])
    assert run.data.tags["training_run_id"] == run_id and run.data.tags["dataset_version"] == "2026-11-23"
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_auc")
    assert [m.step for m in history] == [0]
    assert {"train_loss", "val_loss", "val_accuracy", "baseline_val_auc"} <= set(run.data.metrics)
    assert run.inputs.dataset_inputs[0].dataset.name == "planner/2026-11-23"

    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    row = pq.read_table(Path(storage.resolve(published_dataset)) / names.DATASET_TRAINING_FILE).slice(0, 1).to_pylist()[0]
    context = json.loads(row["input"])
    recipes = recipe_index(pq.read_table(Path(storage.resolve(published_dataset)) / names.DATASET_RECIPES_FILE).to_pylist())
    meal = recipes[context["proposed_plan"]["meals"][0]["recipe_id"]]
    with torch.no_grad():
        probs = torch.softmax(model(**tokenizer(context_text(context), meal_text(meal, context),
                                                return_tensors="pt")).logits, -1)
    assert probs.shape == (1, 2) and abs(float(probs.sum()) - 1) < 1e-5

    before = (model_dir / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert _run(published_dataset, out, run_id) == 0
    assert "already complete: nothing to train" in capsys.readouterr().out
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == before


def test_cpu_training_is_deterministic_for_a_seed(published_dataset, tmp_path):
    out = tmp_path / "models"
    runs = ["planner_acceptance-v20261123_000010", "planner_acceptance-v20261123_000011"]
    for run_id in runs:
        assert _run(published_dataset, out, run_id, "--seed", "3") == 0
    first, second = (json.loads((out / r / names.MODEL_MANIFEST_FILE).read_text()) for r in runs)
    assert first["files"]["model.safetensors"] == second["files"]["model.safetensors"]
    assert first["final_metrics"]["val_auc"] == second["final_metrics"]["val_auc"]


def test_the_dataset_schema_contract_is_what_the_trainer_reads(published_dataset):
    from include.core.features import RECIPE_COLUMNS
    from include.training.examples import REQUIRED_COLUMNS

    assert set(REQUIRED_COLUMNS) <= set(pq.read_schema(Path(storage.resolve(published_dataset)) / names.DATASET_TRAINING_FILE).names)
    recipes = pq.read_schema(Path(storage.resolve(published_dataset)) / names.DATASET_RECIPES_FILE)
    assert set(RECIPE_COLUMNS) <= set(recipes.names) and recipes.field("prep_time").type == pa.int32()


def test_training_reads_and_publishes_on_object_storage(published_dataset):
    """An object-storage root (fsspec's in-memory filesystem standing in for S3) end to end:
    the dataset is read from it and the model published to it, `_SUCCESS` last."""
    import fsspec

    fs = fsspec.filesystem("memory")
    source = Path(storage.resolve(published_dataset))  # a copy in the layout from before revisions
    for file in source.iterdir():
        fs.put_file(str(file), f"/bucket/datasets/planner/{Path(published_dataset).name}/{file.name}")
    run_id = "planner_acceptance-v20261123_000099"
    try:
        assert cli.main(["--dataset-uri", f"memory://bucket/datasets/planner/{Path(published_dataset).name}",
                         "--output-root", "memory://bucket/models", "--training-run-id", run_id, *SMALL]) == 0
        assert storage.is_complete(f"memory://bucket/models/{run_id}")
        manifest = json.loads(storage.read_text(f"memory://bucket/models/{run_id}", names.MODEL_MANIFEST_FILE))
        assert set(manifest["files"]) >= {"model.safetensors", "config.json", "tokenizer.json"}
        assert manifest["dataset_uri"] == f"memory://bucket/datasets/planner/{Path(published_dataset).name}"
    finally:
        fs.rm("/bucket", recursive=True)


def test_the_gpu_scale_options_train_and_are_recorded(published_dataset, tmp_path):
    """bf16 autocast (on CPU here), gradient accumulation and gradient checkpointing: the same contract."""
    from include.registration.artifacts import artifact_problems

    out = tmp_path / "models"
    run_id = "planner_acceptance-v20261123_000030"
    assert _run(published_dataset, out, run_id, "--mixed-precision", "bf16", "--gradient-accumulation-steps", "2",
                "--gradient-checkpointing", "--device", "cpu") == 0
    manifest = json.loads((out / run_id / names.MODEL_MANIFEST_FILE).read_text())
    assert artifact_problems(out / run_id) == []
    hyper = manifest["hyperparameters"]
    assert (hyper["mixed_precision"], hyper["gradient_accumulation_steps"], hyper["gradient_checkpointing"],
            hyper["world_size"]) == ("bf16", 2, True, 1)
    assert 0 <= manifest["final_metrics"]["val_auc"] <= 1


def test_lora_on_the_tiny_model_trains_and_publishes_a_merged_model(published_dataset, tmp_path):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "models"
    run_id = "planner_acceptance-v20261123_000031"
    assert _run(published_dataset, out, run_id, "--lora=true", "--lora-r", "4") == 0
    model = AutoModelForSequenceClassification.from_pretrained(out / run_id)
    assert not any("lora" in name for name, _ in model.named_parameters())  # merged before saving
