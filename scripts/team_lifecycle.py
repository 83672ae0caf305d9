"""`make team-lifecycle`: the model lifecycle on the team topology, on this machine's loopback, no Docker.

What it starts (and stops, however it ends): an S3-protocol object store (moto's standalone
server; the bucket `planner-team`), an MLflow tracking server (PostgreSQL backend store,
artifacts in the bucket, MLflow's basic-auth app: the tasks sign in as a service user), and
Airflow with CeleryExecutor: api-server, scheduler, dag-processor, triggerer (metadata in
PostgreSQL, Redis as the Celery broker) and two Celery workers. Each worker has its own Celery
hostname, working directory, HOME, TMPDIR and Airflow home, its own task-instance hostname
(127.0.0.11, 127.0.0.12) and a log server of its own bound there; task logs go to the bucket
through Airflow's remote logging, so the UI shows any task's log whichever worker ran it. The
storage root is `s3://planner-team/planner`: nothing of the lifecycle stays on a worker's disk
but removed scratch. The events are in a database of their own (`planner_team_events`), never
`make lifecycle`'s.

It runs the same two weeks as `make lifecycle` (scripts/lifecycle.py: the same chain, the same
summary), says which worker ran each task and where the datasets and models lie in the bucket.
Its state is under var/team/ (Airflow home, workers, the object store's data, MLflow's
credentials, `lifecycle.json`); a re-run in the same world reports the finished weeks without
retraining, in another world it starts from a clean state of its own (its databases, its bucket).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import sys
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from include.core import names, storage
from include.core.config import PROJECT_ROOT, settings
from include.core.local_postgres import NotOurDatabase, claim_demo_database, drop_database, ensure_database
from include.events import generate
from scripts.airflow_env import airflow_env
from scripts.lifecycle import (
    CHAIN,
    DAGS,
    DEMO_CANARY,
    ChainFailed,
    _drop_promotion_history,
    _manifest,
    _model_version_of_newest_model,
    _runs,
    _step,
    _version_exists,
    canary_week,
    follow_online_eval,
    report_week,
    run_chain,
)

TEAM_HOME = Path(os.environ.get("PLANNER_TEAM_HOME") or PROJECT_ROOT / "var" / "team")
BUCKET = "planner-team"
WORKERS = 2
WORKER_ADDRESS = "127.0.0.{}"   # worker N's task-instance hostname and log-server address: 127.0.0.1N
MLFLOW_SERVICE_USER = "planner-airflow"
S3_CONN_ID = "planner_object_store"


def _with_db(dsn: str, dbname: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def _sqlalchemy(dsn: str) -> str:
    """A libpq URI as the SQLAlchemy URL Airflow wants (psycopg2 is the driver Airflow's extras install)."""
    return "postgresql+psycopg2://" + dsn.split("://", 1)[1]


def _secret(path: Path, make) -> str:
    """A secret generated once and kept (0600) under the team's home."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(make())
        partial.chmod(0o600)
        partial.replace(path)
    return path.read_text().strip()


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    """This process's environment with `values` set (for the summary's readers), restored afterwards."""
    previous = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(previous)


# --- the pieces of the topology ---------------------------------------------------------------
class Topology:
    """Names, locations and credentials of one team topology (var/team/ by default; tests use their own)."""

    def __init__(self, home: Path, db_prefix: str, events_dsn: str):
        self.home = home
        self.events_dsn = events_dsn                     # the claimed events database
        self.airflow_dsn = _with_db(events_dsn, f"{db_prefix}_airflow")
        self.mlflow_dsn = _with_db(events_dsn, f"{db_prefix}_mlflow")
        self.mlflow_auth_dsn = _with_db(events_dsn, f"{db_prefix}_mlflow_auth")
        self.queue = db_prefix                           # the Celery queue: only this topology's workers read it
        self.redis_url = os.environ.get("PLANNER_TEAM_BROKER_URL") or "redis://127.0.0.1:6379/0"
        self.storage_root = f"s3://{BUCKET}/planner"
        self.state_file = home / "lifecycle.json"
        self.airflow_home = home / "airflow"
        self.mlflow_home = home / "mlflow"
        self.s3_home = home / "object-store"
        self.s3 = None
        self.mlflow = None
        self.services = None
        self.migration = None                            # `airflow db migrate`, started early in the background
        from scripts.airflow_services import free_port

        self.api_port, self.log_server_port, self.trigger_log_port = free_port(), free_port(), free_port()

    # credentials, made once
    def mlflow_admin_password(self) -> str:
        return _secret(self.mlflow_home / "admin_password", lambda: secrets.token_urlsafe(18))

    def mlflow_service_password(self) -> str:
        return _secret(self.mlflow_home / "service_password", lambda: secrets.token_urlsafe(18))

    def state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def save_state(self, state: dict) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.state_file.with_suffix(".partial")
        partial.write_text(json.dumps(state, indent=2, sort_keys=True))
        partial.replace(self.state_file)

    # object store ---------------------------------------------------------------------------
    def start_object_store(self) -> None:
        from scripts.object_store import S3Server

        self.s3 = S3Server(self.s3_home, persist=True).start()
        self.s3.create_bucket(BUCKET)

    def client_env(self) -> dict[str, str]:
        """What any process of the topology needs to reach the bucket and the MLflow server."""
        env = dict(self.s3.client_env())
        env.update({"PLANNER_STORAGE_ROOT": self.storage_root,
                    "PLANNER_MLFLOW_ARTIFACT_ROOT": f"s3://{BUCKET}/mlflow"})
        if self.mlflow is not None:
            env.update({"MLFLOW_TRACKING_URI": self.mlflow.url, "MLFLOW_TRACKING_USERNAME": MLFLOW_SERVICE_USER,
                        "MLFLOW_TRACKING_PASSWORD": self.mlflow_service_password()})
        return env

    # MLflow ---------------------------------------------------------------------------------
    def start_mlflow(self) -> None:
        from scripts.airflow_services import MlflowServer

        self.mlflow_home.mkdir(parents=True, exist_ok=True)
        if not (self.mlflow_home / "admin_password").exists():
            drop_database(self.mlflow_auth_dsn)  # users made with a password we no longer know
        ensure_database(self.mlflow_dsn)
        ensure_database(self.mlflow_auth_dsn)
        config = self.mlflow_home / "basic_auth.ini"
        config.write_text("[mlflow]\ndefault_permission = READ\n"
                          f"database_uri = {self.mlflow_auth_dsn}\n"
                          "admin_username = admin\n"
                          "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
        env = {**self.s3.client_env(), "MLFLOW_AUTH_CONFIG_PATH": str(config),
               "MLFLOW_AUTH_ADMIN_PASSWORD": self.mlflow_admin_password(),
               "MLFLOW_FLASK_SERVER_SECRET_KEY": _secret(self.mlflow_home / "flask_secret",
                                                         lambda: secrets.token_urlsafe(32))}
        self.mlflow = MlflowServer(self.mlflow_home / "server", artifact_root=f"s3://{BUCKET}/mlflow", env=env,
                                   backend_store_uri=self.mlflow_dsn, app_name="basic-auth").start(timeout=180)
        self._ensure_service_user()

    def _mlflow_admin(self, method: str, path: str, body: dict | None = None):
        import base64

        token = base64.b64encode(f"admin:{self.mlflow_admin_password()}".encode()).decode()
        request = urllib.request.Request(self.mlflow.url + path, method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Authorization": f"Basic {token}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")

    def _ensure_service_user(self) -> None:
        try:
            self._mlflow_admin("GET", f"/api/2.0/mlflow/users/get?username={MLFLOW_SERVICE_USER}")
            self._mlflow_admin("PATCH", "/api/2.0/mlflow/users/update-password",
                               {"username": MLFLOW_SERVICE_USER, "password": self.mlflow_service_password()})
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
            self._mlflow_admin("POST", "/api/2.0/mlflow/users/create",
                               {"username": MLFLOW_SERVICE_USER, "password": self.mlflow_service_password()})

    def stop_mlflow(self) -> None:
        if self.mlflow is not None:
            self.mlflow.stop()
        self.mlflow = None

    # Airflow --------------------------------------------------------------------------------
    def worker_dir(self, n: int) -> Path:
        return self.home / "workers" / f"worker-{n}"

    def airflow_env(self) -> dict[str, str]:
        from cryptography.fernet import Fernet

        from scripts.object_store import ACCESS_KEY, REGION, SECRET_KEY

        env = airflow_env(self.events_dsn, home=str(self.airflow_home))
        env.update(self.client_env())
        env.update({
            "PLANNER_DATASET_SCHEDULE": "none",  # triggered by this script; no cron run on unpause
            "PLANNER_ONLINE_EVAL_SCHEDULE": "none",  # the canary's look is triggered at its week's end
            **{key: os.environ.get(key, value) for key, value in DEMO_CANARY.items()},
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": _sqlalchemy(self.airflow_dsn),
            "AIRFLOW__CELERY__BROKER_URL": self.redis_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + _sqlalchemy(self.airflow_dsn),
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": self.queue,
            "AIRFLOW__CORE__FERNET_KEY": _secret(self.airflow_home / "fernet_key",
                                                 lambda: Fernet.generate_key().decode()),
            "AIRFLOW__API__SECRET_KEY": _secret(self.airflow_home / "api_secret_key",
                                                lambda: secrets.token_urlsafe(32)),
            # Task logs: to the bucket when a task ends (then removed locally); a running task's log
            # from its worker's log server at <ti.hostname>:<this port>.
            "AIRFLOW__LOGGING__REMOTE_LOGGING": "True",
            "AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER": f"s3://{BUCKET}/airflow/logs",
            "AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID": S3_CONN_ID,
            "AIRFLOW__LOGGING__DELETE_LOCAL_LOGS": "True",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.log_server_port),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.trigger_log_port),
            f"AIRFLOW_CONN_{S3_CONN_ID.upper()}": json.dumps({
                "conn_type": "aws", "login": ACCESS_KEY, "password": SECRET_KEY,
                "extra": {"endpoint_url": self.s3.url, "region_name": REGION}}),
        })
        return env

    def workers(self) -> list:
        from scripts.airflow_services import ExtraService

        airflow = str(Path(sys.executable).with_name("airflow"))
        extras = []
        for n in range(1, WORKERS + 1):
            root = self.worker_dir(n)
            for sub in ("airflow", "home", "tmp"):
                (root / sub).mkdir(parents=True, exist_ok=True)
            own = {"AIRFLOW_HOME": str(root / "airflow"), "HOME": str(root / "home"), "TMPDIR": str(root / "tmp"),
                   "PLANNER_HOSTNAME": WORKER_ADDRESS.format(10 + n),
                   "AIRFLOW__CORE__HOSTNAME_CALLABLE": "scripts.airflow_services.hostname_from_env"}
            extras.append(ExtraService(f"worker-{n}", [airflow, "celery", "worker", "-q", self.queue,
                                                       "--celery-hostname", f"worker-{n}@{self.queue}",
                                                       "--skip-serve-logs", "--without-mingle", "--without-gossip"],
                                       env=own, cwd=root))
            # Its own log server, on its own address (the api-server reads a running task's log there).
            extras.append(ExtraService(f"worker-{n}-log-server", [
                sys.executable, "-c",
                "import sys, uvicorn; uvicorn.run('airflow.utils.serve_logs.log_server:get_app', factory=True, "
                "host=sys.argv[1], port=int(sys.argv[2]), log_config=None, access_log=False, log_level='warning')",
                WORKER_ADDRESS.format(10 + n), str(self.log_server_port)], env=own, cwd=root))
        return extras

    def start_migration(self) -> None:
        """`airflow db migrate` of the metadata database in the background (PostgreSQL: tens of seconds
        on a fresh database), while the MLflow server starts and the events are generated."""
        from scripts.airflow_services import service_env, spawn_service

        ensure_database(self.airflow_dsn)
        env = service_env(self.airflow_env(), self.airflow_home, self.api_port, executor="CeleryExecutor")
        (self.airflow_home / "service-logs").mkdir(parents=True, exist_ok=True)
        self.migration = spawn_service([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], env,
                                       self.airflow_home / "service-logs" / "db-migrate.log")

    def finish_migration(self) -> None:
        from scripts.airflow_services import stop_service

        if self.migration is None:
            return
        try:
            code = self.migration.wait(timeout=600)
        finally:
            stop_service(self.migration)
            self.migration = None
        if code:
            raise RuntimeError(f"airflow db migrate exited with {code}: see "
                               f"{self.airflow_home / 'service-logs' / 'db-migrate.log'}")

    def start_airflow(self) -> None:
        from scripts.airflow_services import AirflowServices

        ensure_database(self.airflow_dsn)
        self.finish_migration()
        self.services = AirflowServices(self.airflow_home, self.airflow_env(), port=self.api_port,
                                        executor="CeleryExecutor", extra_services=self.workers())
        self.services.start(timeout=180)
        self._wait_workers_ready()

    def _wait_workers_ready(self, timeout: float = 120) -> None:
        """Both Celery workers consuming the queue, and each one's log server answering on its address."""
        logs = self.airflow_home / "service-logs"
        deadline = time.monotonic() + timeout
        pending = {f"worker-{n}" for n in range(1, WORKERS + 1)} | {f"worker-{n}-log-server"
                                                                   for n in range(1, WORKERS + 1)}
        while pending and time.monotonic() < deadline:
            for name in sorted(pending):
                if self.services.processes[name].poll() is not None:
                    raise RuntimeError(f"{name} exited: see {logs / (name + '.log')}")
                if name.endswith("-log-server"):
                    if _log_server_answers(WORKER_ADDRESS.format(10 + int(name.split("-")[1])), self.log_server_port):
                        pending.discard(name)
                elif " ready." in (logs / f"{name}.log").read_text(errors="replace"):
                    pending.discard(name)
            time.sleep(0.5)
        if pending:
            raise TimeoutError(f"{', '.join(sorted(pending))} not ready after {timeout}s: see {logs}")

    def sweep_scratch(self) -> list[str]:
        """Remove what tasks left in the workers' TMPDIRs (scratch; e.g. the copy of a model that
        MLflow's load_model downloads into a temporary directory and keeps): call it while no task runs."""
        removed = []
        for n in range(1, WORKERS + 1):
            tmp = self.worker_dir(n) / "tmp"
            for entry in sorted(tmp.iterdir()) if tmp.exists() else []:
                if entry.is_dir() and not entry.is_symlink():
                    size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
                    shutil.rmtree(entry)
                else:
                    size = entry.lstat().st_size
                    entry.unlink()
                removed.append(f"worker-{n}:{entry.name} ({size / 1e6:.1f} MB)")
        return removed

    def stop(self) -> None:
        """Everything it started, in reverse order; the object store saves its data last."""
        from scripts.airflow_services import stop_service

        for stop in (lambda: self.migration and stop_service(self.migration),
                     lambda: self.services and self.services.stop(), self.stop_mlflow,
                     lambda: self.s3 and self.s3.stop()):
            with contextlib.suppress(Exception):
                stop()
        self.services = self.s3 = None

    # a clean state of its own ---------------------------------------------------------------
    def reset(self) -> None:
        """Forget what earlier runs made: its MLflow store, Airflow runs, bucket, promotion history."""
        from scripts.airflow_services import stop_service

        if self.migration is not None:
            stop_service(self.migration)
            self.migration = None
        self.stop_mlflow()
        drop_database(self.mlflow_dsn)
        print(f"    dropped the MLflow store (database {urlsplit(self.mlflow_dsn).path.lstrip('/')})")
        drop_database(self.airflow_dsn)
        print(f"    dropped the Airflow runs (database {urlsplit(self.airflow_dsn).path.lstrip('/')})")
        removed = self.s3.delete_bucket_contents(BUCKET)
        self.s3.save()
        print(f"    emptied s3://{BUCKET} ({removed} objects: datasets, models, replays, MLflow artifacts, task logs)")
        for path in (self.home / "workers", self.airflow_home / "logs"):
            shutil.rmtree(path, ignore_errors=True)
        _drop_promotion_history(self.events_dsn)
        print("    dropped the promotion history (schema ml of the team's events database)")
        self.state_file.unlink(missing_ok=True)


