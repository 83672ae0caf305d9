"""The models page's API on a registry of many versions, against a bare registry search; and the
api-server's start with and without the plugin.

    python -m bench.models_page [--versions 100] [--rounds 20] [--start-rounds 2] [--no-start]

In a fresh local store (MLflow on SQLite, a PostgreSQL database of its own for the `ml` schema) it
records `--versions` versions as the phases do (tests/plugins/records.py: a dataset run, a training run,
the version and its tags, an evaluation run and its `eval_*` tags, a promotion or a rejection in the
`ml` schema, every third promoted), then in the same run times, medians of `--rounds` after one warm-up:

- the baseline: a bare `MlflowClient.search_model_versions` of those versions (what any registry page
  must at least do);
- `collect.model_document` (every registry, MLflow-run and PostgreSQL read the page makes);
- `GET /planner/api/models/planner_acceptance?fresh=1` through the plugin's FastAPI app (in-process
  client: routing, a new read of every record, JSON);
- the same without `fresh` (what a caller gets: the snapshot, read at most PLANNER_MODELS_PAGE_CACHE_S
  seconds ago; include/models_page/app.py `Snapshot`), the goal being <= 200 ms;
- the HTML page from the snapshot.

Then the api-server's start, to its first healthy answer, with the project's plugins folder and with an
empty one (alternating, `--start-rounds` each), and the first and a second answer of the plugin's API
(the first imports MLflow). The api-server runs without authentication here only in the sense that the
bench passes the token it gets from POST /auth/token.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _median_ms(fn, rounds: int) -> tuple[float, float]:
    fn()  # warm-up: imports, the store's connection pool
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), max(times)


def _get(url: str, token: str | None = None, body: dict | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body else None, headers=headers,
                                     method="POST" if body else "GET")
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.status, response.read()


def api_server_start(work: Path, env: dict, plugins: Path, label: str) -> dict:
    """Seconds from spawn to the first healthy answer; with the plugin also its API's first answers."""
    from scripts.airflow_services import free_port, service_env, spawn_service, stop_service

    home = work / "airflow"
    port = free_port()
    service = service_env({**env, "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins)}, home, port)
    started = time.perf_counter()
    process = spawn_service([str(Path(sys.executable).with_name("airflow")), "api-server", "-H", "127.0.0.1",
                             "-p", str(port)], service, home / f"api-server-{label}.log")
    url = f"http://127.0.0.1:{port}"
    result = {}
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"api-server exited: see {home / f'api-server-{label}.log'}")
            try:
                if _get(url + "/api/v2/monitor/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.perf_counter() - started > 300:
                raise TimeoutError("api-server never answered")
            time.sleep(0.1)
        result["healthy_s"] = time.perf_counter() - started
        if label == "with plugin":
            token = json.loads(_get(url + "/auth/token", body={"username": "admin", "password": "admin"})[1])
            token = token["access_token"]
            for key in ("first_api_ms", "second_api_ms"):
                t = time.perf_counter()
                status, _ = _get(f"{url}/planner/api/models/planner_acceptance", token)
                assert status == 200
                result[key] = (time.perf_counter() - t) * 1000
    finally:
        stop_service(process)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.models_page", description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--start-rounds", type=int, default=2)
    parser.add_argument("--no-start", action="store_true", help="skip the api-server start times")
    args = parser.parse_args(argv)

    import logging

    work = Path(tempfile.mkdtemp(prefix="bench-models-page-", dir=os.environ.get("BENCH_TMP")))
    os.environ.update({"MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
                       "PLANNER_MLFLOW_ARTIFACT_ROOT": str(work / "artifacts"),
                       "PLANNER_STORAGE_ROOT": str(work / "storage")})
    os.environ.pop("REDIS_URL", None)
    logging.getLogger("mlflow").setLevel(logging.WARNING)

    from include.core.config import settings
    from include.core.local_postgres import airflow_connection_json, drop_database, ensure_database
    from include.models_page import collect
    from include.models_page.app import create_app
    from include.registration.registry import registry_client
    from tests.plugins import records

    base = os.environ.get("PLANNER_BENCH_PG_DSN", settings().events_dsn).rsplit("/", 1)[0]
    dsn = ensure_database(f"{base}/planner_bench_models_page_{os.getpid()}")
    os.environ["PLANNER_EVENTS_DSN"] = dsn
    try:
        started = time.perf_counter()
        written = records.build(work, dsn, versions=args.versions, promote_every=3)
        print(f"set-up: {args.versions} versions recorded in {time.perf_counter() - started:.0f} s "
              f"(champion {written['champion']})")

        client = registry_client()
        baseline, baseline_max = _median_ms(lambda: collect.read_versions(client), args.rounds)
        doc = collect.model_document(client, dsn)
        assert len(doc["versions"]) == args.versions and not doc["warnings"], doc["warnings"]
        documents, documents_max = _median_ms(lambda: collect.model_document(client, dsn), args.rounds)

        from fastapi.testclient import TestClient

        http = TestClient(create_app(authenticate=None, client_factory=lambda: client, dsn_factory=lambda: dsn))
        assert http.get("/api/models/planner_acceptance").status_code == 200
        cold, cold_max = _median_ms(lambda: http.get("/api/models/planner_acceptance?fresh=1").raise_for_status(),
                                    args.rounds)
        api, api_max = _median_ms(lambda: http.get("/api/models/planner_acceptance").raise_for_status(), args.rounds)
        html, html_max = _median_ms(lambda: http.get("/").raise_for_status(), args.rounds)
        size = len(http.get("/api/models/planner_acceptance").content)

        print(f"baseline: bare search_model_versions of {args.versions} versions  median {baseline:7.1f} ms "
              f"(max {baseline_max:.1f})")
        print(f"collect.model_document                                  median {documents:7.1f} ms "
              f"(max {documents_max:.1f})  {documents / baseline:.1f}x the baseline")
        print(f"GET /planner/api/models/planner_acceptance?fresh=1 (a new read)  median {cold:7.1f} ms "
              f"(max {cold_max:.1f})  {cold / baseline:.1f}x the baseline; goal <= 200 ms: "
              f"{'met' if cold <= 200 else 'NOT met'}")
        print(f"GET /planner/api/models/planner_acceptance (snapshot, {size // 1024} KiB JSON)  median {api:7.1f} ms "
              f"(max {api_max:.1f})  {api / baseline:.2f}x the baseline; goal <= 200 ms: "
              f"{'met' if api <= 200 else 'NOT met'}")
        print(f"GET /planner/ (HTML page from the snapshot)              median {html:7.1f} ms (max {html_max:.1f})")

        if not args.no_start:
            from scripts.airflow_env import airflow_env

            env = airflow_env(dsn, str(work / "airflow"))
            env.update({k: os.environ[k] for k in ("MLFLOW_TRACKING_URI", "PLANNER_MLFLOW_ARTIFACT_ROOT",
                                                   "PLANNER_STORAGE_ROOT", "PLANNER_EVENTS_DSN")})
            env["AIRFLOW_CONN_EVENTS_DB"] = airflow_connection_json(dsn)
            from scripts.airflow_services import service_env

            migrate = subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
                                     env=service_env(env, work / "airflow", 0), capture_output=True, text=True)
            assert migrate.returncode == 0, migrate.stderr[-2000:]
            empty = work / "no-plugins"
            empty.mkdir()
            starts: dict[str, list[dict]] = {"with plugin": [], "without plugin": []}
            for i in range(args.start_rounds):
                order = ["with plugin", "without plugin"] if i % 2 == 0 else ["without plugin", "with plugin"]
                for label in order:
                    folder = PROJECT_ROOT / "plugins" if label == "with plugin" else empty
                    starts[label].append(api_server_start(work, env, folder, label))
            for label, found in starts.items():
                line = f"api-server start {label:<15} to healthy: " + ", ".join(f"{r['healthy_s']:.1f}" for r in found)
                line += f" s (median {statistics.median(r['healthy_s'] for r in found):.1f} s)"
                if label == "with plugin":
                    line += ("; the plugin's first API answer " + ", ".join(f"{r['first_api_ms']:.0f}" for r in found)
                             + " ms (imports MLflow), the next " + ", ".join(f"{r['second_api_ms']:.0f}" for r in found)
                             + " ms")
                print(line)
    finally:
        drop_database(dsn)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
