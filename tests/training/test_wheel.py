"""The planner-trainer wheel: built from pyproject.toml, installed into a separate environment,
and its `planner-train` console script run from outside the repository (as the image and the
Databricks wheel task do), with the pods' argv and with the one Databricks builds."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from include.core import names
from include.core.config import training_settings
from include.training.backends import (
    DATABRICKS_TOKEN_MAX_CHARS,
    databricks_argv,
    pod_command,
    trainer_argv,
    trainer_options,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed_trainer(tmp_path_factory) -> Path:
    """A venv holding only the wheel; its dependencies come from the project venv via a .pth
    (installing torch again would take minutes and prove nothing about our package)."""
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(work / "dist"), str(PROJECT_ROOT)], check=True, cwd=work)
    (wheel,) = (work / "dist").glob("planner_trainer-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        entry_points = archive.read(next(n for n in archive.namelist() if n.endswith("entry_points.txt"))).decode()
        packaged = {n.split("/")[1] for n in archive.namelist() if n.startswith("include/") and n.count("/") == 2}
    assert "planner-train = include.training.cli:main" in entry_points
    assert "planner-train-ddp = include.training.launch:main" in entry_points  # the multi-GPU pod and Databricks
    assert packaged == {"core", "training"}, "the wheel carries the trainer and the core only"

    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=_clean_env())
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
                   check=True, env=_clean_env(), cwd=work)
    return venv / "bin" / "planner-train"


def _clean_env() -> dict:
    """Without PYTHONPATH: the package must come from the wheel, not from the checkout."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _run(script: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(script), *args], cwd=cwd, env=_clean_env(), capture_output=True, text=True,
                          timeout=600)


def test_console_script_from_the_installed_wheel(installed_trainer, published_dataset, tmp_path):
    help_run = _run(installed_trainer, tmp_path, "--help")
    assert help_run.returncode == 0 and "--training-run-id" in help_run.stdout

    missing = _run(installed_trainer, tmp_path, "--dataset-uri", str(tmp_path / "nope"), "--output-root",
                   str(tmp_path / "models"), "--training-run-id", "planner_acceptance-v20261123_000000")
    assert missing.returncode == 2 and "does not exist" in missing.stderr

    trained = _run(installed_trainer, tmp_path, "--dataset-uri", published_dataset, "--output-root",
                   str(tmp_path / "models"), "--training-run-id", "planner_acceptance-v20261123_000000",
                   "--epochs", "1", "--max-rows", "200", "--batch-size", "32")
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert (tmp_path / "models" / "planner_acceptance-v20261123_000000" / names.SUCCESS_MARKER).exists()
    origin = subprocess.run([str(installed_trainer.parent / "python"), "-c",
                             "import include.training.cli as m; print(m.__file__)"], cwd=tmp_path,
                            capture_output=True, text=True, env=_clean_env())
    assert str(installed_trainer.parents[1]) in origin.stdout, origin.stdout + origin.stderr


PARAMS = {"base_model": "tiny", "epochs": 1, "learning_rate": 0.001, "batch_size": 32, "seed": 7, "max_rows": 200,
          "holdout_days": 7, "lora": False}


def test_the_installed_script_takes_the_argv_databricks_builds(installed_trainer, published_dataset, tmp_path):
    run_id = "planner_acceptance-v20261123_000002"
    argv = databricks_argv(trainer_options(published_dataset, str(tmp_path / "models"), run_id, PARAMS))
    assert "--lora=false" in argv and all(arg.startswith("--") and "=" in arg for arg in argv)

    trained = _run(installed_trainer, tmp_path, *argv)

    assert trained.returncode == 0, trained.stderr[-2000:]
    model_dir = tmp_path / "models" / run_id
    assert (model_dir / names.SUCCESS_MARKER).exists()
    manifest = json.loads((model_dir / names.MODEL_MANIFEST_FILE).read_text())
    assert manifest["training_run_id"] == run_id and manifest["hyperparameters"]["lora"] is False