def _log_server_answers(address: str, port: int) -> bool:
    """A worker's log server is up when it refuses an unsigned request (403), as Airflow's does."""
    try:
        urllib.request.urlopen(f"http://{address}:{port}/log/probe", timeout=2)
        return True
    except urllib.error.HTTPError as exc:
        return exc.code in (401, 403, 404)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


class LiveLogProbe:
    """While the chain runs: the log of a running task through the REST API (what the UI shows
    while it runs), which the api-server fetches from the log server of the worker running it
    (`http://<ti.hostname>:<port>/log/...`, the first source it names). One per worker at most."""

    def __init__(self, services, interval: float = 2.0):
        import threading

        self.services, self.interval, self.seen = services, interval, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-log-probe", daemon=True)

    def __enter__(self) -> LiveLogProbe:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):  # a probe, never a reason for the chain to fail
                running = self.services.request("GET", "/api/v2/dags/~/dagRuns/~/taskInstances?state=running")
                for ti in running.get("task_instances", []):
                    worker = worker_of(ti.get("hostname"))
                    if worker in self.seen or not ti.get("hostname"):
                        continue
                    body = self.services.request(
                        "GET", f"/api/v2/dags/{ti['dag_id']}/dagRuns/{ti['dag_run_id']}/taskInstances/"
                               f"{ti['task_id']}/logs/{max(ti.get('try_number') or 1, 1)}?full_content=true"
                               + (f"&map_index={ti['map_index']}" if ti.get("map_index", -1) not in (-1, None) else ""))
                    sources = [str(e.get("event", "")) for e in body.get("content", [])[:4] if isinstance(e, dict)]
                    served = next((x for x in sources if x.startswith(f"http://{ti['hostname']}:")), None)
                    if served:
                        self.seen[worker] = {"task": f"{ti['dag_id']}.{ti['task_id']}", "source": served,
                                             "lines": len(body.get("content", []))}


