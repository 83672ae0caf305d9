"""The models page plugin on a real api-server, over a real MLflow registry (SQLite) and a real `ml` schema
written by the phases' own functions (tests/plugins/records.py): four versions, two promotions (one
approved by alice), one rejection with its reasons, a rollback approved by bob, one version never evaluated.

- the documents hold exactly what the registry tags, the MLflow runs and the `ml` tables hold;
- the plugin loads: `airflow plugins` and `GET /api/v2/plugins` list it with its app and its UI entry;
- every route refuses anonymous callers (401) and bad tokens (403), and answers an Airflow token;
- the API's answer equals the documents, the page renders in headless Chromium (screenshots under
  test-artifacts/), inside the UI too.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from include.core import names
from tests.conftest import isolated_planner
from tests.plugins import records

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = PROJECT_ROOT / "test-artifacts"
MODEL = names.REGISTERED_MODEL_NAME
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ROUTES = ["/planner/", f"/planner/api/models/{MODEL}", f"/planner/api/models/{MODEL}/versions/1",
          "/planner/api/datasets/2026-09-14"]
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def lifecycle(events_dsn, tmp_path_factory):
    base = tmp_path_factory.mktemp("models-page")
    with isolated_planner(base, events_dsn, PLANNER_EVENTS_DSN=events_dsn) as (env, _):
        written = records.build(base, events_dsn)
        yield {"base": base, "env": env, "dsn": events_dsn, "written": written}


def _client():
    from include.registration.registry import registry_client

    return registry_client()


def _records(dsn: str) -> dict:
    from include.promotion import history

    with history.connect(dsn) as conn:
        return {"decisions": history.decisions(conn, MODEL), "champions": history.champions(conn, MODEL)}


def test_documents_hold_what_the_records_hold(lifecycle):
    from include.models_page import collect

    client, dsn, written = _client(), lifecycle["dsn"], lifecycle["written"]
    doc = collect.model_document(client, dsn)
    assert doc["warnings"] == [] and doc["records_read"]
    ml = _records(dsn)

    # the champion now: the alias, since its last change of champion (the rollback to 1)
    alias = str(client.get_model_version_by_alias(MODEL, names.CHAMPION_ALIAS).version)
    assert doc["champion"]["version"] == alias == written["champion"] == "1"
    last = [h for h in ml["champions"] if h["version"] == alias][-1]
    assert (doc["champion"]["since"], doc["champion"]["change"]) == (last["changed_at"], "rolled_back")
    assert doc["champion"]["deployment"]["model_uri"] == f"models:/{MODEL}/1"

    assert [v["version"] for v in doc["versions"]] == sorted(written["versions"], key=int)
    registered = client.get_registered_model(MODEL).aliases
    assert {(a, v["version"]) for v in doc["versions"] for a in v["aliases"]} == {
        (a, str(n)) for a, n in registered.items()} >= {(names.CHAMPION_ALIAS, "1")}
    for entry in doc["versions"]:
        version = client.get_model_version(MODEL, entry["version"])
        tags = version.tags
        assert entry["training"]["training_run_id"] == tags["training_run_id"]
        assert entry["training"]["mlflow_run_id"] == tags["mlflow_training_run_id"]
        assert entry["training"]["val_auc"] == float(tags["val_auc"])
        assert entry["training"]["airflow"] == {"dag_id": tags["airflow_training_dag_id"],
                                                "run_id": tags["airflow_training_run_id"]}
        assert entry["registration"]["airflow"]["run_id"] == tags["airflow_registration_run_id"]
        assert (entry["dataset"]["version"], entry["dataset"]["revision"]) == (tags["dataset_version"],
                                                                               tags["dataset_revision"])
        dataset_run = client.search_runs(
            [client.get_experiment_by_name(names.EXPERIMENT_DATASET).experiment_id],
            filter_string=f"tags.dataset_digest = '{tags['dataset_digest']}'")[0]
        rows, quarantined = dataset_run.data.metrics["rows"], dataset_run.data.metrics["quarantined"]
        assert entry["dataset"]["rows"] == rows == written["datasets"][tags["dataset_version"]]["rows"]
        assert entry["dataset"]["mlflow_run_id"] == dataset_run.info.run_id
        assert entry["dataset"]["airflow"]["run_id"] == dataset_run.data.tags["airflow_run_id"]
        by_reason = {k[len("quarantined_"):]: v for k, v in dataset_run.data.metrics.items()
                     if k.startswith("quarantined_")}
        assert entry["dataset"]["quarantined_by_reason"] == by_reason
        assert entry["dataset"]["quarantine_share_by_reason"] == pytest.approx(
            {k: v / (rows + quarantined) for k, v in by_reason.items()})
        # the drift include/drift logged into the dataset run, as it holds it (none for the first dataset)
        drift = written["datasets"][tags["dataset_version"]]["drift"]
        if drift is None:
            assert entry["dataset"]["drift"] is None
        else:
            run_tags, run_metrics = dataset_run.data.tags, dataset_run.data.metrics
            assert entry["dataset"]["drift"] == {
                "status": run_tags["drift_status"], "previous_version": run_tags["drift_previous_version"],
                "previous_revision": run_tags["drift_previous_revision"],
                "over_threshold": drift["over_threshold"], "warnings": drift["warnings"],
                "max_psi": run_metrics["drift.max_psi"], "error": None,
                "psi": {k[len("drift.psi."):]: v for k, v in run_metrics.items() if k.startswith("drift.psi.")}}
            assert entry["dataset"]["drift"]["psi"] == pytest.approx({k: f["psi"] for k, f in drift["features"].items()})

        expected = written["versions"][entry["version"]]
        if not expected["evaluated"]:
            assert entry["evaluation"] is None and entry["gate"] is None and entry["decisions"] == []
            continue
        evaluation = entry["evaluation"]
        assert evaluation["run_id"] == tags["evaluation_run_id"] == expected["evaluation_run_id"]
        assert evaluation["roc_auc"] == float(tags["eval_roc_auc"]) == expected["roc_auc"]
        assert evaluation["log_loss"] == float(tags["eval_log_loss"]) == expected["log_loss"]
        assert evaluation["latency_p95_ms"] == float(tags["eval_latency_p95_ms"]) == expected["latency_p95_ms"]
        run = client.get_run(tags["evaluation_run_id"])
        assert evaluation["share_of_oracle"] == run.data.metrics["comparison.auc_share_of_oracle"]
        assert evaluation["airflow"] == {"dag_id": names.DAG_OFFLINE_EVAL, "run_id": run.data.tags["airflow_run_id"]}

        mine = [d for d in ml["decisions"] if d["version"] == entry["version"]]
        assert [d["decision_id"] for d in entry["decisions"]] == [d["decision_id"] for d in mine]
        gate_record = [d for d in mine if d["action"] == "promote"][-1]
        assert entry["gate"]["outcome"] == gate_record["outcome"] == expected["outcome"]
        assert entry["gate"]["reasons"] == gate_record["reasons"] == expected["reasons"]
        assert entry["gate"]["approver"] == gate_record["approver"] == expected["approver"]

    by_number = {v["version"]: v for v in doc["versions"]}
    assert by_number["3"]["gate"]["outcome"] == "rejected" and by_number["3"]["promotion_status"] == "rejected"
    assert by_number["3"]["dataset"]["drift"]["status"] == "alert"
    assert by_number["3"]["dataset"]["drift"]["over_threshold"] == ["workflow_type"]
    assert by_number["2"]["dataset"]["drift"]["status"] == "ok"
    assert by_number["2"]["gate"]["approver"] == "alice"

    # the timeline: every change of champion, rollbacks included, with the decision's approver
    assert [(p["version"], p["previous_version"], p["change"]) for p in doc["promotions"]] == [
        (h["version"], h["previous_version"], h["change"]) for h in ml["champions"]] == [
        ("1", None, "promoted"), ("2", "1", "promoted"), ("1", "2", "rolled_back")]
    assert [p["approver"] for p in doc["promotions"]] == [None, "alice", "bob"]


def test_version_and_dataset_documents(lifecycle):
    from include.models_page import collect

    client, dsn = _client(), lifecycle["dsn"]
    one = collect.version_document(client, dsn, "2")
    assert one["version"] == "2" and one["champion"]["version"] == "1"
    # the changes of champion version 2 took part in: 1 -> 2, then the rollback 2 -> 1
    assert [(p["previous_version"], p["version"], p["change"]) for p in one["promotions"]] == [
        ("1", "2", "promoted"), ("2", "1", "rolled_back")]
    with pytest.raises(collect.NotFound):
        collect.version_document(client, dsn, "99")

    day, dataset = next(iter(lifecycle["written"]["datasets"].items()))
    found = collect.dataset_document(client, day)
    assert [r["rows"] for r in found["revisions"]] == [dataset["rows"]]
    assert found["revisions"][0]["quarantined_by_reason"] == dataset["quarantined_by_reason"]
    assert [v["version"] for v in found["model_versions"]] == ["1"]
    with pytest.raises(ValueError):
        collect.dataset_document(client, "last-week")
    with pytest.raises(collect.NotFound):
        collect.dataset_document(client, "2020-01-06")


def test_page_shows_the_records_and_loads_nothing_from_elsewhere(lifecycle):
    from include.models_page import collect
    from include.models_page.render import page

    html = page(collect.model_document(_client(), lifecycle["dsn"]), api_prefix="/planner")
    assert "Champion: version 1" in html and "rolled_back" in html
    for text in ("0.7300", "0.6050", "49.0", "alice", "bob", "roc_auc_delta", "not gated",
                 "Quarantine share by reason", "/dags/planner_promotion/runs/", "Dataset drift",
                 "<span class='drift-alert' title='household_size 0.030; mode 0.120; workflow_type 0.400'>alert</span>",
                 "<li>workflow_type 0.400</li>", "not recorded"):
        assert text in html, text
    assert html.count("<svg") == 7  # six trends and the timeline
    for external in ("<script", "<link", "src=", "@import", "url("):
        assert external not in html, external


def test_the_snapshot_is_reread_when_old():
    from include.models_page.app import Snapshot

    reads = []

    def build():
        reads.append(time.monotonic())
        time.sleep(0.05)
        return {"n": len(reads)}

    snapshot = Snapshot(build, fresh_s=0.3, stale_s=1.0)
    assert snapshot.get()[0]["n"] == 1                  # the first call reads
    assert snapshot.get()[0]["n"] == 1 and len(reads) == 1  # fresh: answered from the read
    assert snapshot.get(fresh=True)[0]["n"] == 2        # asked for: read again
    time.sleep(0.4)
    assert snapshot.get()[0]["n"] == 2                  # stale: the old answer, a background read starts
    deadline = time.monotonic() + 5
    while len(reads) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)
    assert snapshot.get()[0]["n"] == 3                  # ... whose result the next call gets
    time.sleep(1.1)
    assert snapshot.get()[0]["n"] == 4                  # too old to answer: the caller waits for a read
    assert json.loads(snapshot.get()[1]) == snapshot.get()[0]


# ------------------------------------------------------------------------------------------- on the api-server


def _request(url: str, token: str | None = None, cookie: str | None = None, method: str = "GET",
             body: dict | None = None) -> tuple[int, str, str]:
    headers = {"Accept": "application/json, text/html"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if cookie:
        headers["Cookie"] = cookie
    data = None
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers.get("content-type", ""), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("content-type", ""), exc.read().decode()


@pytest.fixture(scope="module")
def api_server(lifecycle):
    """Only the api-server (the plugin lives there), over the lifecycle's store and the events database."""
    from scripts.airflow_env import airflow_env
    from scripts.airflow_services import free_port, service_env, spawn_service, stop_service

    home = lifecycle["base"] / "airflow"
    port = free_port()
    env = service_env({**airflow_env(lifecycle["dsn"], str(home)), **lifecycle["env"]}, home, port)
    airflow = str(Path(sys.executable).with_name("airflow"))
    migrated = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True)
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    log = home / "api-server.log"
    process = spawn_service([airflow, "api-server", "-H", "127.0.0.1", "-p", str(port)], env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                if _request(url + "/api/v2/monitor/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "api-server never answered"
            time.sleep(1)
        status, _, body = _request(url + "/auth/token", method="POST", body={"username": "admin", "password": "admin"})
        assert status in (200, 201), body
        yield {"url": url, "token": json.loads(body)["access_token"], "env": env, "log": log}
    finally:
        stop_service(process)


def test_the_plugin_loads(api_server):
    status, _, body = _request(api_server["url"] + "/api/v2/plugins", token=api_server["token"])
    assert status == 200, body
    plugin = next(p for p in json.loads(body)["plugins"] if p["name"] == "planner_models_page")
    assert [(a["url_prefix"], a["name"]) for a in plugin["fastapi_apps"]] == [("/planner", "planner models page")]
    assert [(v["name"], v["url_route"], v["href"], v["destination"]) for v in plugin["external_views"]] == [
        ("Models", "planner-models", "/planner/", "nav")]

    airflow = str(Path(sys.executable).with_name("airflow"))
    listed = subprocess.run([airflow, "plugins", "--output", "json"], env=api_server["env"], capture_output=True,
                            text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "planner_models_page" in [p["name"] for p in json.loads(listed.stdout)]


def test_anonymous_and_bad_credentials_are_refused(api_server):
    url = api_server["url"]
    for route in ROUTES:
        status, kind, body = _request(url + route)
        assert (status, kind) == (401, "application/json"), (route, status, body[:300])
        assert json.loads(body)["detail"] == "Not authenticated"
        assert _request(url + route, token="not-a-jwt")[0] == 403, route
        assert _request(url + route, cookie="_token=not-a-jwt")[0] == 403, route
        assert _request(url + route, token=api_server["token"])[0] == 200, route
    # The UI's cookie is a credential too (the page is shown in the UI's iframe with it)
    assert _request(url + ROUTES[0], cookie=f"_token={api_server['token']}")[0] == 200


def test_the_api_answers_what_the_records_hold(api_server, lifecycle):
    from include.models_page import collect

    url, token = api_server["url"], api_server["token"]
    status, kind, body = _request(f"{url}/planner/api/models/{MODEL}", token=token)
    assert (status, kind) == (200, "application/json"), body[:500]
    answer = json.loads(body)
    expected = json.loads(json.dumps(collect.model_document(_client(), lifecycle["dsn"])))
    read_at = answer.pop("read_at")
    assert answer == expected
    # the snapshot: answered again from the same read, re-read on ?fresh=1
    assert json.loads(_request(f"{url}/planner/api/models/{MODEL}", token=token)[2])["read_at"] == read_at
    again = json.loads(_request(f"{url}/planner/api/models/{MODEL}?fresh=1", token=token)[2])
    assert again.pop("read_at") > read_at and again == expected
    assert set(answer) >= {"champion", "versions", "promotions"} and answer["champion"]["version"] == "1"
    v3 = next(v for v in answer["versions"] if v["version"] == "3")
    tags = _client().get_model_version(MODEL, "3").tags
    assert v3["evaluation"]["roc_auc"] == float(tags["eval_roc_auc"]) and v3["gate"]["outcome"] == "rejected"

    status, _, body = _request(f"{url}/planner/api/models/{MODEL}/versions/3", token=token)
    assert status == 200 and json.loads(body)["gate"] == v3["gate"]
    day = lifecycle["written"]["versions"]["3"]["dataset"]
    status, _, body = _request(f"{url}/planner/api/datasets/{day}", token=token)
    assert status == 200 and json.loads(body)["revisions"][0]["rows"] == v3["dataset"]["rows"]
    assert _request(f"{url}/planner/api/models/{MODEL}/versions/42", token=token)[0] == 404
    assert _request(f"{url}/planner/api/models/another_model", token=token)[0] == 404
    assert _request(f"{url}/planner/api/datasets/not-a-date", token=token)[0] == 400


@pytest.mark.e2e
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_the_page_in_a_browser(api_server, tmp_path):
    from tests.test_ui_browser import headless_chromium

    with headless_chromium(tmp_path / "chromium", "1400,1400") as page:
        url = api_server["url"]
        # as a person: sign in to the UI; its `_token` cookie then opens the page
        page.send("Page.navigate", url=f"{url}/auth/login/")
        page.wait_for_text("Sign")
        for selector, text in (("input:not([type=password])", "admin"), ("input[type=password]", "admin")):
            page.js(f"document.querySelector('{selector}').focus()")
            page.send("Input.insertText", text=text)
        page.js("[...document.querySelectorAll('button')].find(b => /sign in/i.test(b.innerText)).click()")
        page.wait_for_text("Dags", timeout=60)

        page.send("Page.navigate", url=f"{url}/planner/")
        text = page.wait_for_text("Champion: version 1", "Promotion timeline", "rejected", "alice", "bob")
        assert "0.7300" in text and "not gated" in text
        assert page.js("document.querySelectorAll('svg').length") == 7
        assert page.js("document.querySelectorAll('#versions tbody tr').length") == 4
        shot = page.screenshot(ARTIFACTS / "models-page.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000

        # inside the UI: the navigation entry's route shows the page in an iframe
        page.send("Page.navigate", url=f"{url}/plugin/planner-models")
        deadline = time.monotonic() + 60
        inner = ""
        while time.monotonic() < deadline and "Champion: version 1" not in inner:
            inner = page.js("(() => { const f = document.querySelector('iframe');"
                            " return f && f.contentDocument && f.contentDocument.body ?"
                            " f.contentDocument.body.innerText : ''; })()") or ""
            time.sleep(0.5)
        assert "Champion: version 1" in inner, inner[:1000]
        assert page.js("document.querySelector('iframe').getAttribute('src')").endswith("/planner/")
        page.screenshot(ARTIFACTS / "models-page-in-ui.png")
        # ... and the navigation lists it under Browse
        page.send("Page.navigate", url=f"{url}/dags")
        page.wait_for_text("Dags", "Browse")
        page.js("[...document.querySelectorAll('button, a')].find(b => b.innerText.trim() === 'Browse').click()")
        deadline, items = time.monotonic() + 30, []
        while time.monotonic() < deadline and "Models" not in items:
            items = page.js("[...document.querySelectorAll('[role=menuitem]')].map(e => e.innerText.trim())") or []
            time.sleep(0.5)
        assert "Models" in items, items
        page.screenshot(ARTIFACTS / "models-page-nav.png")


def test_the_plugin_module_imports_nothing_heavy():
    code = ("import sys; sys.path.insert(0, 'plugins'); import planner_models_page; "
            "print([m for m in ('mlflow', 'pandas', 'torch', 'psycopg', 'numpy',"
            " 'airflow.api_fastapi.core_api.security') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
