"""A registered version scores with the feature code it was registered with, in any process: one
with no repository on sys.path, and one that has imported a repository whose features.py has
changed since (as the evaluation task has when it compares the champion with a challenger)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from include.core import names, storage
from include.registration import registry

PROJECT_ROOT = Path(__file__).resolve().parents[2]
URI = f"models:/{names.REGISTERED_MODEL_NAME}/1"

SCORE = textwrap.dedent("""
    import json, sys
    import mlflow, pandas as pd
    rows = pd.read_parquet(sys.argv[1])
    model = mlflow.pyfunc.load_model(sys.argv[2])
    out = {"scores": model.predict(rows)["keep_probability"].tolist(),
           "include": [m.__file__ for n, m in sys.modules.items() if n == "include.core.features"]}
""")


@pytest.fixture()
def registered(fresh_mlflow, model_in_storage, published_dataset, tmp_path):
    """Version 1 and its scores on 20 dataset rows, computed right after registration."""
    import mlflow

    registry.register(model_in_storage)
    rows = pq.read_table(Path(storage.resolve(published_dataset)) / names.DATASET_TRAINING_FILE).slice(0, 20)
    pq.write_table(rows, tmp_path / "rows.parquet")
    scores = mlflow.pyfunc.load_model(URI).predict(rows.to_pandas())["keep_probability"].tolist()
    return {"rows": tmp_path / "rows.parquet", "scores": scores, "model_dir": model_in_storage}


def _run(code: str, *args: str, cwd: Path, env: dict, isolated: bool = False) -> dict:
    result = subprocess.run([sys.executable, *(["-I"] if isolated else []), "-c", code, *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_version_loads_and_scores_in_a_process_without_the_repository(registered, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = SCORE + textwrap.dedent(f"""
        import importlib.util, os
        repo = {str(PROJECT_ROOT)!r}
        out["repo_on_path"] = [p for p in sys.path if p and os.path.abspath(p).startswith(repo)
                               and ".venv" not in p]
        out["include_importable"] = importlib.util.find_spec("include") is not None
        print(json.dumps(out))
    """)
    out = _run(code, str(registered["rows"]), URI, cwd=tmp_path, env=env, isolated=True)
    assert out["repo_on_path"] == [] and out["include_importable"] is False and out["include"] == []
    assert out["scores"] == pytest.approx(registered["scores"], abs=1e-6)


def test_changed_features_in_the_repository_do_not_rescore_an_old_version(registered, tmp_path):
    copy = tmp_path / "repository"
    shutil.copytree(PROJECT_ROOT / "include", copy / "include", ignore=shutil.ignore_patterns("__pycache__"))
    features = copy / "include" / "core" / "features.py"
    features.write_text(features.read_text() + textwrap.dedent("""

        _registered_context_text = context_text


        def context_text(context: dict) -> str:
            return "household_changed_since " + _registered_context_text(context)
    """))
    env = {**os.environ, "PYTHONPATH": str(copy)}
    code = SCORE + textwrap.dedent("""
        import include.core.features  # the copy's, changed: imported first, as the evaluation task does
        from include.registration.pyfunc_model import PlannerAcceptanceModel

        out["include"] = [include.core.features.__file__]
        model = mlflow.pyfunc.load_model(sys.argv[2])
        out["scores"] = model.predict(rows)["keep_probability"].tolist()

        class Context:
            artifacts = {"model": sys.argv[3]}

        today = PlannerAcceptanceModel()   # the same weights with today's features: the control
        today.load_context(Context())
        out["today"] = today.predict(None, rows)["keep_probability"].tolist()
        print(json.dumps(out))
    """)
    out = _run(code, str(registered["rows"]), URI, str(registered["model_dir"]), cwd=copy, env=env)
    assert out["include"] == [str(features)]
    assert out["today"] != pytest.approx(registered["scores"], abs=1e-6)  # the change does move scores
    assert out["scores"] == pytest.approx(registered["scores"], abs=1e-6)  # but not the registered version's


def test_a_version_whose_class_is_the_projects_own_code_is_refused_not_rescored(registered, tmp_path):
    """Given a version logged as versions were before they carried their own code (its Python model
    pickled by reference to this project's include.registration.pyfunc_model), when evaluation or the
    serving consumer loads it, then it is refused with the reason: it would read today's features.py."""
    import mlflow

    from include.core.tracking import ProjectCodeModel, load_registered_model
    from include.evaluation.replay import EvaluationError
    from include.evaluation.scoring import ModelRef, load_model
    from include.registration.pyfunc_model import PlannerAcceptanceModel
    from include.serving.consumer import Ranker

    assert load_registered_model(URI)  # a version registered today carries its own package: loads

    # no set_experiment: it would stay the process's active experiment for the tests after this one
    experiment_id = mlflow.MlflowClient().create_experiment("old-style-versions")
    with mlflow.start_run(experiment_id=experiment_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=PlannerAcceptanceModel(),
                                       artifacts={"model": str(registered["model_dir"])})
    old = mlflow.pyfunc.load_model(info.model_uri)
    assert type(old.unwrap_python_model()).__module__ == "include.registration.pyfunc_model"  # scores with ours
    with pytest.raises(ProjectCodeModel, match="before model versions carried their own feature code"):
        load_registered_model(info.model_uri)
    with pytest.raises(EvaluationError, match="version 9: .*Retrain it"):
        load_model(ModelRef("9", info.model_uri, {}, ()))
    with pytest.raises(ProjectCodeModel):
        Ranker().model(info.model_uri)