# --- what the run reports ---------------------------------------------------------------------
def read_back_logs(services, placed: list[dict]) -> dict[str, str]:
    """For one task of each worker: its log through the REST API (what the UI shows), and where the
    api-server read it from (the bucket, through remote logging)."""
    found = {}
    for worker in sorted({p["worker"] for p in placed}):
        p = next(p for p in placed if p["worker"] == worker and p["state"] == "success")
        mapped = f"&map_index={p['map_index']}" if p.get("map_index", -1) not in (-1, None) else ""
        body = services.request("GET", f"/api/v2/dags/{p['dag_id']}/dagRuns/{p['run_id']}/taskInstances/"
                                       f"{p['task_id']}/logs/1?full_content=true{mapped}")
        text = json.dumps(body.get("content", []))
        source = f"s3://{BUCKET}/airflow/logs" if f"s3://{BUCKET}/airflow/logs" in text else "elsewhere"
        found[worker] = f"{p['dag_id']}.{p['task_id']}: {len(body.get('content', []))} log lines, read from {source}"
    return found
def worker_of(hostname: str | None) -> str:
    for n in range(1, WORKERS + 1):
        if hostname == WORKER_ADDRESS.format(10 + n):
            return f"worker-{n}"
    return hostname or "?"


def task_placement(services) -> list[dict]:
    """The newest run of each DAG of the chain: which worker ran each of its tasks (REST: hostname)."""
    placed = []
    for dag_id in CHAIN:
        [run, *_] = _runs(services, dag_id)
        tis = services.task_instances(dag_id, run["dag_run_id"])
        for ti in sorted(tis.values(), key=lambda t: t.get("start_date") or ""):
            if ti.get("hostname"):
                placed.append({"dag_id": dag_id, "run_id": run["dag_run_id"], "task_id": ti["task_id"],
                               "map_index": ti.get("map_index", -1),
                               "state": ti["state"], "hostname": ti["hostname"], "worker": worker_of(ti["hostname"]),
                               "queue": ti.get("queue")})
    return placed


