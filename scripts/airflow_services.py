"""Airflow's services on loopback (api-server, scheduler, dag-processor, triggerer; LocalExecutor)
and a small client for the REST API they serve: what the lifecycle command, the local UI and
the end-to-end tests drive, exactly as a user's browser or script would.

Options for the team topology (`make team-lifecycle`): another executor (CeleryExecutor) and
extra services started and stopped with the others (the Celery workers, each with its own
working directory and environment); an MLflow server with another backend store and MLflow's
basic-auth app.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

SERVICES = ("api-server", "scheduler", "dag-processor", "triggerer")
TERMINAL_RUN_STATES = {"success", "failed"}


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the process that started it dies, even by SIGKILL
    (Linux's PR_SET_PDEATHSIG), so no service outlives its command."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the signal handlers and the finally blocks still stop the services


def spawn_service(argv: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None) -> subprocess.Popen:
    """A service in a session (process group) of its own, so that stopping it stops its children too."""
    with open(log_path, "ab") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent, cwd=cwd)


def descendants(process: subprocess.Popen) -> list:
    """Every process the service has started, recursively (psutil handles: safe against a reused pid)."""
    import psutil

    if process.poll() is not None:
        return []
    try:
        return psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        return []


def stop_service(process: subprocess.Popen, timeout: float = 30, started: list | None = None) -> None:
    """SIGTERM to the service's whole process group, SIGKILL if it lingers, then a sweep of the group
    (a task process the service left behind), then of every process it had started that left the
    group (a worker or task child in a session of its own: gunicorn/uvicorn workers, Celery's pool,
    a task's own children): SIGTERM, and SIGKILL after 5 s. `started`: those processes, listed before
    any signal was sent (a caller that signals several services at once lists them first), else
    listed here; a child whose parent has died is re-parented and can no longer be found."""
    import psutil

    started = descendants(process) if started is None else started

    def signal_group(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)

    if process.poll() is None:
        signal_group(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            signal_group(signal.SIGKILL)
            process.wait(timeout=timeout)
    signal_group(signal.SIGKILL)
    left = [p for p in started if _alive(p)]
    for leftover in left:
        with contextlib.suppress(psutil.Error):
            leftover.terminate()  # psutil checks it is still the same process (pid and start time)
    _, lingering = psutil.wait_procs(left, timeout=5)
    for leftover in lingering:
        with contextlib.suppress(psutil.Error):
            leftover.kill()
    psutil.wait_procs(lingering, timeout=5)


def _alive(process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@contextlib.contextmanager
def stop_on_termination():
    """SIGTERM and SIGHUP end the command like Ctrl-C does: as an exception, so every `finally`
    that stops services runs (Python's default for both is to die on the spot)."""
    def raise_exit(signum, _frame):
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut the clean-up short
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, raise_exit) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def hostname_from_env() -> str:
    """`[core] hostname_callable` for several workers on one host: the name in PLANNER_HOSTNAME (a task
    instance's `hostname`, where the UI fetches a running task's log from), else the FQDN as usual."""
    return os.environ.get("PLANNER_HOSTNAME") or socket.getfqdn()


def service_env(base: dict[str, str], home: Path, port: int, executor: str = "LocalExecutor") -> dict[str, str]:
    """The settings every service process must share (one home, one JWT secret, one API URL)."""
    env = dict(base)
    secret_file = home / "jwt_secret"
    home.mkdir(parents=True, exist_ok=True)
    if not secret_file.exists():
        secret_file.write_text(secrets.token_urlsafe(32))
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__EXECUTOR": executor,
        "AIRFLOW__CORE__PARALLELISM": env.get("AIRFLOW__CORE__PARALLELISM", "4"),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API_AUTH__JWT_SECRET": secret_file.read_text(),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "simple_auth_manager_passwords.json"),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "600",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": env.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO"),
    })
    passwords = home / "simple_auth_manager_passwords.json"
    if not passwords.exists():
        passwords.write_text(json.dumps({"admin": "admin"}))
    return env


@dataclass
class ExtraService:
    """A process started after Airflow's own services and stopped with them (e.g. a Celery worker):
    the shared service environment plus `env`, in `cwd`, its output in `service-logs/<name>.log`."""
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None


