"""Registration's gatekeeping as tables: which paths may be read, what makes a directory bad."""
from __future__ import annotations

import json

import pytest

from include.core import names
from include.core.hashing import file_sha256
from include.registration.artifacts import ModelPathError, artifact_problems, resolve_model_path


@pytest.fixture()
def models_root(tmp_path):
    root = tmp_path / "models" / "planner_acceptance"
    (root / "planner_acceptance-v20261123_000000").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (root / "escape").symlink_to(tmp_path / "elsewhere")
    return root


@pytest.mark.parametrize(("model_path", "reason"), [
    ("", "empty"),
    ("s3://bucket/models/x", "other schemes"),
    ("planner_acceptance-v20261123_000000/../../elsewhere", "'..'"),
    ("escape", "not inside the models root"),
    ("/etc", "not inside the models root"),
    ("{root}", "not inside the models root"),
    ("planner_acceptance-v20991231_000000", "not a directory"),
])
def test_paths_outside_the_models_root_are_refused(models_root, model_path, reason):
    with pytest.raises(ModelPathError, match=reason):
        resolve_model_path(model_path.format(root=models_root), str(models_root))


@pytest.mark.parametrize("form", ["absolute", "relative", "file_uri"])
def test_a_run_directory_under_the_root_is_accepted(models_root, form):
    run = models_root / "planner_acceptance-v20261123_000000"
    given = {"absolute": str(run), "relative": run.name, "file_uri": f"file://{run}"}[form]
    assert resolve_model_path(given, str(models_root)) == run.resolve()


def _complete_model(directory):
    directory.mkdir(parents=True, exist_ok=True)
    for name in names.MODEL_REQUIRED_FILES:
        (directory / name).write_text(f"content of {name}")
    files = {name: file_sha256(directory / name) for name in names.MODEL_REQUIRED_FILES}
    (directory / names.MODEL_MANIFEST_FILE).write_text(json.dumps({"training_run_id": directory.name, "files": files}))
    (directory / names.SUCCESS_MARKER).write_text("")
    return directory


@pytest.mark.parametrize(("damage", "expected"), [
    (lambda d: None, []),
    (lambda d: (d / names.SUCCESS_MARKER).unlink(), ["_SUCCESS is missing: training did not finish publishing"]),
    (lambda d: (d / "model.safetensors").write_text("tampered"), ["model.safetensors does not match its sha256"]),
    (lambda d: (d / "tokenizer.json").unlink(), ["tokenizer.json is missing", "tokenizer.json is in the manifest"]),
    (lambda d: (d / names.MODEL_MANIFEST_FILE).unlink(), ["training_manifest.json is missing"]),
    (lambda d: (d / names.MODEL_MANIFEST_FILE).write_text("{not json"), ["training_manifest.json is unreadable"]),
    (lambda d: (d / "stray.bin").write_text("x"), ["stray.bin is not in the manifest"]),
])
def test_artifact_problems_name_every_defect(tmp_path, damage, expected):
    directory = _complete_model(tmp_path / "run")
    damage(directory)
    problems = artifact_problems(directory)
    assert len(problems) == len(expected)
    for problem, start in zip(problems, expected):
        assert problem.startswith(start), problems


def test_an_empty_directory_is_one_problem(tmp_path):
    (tmp_path / "empty").mkdir()
    assert artifact_problems(tmp_path / "empty") == [f"{tmp_path / 'empty'} is empty"]