def print_placement(placed: list[dict]) -> None:
    by_worker: dict[str, list[str]] = {}
    for p in placed:
        by_worker.setdefault(p["worker"], []).append(f"{p['dag_id']}.{p['task_id']}")
    for worker, tasks in sorted(by_worker.items()):
        print(f"    ran on Celery {worker} (hostname {next(p['hostname'] for p in placed if p['worker'] == worker)}): "
              f"{len(tasks)} tasks: {', '.join(tasks)}")


def locations(dataset_version: str, model_version: str) -> dict:
    from include.registration.registry import registry_client

    client = registry_client()
    version = client.get_model_version(names.REGISTERED_MODEL_NAME, model_version)
    run_id = version.tags["training_run_id"]
    dataset = storage.dataset_uri(dataset_version)
    model = storage.join(storage.models_root(), run_id)
    model_id = version.model_id or (version.source.removeprefix("models:/")
                                    if (version.source or "").startswith("models:/m-") else None)
    artifacts = client.get_logged_model(model_id).artifact_location if model_id else version.source
    return {"dataset": dataset, "dataset_published": storage.resolve(dataset), "model": model,
            "model_published": storage.resolve(model), "registered_artifacts": artifacts,
            "training_run_id": _manifest(run_id)["training_run_id"]}


