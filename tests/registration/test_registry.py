"""Registration against a real MLflow registry (SQLite backend store, local artifacts): the
registered model loads through its alias URI and scores dataset rows; reruns, retries,
interrupted runs and concurrent runs all end with exactly one version."""
from __future__ import annotations

import json
import multiprocessing
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from include.core import names, storage
from include.registration import registry


def _versions(training_run_id: str) -> list:
    return registry.versions_of(registry.registry_client(), training_run_id)


def test_registered_model_loads_by_alias_and_scores_dataset_rows(fresh_mlflow, model_in_storage, published_dataset):
    import mlflow
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from include.core.features import context_text, meal_text, recipe_index

    result = registry.register(model_in_storage)

    assert result.created and result.version == "1"
    version = mlflow.MlflowClient().get_model_version_by_alias(names.REGISTERED_MODEL_NAME, names.CHALLENGER_ALIAS)
    assert str(version.version) == "1"
    manifest = json.loads((model_in_storage / names.MODEL_MANIFEST_FILE).read_text())
    assert version.tags["training_run_id"] == manifest["training_run_id"]
    assert version.tags["dataset_version"] == manifest["dataset_version"]
    assert version.tags["mlflow_training_run_id"] == manifest["mlflow_run_id"]
    assert len(version.tags["manifest_sha256"]) == 64
    assert version.run_id is None  # trained against another store (the session's): the tag keeps the link

    rows = pq.read_table(Path(storage.resolve(published_dataset)) / names.DATASET_TRAINING_FILE).slice(0, 20).to_pandas()
    model = mlflow.pyfunc.load_model(f"models:/{names.REGISTERED_MODEL_NAME}@{names.CHALLENGER_ALIAS}")
    scores = model.predict(rows)  # every dataset column, as the dataset publishes them
    # The version's code is its own package, so it shadows nothing of the project's `include`.
    assert version.tags["serving_package"] == registry.serving_package_name()
    assert sys.modules[f"{version.tags['serving_package']}.features"] is not sys.modules.get("include.core.features")

    meals = sum(len(json.loads(i)["proposed_plan"]["meals"]) for i in rows["input"])
    assert len(scores) == meals
    assert list(scores.columns) == ["plan_id", "meal_index", "day", "recipe_id", "recipe_known", "keep_probability"]
    assert scores["keep_probability"].between(0, 1).all() and scores["recipe_known"].all()
    # The same number the trained directory gives for the same row and meal: one input contract.
    tokenizer = AutoTokenizer.from_pretrained(model_in_storage)
    raw = AutoModelForSequenceClassification.from_pretrained(model_in_storage).eval()
    recipes = recipe_index(pq.read_table(model_in_storage / names.MODEL_RECIPES_FILE).to_pylist())
    context = json.loads(rows["input"][0])
    meal = context["proposed_plan"]["meals"][0]
    with torch.no_grad():
        expected = torch.softmax(raw(**tokenizer(context_text(context), meal_text(recipes[meal["recipe_id"].lower()], context),
                                                 return_tensors="pt")).logits, -1)[0, 1].item()
    assert scores["keep_probability"][0] == pytest.approx(expected, abs=1e-5)


def test_an_unknown_recipe_is_scored_and_flagged_not_a_failure(fresh_mlflow, model_in_storage, published_dataset):
    import mlflow

    registry.register(model_in_storage)
    rows = pq.read_table(Path(storage.resolve(published_dataset)) / names.DATASET_TRAINING_FILE).slice(0, 1).to_pandas()
    context = json.loads(rows["input"][0])
    context["proposed_plan"]["meals"][0]["recipe_id"] = "R-NEW-9999"
    rows.loc[0, "input"] = json.dumps(context)

    scores = mlflow.pyfunc.load_model(f"models:/{names.REGISTERED_MODEL_NAME}@{names.CHALLENGER_ALIAS}").predict(rows)

    assert not scores["recipe_known"][0] and scores["recipe_known"][1:].all()
    assert 0 <= scores["keep_probability"][0] <= 1


def test_a_rerun_returns_the_same_version_and_keeps_a_newer_challenger(fresh_mlflow, model_in_storage):
    import mlflow

    first = registry.register(model_in_storage)
    newer_dir = model_in_storage.with_name("planner_acceptance-v20261130_000000")
    shutil.copytree(model_in_storage, newer_dir)
    manifest = json.loads((newer_dir / names.MODEL_MANIFEST_FILE).read_text())
    (newer_dir / names.MODEL_MANIFEST_FILE).write_text(json.dumps({**manifest, "training_run_id": newer_dir.name}))
    newer = registry.register(newer_dir)

    again = registry.register(model_in_storage)

    assert (first.version, newer.version) == ("1", "2")
    assert again.version == "1" and not again.created
    client = mlflow.MlflowClient()
    assert len(client.search_model_versions(f"name = '{names.REGISTERED_MODEL_NAME}'")) == 2
    assert str(client.get_model_version_by_alias(names.REGISTERED_MODEL_NAME, names.CHALLENGER_ALIAS).version) == "2"


def test_an_interrupted_registration_is_completed_on_rerun(fresh_mlflow, model_in_storage):
    """Version created, then the run died before its tags and alias: the rerun finishes it."""
    import mlflow

    first = registry.register(model_in_storage)
    client = mlflow.MlflowClient()
    client.delete_registered_model_alias(names.REGISTERED_MODEL_NAME, names.CHALLENGER_ALIAS)
    client.delete_model_version_tag(names.REGISTERED_MODEL_NAME, first.version, "dataset_version")

    again = registry.register(model_in_storage)

    assert again.version == first.version and not again.created
    version = client.get_model_version_by_alias(names.REGISTERED_MODEL_NAME, names.CHALLENGER_ALIAS)
    assert str(version.version) == first.version and version.tags["dataset_version"] == first.dataset_version