def _pod_run(venv_bin: Path, cwd: Path, gpu_count: int, argv: list[str]) -> subprocess.CompletedProcess:
    """The pod's command line (`pod_command` + the trainer's argv) as the image runs it: the installed
    wheel's scripts first on PATH (then the project venv's, where torch's own torchrun is)."""
    env = {**_clean_env(), "OMP_NUM_THREADS": "1",
           "PATH": os.pathsep.join([str(venv_bin), str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    return subprocess.run([*pod_command(gpu_count), *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)


def test_the_two_gpu_pod_command_keeps_exit_2_and_3_and_trains_a_good_input(installed_trainer, published_dataset,
                                                                           tmp_path, fresh_mlflow):
    """Two gloo processes under the exact command a 2-GPU pod runs. torchrun reported a refusing
    worker as exit 1, so the pod's refused input was retried: the launcher keeps 2 (bad input) and 3
    (busy: another live trainer's lease), and a good input trains and publishes one model, one run."""
    import mlflow

    from include.training.checkpoints import CheckpointStore, Lease, default_checkpoint_root

    bin_dir, models = installed_trainer.parent, str(tmp_path / "models" / names.REGISTERED_MODEL_NAME)
    run_id = "planner_acceptance-v20261123_000004"
    missing = trainer_argv(trainer_options(str(tmp_path / "datasets" / "planner" / "2026-11-23"), models, run_id,
                                           PARAMS))
    refused = _pod_run(bin_dir, tmp_path, 2, missing)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "planner-train: bad input:" in refused.stderr and "does not exist" in refused.stderr

    argv = trainer_argv(trainer_options(published_dataset, models, run_id, {**PARAMS, "max_rows": 300,
                                                                             "batch_size": 16}))
    store = CheckpointStore(default_checkpoint_root(models), run_id)
    other = Lease(store, owner={"token": "another-pod", "host": "planner-train-old-pod", "pid": 1})
    other.write()  # a pod of the same run id that still runs (its heartbeat is fresh)
    busy = _pod_run(bin_dir, tmp_path, 2, argv)
    assert busy.returncode == 3, busy.stderr[-3000:]
    assert "planner-train: busy: another trainer holds the lease" in busy.stderr
    assert store.read_run() is None and store.complete() == []  # it wrote nothing there
    other.fs.rm(other.path)  # that pod finished (it released its lease)

    trained = _pod_run(bin_dir, tmp_path, 2, argv)
    assert trained.returncode == 0, trained.stderr[-3000:]
    manifest = json.loads((Path(models) / run_id / names.MODEL_MANIFEST_FILE).read_text())
    assert manifest["world_size"] == 2 and (Path(models) / run_id / names.SUCCESS_MARKER).exists()
    client = mlflow.MlflowClient(tracking_uri=fresh_mlflow)
    experiment = client.get_experiment_by_name(names.EXPERIMENT_TRAINING)
    assert len(client.search_runs([experiment.experiment_id], f"tags.training_run_id = '{run_id}'")) == 1


class StandInWorkspace(ThreadingHTTPServer):
    """Databricks' Jobs API as far as train_databricks uses it. A submit carrying a token it has seen
    answers with that token's run (as Databricks does); a new one runs the wheel task: the installed
    entry point with the argv Databricks builds from named_parameters, in a thread."""

    def __init__(self, venv: Path, cwd: Path):
        super().__init__(("127.0.0.1", 0), _WorkspaceHandler)
        self.venv, self.cwd = venv, cwd
        self.runs: dict[int, dict] = {}
        self.run_by_token: dict[str, int] = {}
        self.submits = 0
        self.lose_next_response = False  # the run starts but the client sees a 503 (and retries)
        self.fail_next: str | None = None  # the next run's cluster dies with this message, before the task

    def submit(self, payload: dict) -> int:
        token = payload["idempotency_token"]
        assert len(token) <= DATABRICKS_TOKEN_MAX_CHARS, token
        if token in self.run_by_token:
            return self.run_by_token[token]
        (task,) = payload["tasks"]
        wheel_task = task["python_wheel_task"]
        assert list((self.venv / "lib").glob(f"python3*/site-packages/{wheel_task['package_name']}-*.dist-info"))
        run_id = len(self.runs) + 1
        run = {"task_key": task["task_key"], "state": "RUNNING", "result": "", "message": "",
               "argv": databricks_argv(wheel_task["named_parameters"])}
        self.runs[run_id] = run
        self.run_by_token[token] = run_id
        if self.fail_next:
            run.update(state="INTERNAL_ERROR", result="FAILED", message=self.fail_next)
            self.fail_next = None
        else:
            threading.Thread(target=self._run_wheel_task, args=(run, wheel_task["entry_point"]), daemon=True).start()
        return run_id

    def _run_wheel_task(self, run: dict, entry_point: str) -> None:
        done = _run(self.venv / "bin" / entry_point, self.cwd, *run["argv"])
        run.update(state="TERMINATED", result="SUCCESS" if done.returncode == 0 else "FAILED",
                   message=done.stderr[-2000:])

    def run_info(self, run_id: int) -> dict:
        run = self.runs[run_id]
        state = {"life_cycle_state": run["state"], "result_state": run["result"], "state_message": run["message"]}
        return {"run_id": run_id, "run_page_url": f"http://{self.server_address[0]}/#run/{run_id}", "state": state,
                "tasks": [{"run_id": 1000 + run_id, "task_key": run["task_key"], "state": state}]}


class _WorkspaceHandler(BaseHTTPRequestHandler):
    server: StandInWorkspace

    def do_POST(self):
        assert self.path == "/api/2.2/jobs/runs/submit", self.path
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.submits += 1
        run_id = self.server.submit(payload)
        if self.server.lose_next_response:
            self.server.lose_next_response = False
            return self._reply(503, {"error_code": "TEMPORARILY_UNAVAILABLE"})
        self._reply(200, {"run_id": run_id})

    def do_GET(self):
        url = urlsplit(self.path)
        run_id = int(parse_qs(url.query)["run_id"][0])
        if url.path == "/api/2.2/jobs/runs/get":
            return self._reply(200, self.server.run_info(run_id))
        assert url.path == "/api/2.2/jobs/runs/get-output", url.path
        self._reply(200, {"error": self.server.runs[run_id - 1000]["message"]})

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


class TaskStateStore(dict):
    """Airflow's task_state_store, kept across a task's tries: where the operator records its run."""

    def set(self, key, value) -> None:
        self[key] = value


@pytest.mark.e2e
def test_databricks_starts_the_trainer_and_a_retry_after_a_failed_run_submits_a_new_one(
        installed_trainer, published_dataset, databricks_try, tmp_path, monkeypatch):
    from airflow.sdk.exceptions import AirflowException

    workspace = StandInWorkspace(installed_trainer.parents[1], tmp_path)
    threading.Thread(target=workspace.serve_forever, daemon=True).start()
    host, port = workspace.server_address
    monkeypatch.setenv(f"AIRFLOW_CONN_{training_settings().databricks_conn_id.upper()}", json.dumps(
        {"conn_type": "databricks", "host": host, "port": port, "schema": "http", "password": "dapi-test"}))
    run_id = "planner_acceptance-v20261123_000003"
    options = trainer_options(published_dataset, str(tmp_path / "models"), run_id, PARAMS)
    inputs = {"training_run_id": run_id, "options": options}
    store = TaskStateStore()
    try:
        # try 1: the submit's response is lost, the hook re-submits (one run), and its cluster dies
        workspace.lose_next_response, workspace.fail_next = True, "Cluster terminated: spot instance lost"
        task, context = databricks_try(1, inputs, store)
        task.polling_period_seconds, task.databricks_retry_delay = 1, 0.1
        with pytest.raises(AirflowException, match="spot instance lost"):
            task.execute(context)
        assert (workspace.submits, len(workspace.runs)) == (2, 1)

        # try 2 (Airflow's retry): a new token, so a new run, which trains
        task, context = databricks_try(2, inputs, store)
        task.polling_period_seconds = 1
        task.execute(context)
    finally:
        workspace.shutdown()
    assert (workspace.submits, len(workspace.runs)) == (3, 2)
    second = workspace.runs[2]
    assert second["result"] == "SUCCESS", second["message"]
    assert second["argv"] == databricks_argv(options) and "--lora=false" in second["argv"]
    assert (tmp_path / "models" / run_id / names.SUCCESS_MARKER).exists()
    assert context["ti"].pushed["run_id"] == 2