def print_locations(where: dict) -> None:
    print(f"    dataset in the bucket: {where['dataset']} (published: {where['dataset_published']})")
    print(f"    model in the bucket: {where['model']} (published: {where['model_published']})")
    print(f"    registered version's artifacts (MLflow server, in the bucket): {where['registered_artifacts']}")


def local_leftovers(topology: Topology, upload_wait_s: float = 30.0) -> list[str]:
    """Files of the lifecycle left on the workers' disks (scratch and task logs must be gone).

    A worker uploads a task's log to the bucket, then removes it, after the task ended: the last
    task's log can still be on its way when the run is seen finished, so task logs alone are given
    `upload_wait_s` to go."""
    deadline = time.monotonic() + upload_wait_s
    while True:
        left = []
        for n in range(1, WORKERS + 1):
            root = topology.worker_dir(n)
            for sub in ("tmp", "airflow/logs"):
                left += [str(p) for p in (root / sub).rglob("*") if p.is_file()]
            left += [str(p) for p in root.rglob("*") if p.is_file() and p.suffix in (".parquet", ".safetensors")]
        left = sorted(set(left))
        uploading = left and all("/airflow/logs/" in p and p.endswith(".log") for p in left)
        if not uploading or time.monotonic() > deadline:
            return left
        time.sleep(1)