@dataclass
class AirflowServices:
    home: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    _token: str | None = None
    executor: str = "LocalExecutor"
    extra_services: list[ExtraService] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def airflow(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(Path(sys.executable).with_name("airflow")), *args]
        result = subprocess.run(command, env=self.env, capture_output=True, text=True)
        if check and result.returncode:
            raise RuntimeError(f"airflow {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        return result

    def start(self, timeout: float = 120) -> AirflowServices:
        self.env = service_env(self.env, self.home, self.port, executor=self.executor)
        self.airflow("db", "migrate")
        logs = self.home / "service-logs"
        logs.mkdir(exist_ok=True)
        try:
            for name in SERVICES:
                args = ["api-server", "-H", "127.0.0.1", "-p", str(self.port)] if name == "api-server" else [name]
                self.processes[name] = spawn_service([str(Path(sys.executable).with_name("airflow")), *args],
                                                     self.env, logs / f"{name}.log")
            for extra in self.extra_services:
                if extra.cwd is not None:
                    Path(extra.cwd).mkdir(parents=True, exist_ok=True)
                self.processes[extra.name] = spawn_service(extra.argv, {**self.env, **extra.env},
                                                           logs / f"{extra.name}.log", cwd=extra.cwd)
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    label = f"airflow {name}" if name in SERVICES else name
                    raise RuntimeError(f"{label} exited with {process.returncode}: see "
                                       f"{self.home / 'service-logs' / (name + '.log')}")
            try:
                health = self.request("GET", "/api/v2/monitor/health", auth=False)
                if health.get("scheduler", {}).get("status") == "healthy":
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(1)
        raise TimeoutError(f"Airflow services not healthy after {timeout}s at {self.url}")

    def stop(self) -> None:
        started = {name: descendants(process) for name, process in self.processes.items()}  # before any signal
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGTERM)  # all at once: they shut down in parallel
        for name, process in self.processes.items():
            stop_service(process, started=started[name])
        self.processes.clear()

    # --- REST -----------------------------------------------------------------------------
    def token(self) -> str:
        if self._token is None:
            body = self.request("POST", "/auth/token", {"username": "admin", "password": "admin"}, auth=False)
            self._token = body["access_token"]
        return self._token

    def request(self, method: str, path: str, body: dict | None = None, auth: bool = True):
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.request("GET", f"/api/v2/dags/{dag_id}")
                return
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    raise
            time.sleep(1)
        raise TimeoutError(f"DAG {dag_id} not parsed after {timeout}s")

    def unpause(self, dag_id: str) -> None:
        self.wait_for_dag(dag_id)
        self.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        from datetime import UTC, datetime

        body = {"conf": conf or {}, "logical_date": datetime.now(UTC).isoformat()}
        return self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict]:
        """Every task instance of the run, by task id (`<task id>[<map index>]` for a mapped task's instances)."""
        body = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=1000")
        return {(ti["task_id"] if ti.get("map_index", -1) in (-1, None) else f"{ti['task_id']}[{ti['map_index']}]"): ti
                for ti in body["task_instances"]}

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 600, progress=None) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.run_state(dag_id, run_id)
            if progress:
                progress(dag_id, run_id, state)
            if state in TERMINAL_RUN_STATES:
                return state
            time.sleep(2)
        raise TimeoutError(f"{dag_id} run {run_id} not finished after {timeout}s")

    def clear_tasks(self, dag_id: str, run_id: str, task_ids: list[str]) -> list[str]:
        body = {"dag_run_id": run_id, "task_ids": task_ids, "only_failed": False, "dry_run": False,
                "include_downstream": False, "include_upstream": False, "reset_dag_runs": True}
        cleared = self.request("POST", f"/api/v2/dags/{dag_id}/clearTaskInstances", body)
        return sorted(ti["task_id"] for ti in cleared["task_instances"])


@dataclass
class MlflowServer:
    """An MLflow tracking server on loopback: SQLite backend store, artifacts written by clients
    straight to a local root (the compose stack uses PostgreSQL and object storage instead).
    `backend_store_uri` replaces the SQLite store (e.g. postgresql://...); `app_name="basic-auth"`
    turns on MLflow's authentication (its config file named by MLFLOW_AUTH_CONFIG_PATH in `env`)."""
    root: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    artifact_root: str | None = None   # e.g. s3://bucket/mlflow: clients write artifacts there directly
    env: dict[str, str] = field(default_factory=dict)
    backend_store_uri: str | None = None
    app_name: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> MlflowServer:
        self.root.mkdir(parents=True, exist_ok=True)
        command = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
                   "--port", str(self.port), "--workers", "1",
                   "--backend-store-uri", self.backend_store_uri or f"sqlite:///{self.root / 'mlflow.db'}",
                   "--default-artifact-root", self.artifact_root or str(self.root / "artifacts"),
                   "--no-serve-artifacts", *(["--app-name", self.app_name] if self.app_name else [])]
        env = {**os.environ, **self.env, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
        self.process = spawn_service(command, env, self.root / "server.log")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: see {self.root / 'server.log'}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2):
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        raise TimeoutError(f"mlflow server not up after {timeout}s")

    def stop(self) -> None:
        if self.process is not None:
            stop_service(self.process)
        self.process = None