def test_a_broken_upload_is_never_registered_and_the_rerun_registers_once(fresh_mlflow, model_in_storage, monkeypatch):
    import mlflow
    import mlflow.pyfunc
    from mlflow.entities import LoggedModelStatus

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated) while writing the pyfunc model")

    with monkeypatch.context() as patch, pytest.raises(OSError, match="disk full"):
        patch.setattr(mlflow.pyfunc, "save_model", crash)
        registry.register(model_in_storage)
    training_run_id = json.loads((model_in_storage / names.MODEL_MANIFEST_FILE).read_text())["training_run_id"]
    assert _versions(training_run_id) == []

    result = registry.register(model_in_storage)

    assert result.created and [str(v.version) for v in _versions(training_run_id)] == [result.version]
    client = mlflow.MlflowClient()
    statuses = sorted(m.status for m in client.search_logged_models(
        experiment_ids=[client.get_experiment_by_name(names.EXPERIMENT_TRAINING).experiment_id]))
    assert statuses == sorted([LoggedModelStatus.FAILED, LoggedModelStatus.READY])


def test_an_unreachable_registry_fails_clearly_and_registers_nothing(model_in_storage, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")

    with pytest.raises(registry.RegistryUnavailable, match=r"MLflow registry at http://127.0.0.1:9 failed"):
        registry.register(model_in_storage)


def _register_in_a_process(model_dir: str, barrier, results) -> None:
    barrier.wait()
    results.put(registry.register(Path(model_dir)).as_dict())


def test_two_processes_registering_the_same_run_at_once_leave_one_version(fresh_mlflow, model_in_storage):
    import mlflow

    registry.registry_client().search_experiments()  # create the store's tables first: the race under test is registration's
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_register_in_a_process, args=(str(model_in_storage), barrier, results))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=240)
    assert [worker.exitcode for worker in workers] == [0, 0]
    outcomes = [results.get(timeout=5) for _ in workers]

    assert outcomes[0]["version"] == outcomes[1]["version"]
    versions = mlflow.MlflowClient().search_model_versions(f"name = '{names.REGISTERED_MODEL_NAME}'")
    assert [str(v.version) for v in versions] == [outcomes[0]["version"]]
    alias = mlflow.MlflowClient().get_model_version_by_alias(names.REGISTERED_MODEL_NAME, names.CHALLENGER_ALIAS)
    assert str(alias.version) == outcomes[0]["version"]


def test_a_duplicate_left_by_a_race_is_removed_and_the_lowest_version_kept(fresh_mlflow, model_in_storage):
    """The state two racing registrations can leave (two versions of one run): any later
    registration converges on the lower one."""
    import mlflow

    first = registry.register(model_in_storage)
    client = mlflow.MlflowClient()
    original = client.get_model_version(names.REGISTERED_MODEL_NAME, first.version)
    duplicate = client.create_model_version(names.REGISTERED_MODEL_NAME, source=original.source, tags=original.tags)
    client.set_registered_model_alias(names.REGISTERED_MODEL_NAME, names.CHALLENGER_ALIAS, duplicate.version)

    again = registry.register(model_in_storage)

    assert again.version == first.version
    assert [str(v.version) for v in client.search_model_versions(f"name = '{names.REGISTERED_MODEL_NAME}'")] == [first.version]
    assert str(client.get_model_version_by_alias(names.REGISTERED_MODEL_NAME, names.CHALLENGER_ALIAS).version) == first.version


def test_the_served_encoding_and_batching_match_the_tokenizer_and_single_forwards(trained_model, published_dataset):
    """The served model tokenizes each row's context once and pads batches itself: the ids must be what
    `tokenizer(context, meal, truncation="only_first")` gives (also when it truncates), and a padded batch
    must score each meal as it scores alone."""
    import torch

    from include.registration.pyfunc_model import PlannerAcceptanceModel

    class Context:
        artifacts = {"model": str(trained_model)}

    model = PlannerAcceptanceModel()
    model.load_context(Context())
    rows = pq.read_table(Path(storage.resolve(published_dataset)) / names.DATASET_TRAINING_FILE).slice(0, 40).to_pandas()
    _, contexts, meal_rows, meals = model.texts(rows)
    pairs = ([contexts[r] for r in meal_rows], meals)
    assert model._pair_template() is not None  # the shortcut is in use, not the fallback
    longest_meal = max(len(i) for i in model.tokenizer(meals, add_special_tokens=False)["input_ids"])
    for limit in (model.tokenizer.model_max_length, longest_meal + 10):  # the second truncates every context
        model.tokenizer.model_max_length = limit
        expected = model.tokenizer(*pairs, truncation="only_first", max_length=limit)["input_ids"]
        assert model.encode(contexts, meal_rows, meals) == expected
    model.tokenizer.model_max_length = 512

    ids = model.encode(contexts, meal_rows, meals)
    batched = model.score(ids, batch_size=16)
    with torch.inference_mode():
        alone = [torch.softmax(model.model(input_ids=torch.tensor([i])).logits, -1)[0, 1].item() for i in ids[:25]]
    assert batched[:25] == pytest.approx(alone, abs=1e-5)