# --- the command ------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make team-lifecycle", description=__doc__.split("\n")[0])
    parser.add_argument("--households", type=int, default=2000)
    parser.add_argument("--weeks", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--chains", type=int, default=2, choices=(1, 2),
                        help="weeks to run the chain for: 2 like make lifecycle (the second gated against the first)")
    parser.add_argument("--home", type=Path, default=TEAM_HOME, help="its state (default var/team)")
    parser.add_argument("--db-prefix", default="planner_team",
                        help="its PostgreSQL databases: <prefix>_events, _airflow, _mlflow, _mlflow_auth")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    home = args.home.resolve()

    _step("PostgreSQL")
    try:
        events_dsn = claim_demo_database(_with_db(settings().events_dsn, f"{args.db_prefix}_events"))
    except NotOurDatabase as refusal:
        print(f"\nREFUSED: {refusal}", file=sys.stderr)
        return 2
    topology = Topology(home, args.db_prefix, events_dsn)
    print(f"    events: {events_dsn}; Airflow metadata: {topology.airflow_dsn}; MLflow: {topology.mlflow_dsn}")
    end = generate.last_monday()
    weeks = [end, end + timedelta(days=7)][:args.chains]
    world = {"households": args.households, "weeks": args.weeks, "seed": args.seed, "end": end.date().isoformat(),
             "chains": args.chains}
    report: dict = {"weeks": {}}
    try:
        _step(f"object store (moto S3 server, its data under {topology.s3_home}) and MLflow tracking server "
              "(PostgreSQL backend store, artifacts in the bucket, basic-auth)")
        topology.start_object_store()
        state = topology.state()
        if state.get("world") != world:
            why = "no earlier run recorded" if not state else f"earlier runs simulated {state.get('world')}"
            _step(f"starting from a clean state of its own ({why}; this run simulates {world})")
            topology.reset()
            state = {"world": world, "weeks_done": {}}
            topology.save_state(state)
        done = state["weeks_done"]
        to_run = [w for w in weeks if w.date().isoformat() not in done]
        if to_run:
            topology.start_migration()
        topology.start_mlflow()
        print(f"    s3://{BUCKET} at {topology.s3.url}; MLflow at {topology.mlflow.url} "
              f"(signing in as {MLFLOW_SERVICE_USER}) after {time.perf_counter() - started:.0f}s")
        with _environment(topology.client_env()):
            missing = [v for v in done.values() if not _version_exists(v)]
            missing += [d for d in done if not storage.is_complete(storage.dataset_uri(d))]
        if missing:
            _step(f"starting from a clean state of its own (the registry or the bucket lacks {', '.join(missing)} "
                  f"it recorded; this run simulates {world})")
            topology.reset()
            topology.start_mlflow()
            state = {"world": world, "weeks_done": {}}
            topology.save_state(state)
            done = state["weeks_done"]
            to_run = list(weeks)
            topology.start_migration()
        if to_run:
            _step(f"generating {args.weeks} weeks of events for {args.households:,} households up to {end.date()}, "
                  f"and the week after (seed {args.seed})")
            counts = generate.generate_and_load(events_dsn, args.households, args.weeks + 1, args.seed,
                                                end + timedelta(days=7), dirty_share=0.02, reset=True)
            print(f"    {counts['exp.events']:,} events loaded")

        for week, week_end in enumerate(weeks, start=1):
            version = week_end.date().isoformat()
            with _environment(topology.client_env()):
                if version in done:
                    _step(f"week {week}: already ran for dataset {version} (model version {done[version]}); "
                          "its outcome, without retraining")
                    report_week(events_dsn, version, done[version])
                    where = locations(version, done[version])
                    print_locations(where)
                    report["weeks"][version] = {"model_version": done[version], "locations": where,
                                                "placement": state.get("placement", {}).get(version, [])}
                    continue
            if topology.services is None:
                _step(f"starting Airflow (api-server, scheduler, dag-processor, triggerer; CeleryExecutor, Redis "
                      f"broker {topology.redis_url}, queue {topology.queue}; metadata in PostgreSQL) and "
                      f"{WORKERS} Celery workers with their own working directories under {home / 'workers'}")
                topology.start_airflow()
                for dag_id in DAGS:
                    topology.services.unpause(dag_id)
                print(f"    up at {topology.services.url} (admin / admin) after {time.perf_counter() - started:.0f}s; "
                      f"task logs to s3://{BUCKET}/airflow/logs")
            if week == 2:
                _step(f"a week later: the dataset of {version} takes in the week's new events; the new model is "
                      "gated against the champion of week 1")
            _step(f"week {week}: POST /api/v2/dags/{names.DAG_DATASET}/dagRuns (end_date {version}); the Assets "
                  "chain training, registration, offline evaluation and promotion on the Celery workers")
            with _environment(topology.client_env()):
                with LiveLogProbe(topology.services) as live:
                    run_chain(topology.services, version, started)
                placed = task_placement(topology.services)
                logs = read_back_logs(topology.services, placed)
                swept = topology.sweep_scratch()
                done[version] = _model_version_of_newest_model()
                state.setdefault("placement", {})[version] = placed
                topology.s3.save()  # the bucket's data on disk before the state says the week is done
                topology.save_state(state)
                print_placement(placed)
                for worker, line in logs.items():
                    print(f"    task log of {worker} through the REST API (the UI's view): {line}")
                for worker, seen in sorted(live.seen.items()):
                    print(f"    while {seen['task']} ran on {worker}, the REST API served its log ({seen['lines']} "
                          f"lines so far) from that worker's log server: {seen['source'].split('/log/')[0]}")
                if swept:
                    print(f"    removed the scratch tasks left in the workers' TMPDIRs: {', '.join(swept)}")
                report_week(events_dsn, version, done[version])
                where = locations(version, done[version])
                print_locations(where)
                report["weeks"][version] = {"model_version": done[version], "locations": where, "placement": placed,
                                            "logs": logs, "live_logs": live.seen, "swept": swept}
        if len(weeks) > 1:
            def save_with_bucket(saved: dict) -> None:
                topology.s3.save()  # the look's MLflow artifacts on disk before the state says it happened
                topology.save_state(saved)

            def online_eval(as_of: str) -> None:
                if topology.services is None:
                    topology.start_airflow()
                    for dag_id in DAGS:
                        topology.services.unpause(dag_id)
                follow_online_eval(topology.services, as_of, started)
                topology.sweep_scratch()

            with _environment(topology.client_env()):
                canary = canary_week(events_dsn, args.seed, state, online_eval, save=save_with_bucket)
            report["canary"] = canary
            if canary is None:
                print("    no canary: week 2's promotion started none (its outcome is above)")
        left = local_leftovers(topology)
        print(f"    on the workers' local disks: {'nothing of the lifecycle left (scratch removed)' if not left else left}")
        report["local_leftovers"] = left
    except ChainFailed as failure:
        print(f"\nFAILED: {failure}", file=sys.stderr)
        return 1
    finally:
        topology.stop()
        home.mkdir(parents=True, exist_ok=True)
        (home / "last_run.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str))

    print(f"\nEverything it started is stopped; its state is under {home} (re-run: make team-lifecycle).")
    print(f"done in {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    from scripts.airflow_services import stop_on_termination

    with stop_on_termination():  # SIGTERM or SIGHUP stop the services it started, as Ctrl-C does
        raise SystemExit(main())
