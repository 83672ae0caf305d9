"""The Airflow UI in a real headless Chromium (Debian's package; no browser download), driven
over the DevTools protocol against a running api-server: log in, open the trigger forms of
`planner_training` and `planner_registration`, check the Params fields are there, and save
screenshots under test-artifacts/."""
from __future__ import annotations

import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from include.core import names
from scripts.airflow_services import AirflowServices, free_port

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = PROJECT_ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")


class Page:
    """The smallest DevTools client: send a command, wait for its answer."""

    def __init__(self, ws_url: str):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.ids = itertools.count(1)

    def send(self, method: str, **params):
        call_id = next(self.ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def js(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def wait_for_text(self, *texts: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        body = ""
        while time.monotonic() < deadline:
            body = self.js("document.body ? document.body.innerText : ''") or ""
            if all(t in body for t in texts):
                return body
            time.sleep(0.5)
        raise AssertionError(f"page never showed {texts}; it showed:\n{body[:2000]}")

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


@contextlib.contextmanager
def headless_chromium(user_data_dir: Path, window_size: str):
    """Debian's chromium, headless, as a DevTools `Page` (Page and Runtime enabled); stopped after."""
    port = free_port()
    chromium = subprocess.Popen(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--remote-debugging-port={port}", f"--user-data-dir={user_data_dir}", f"--window-size={window_size}",
         "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
                    targets = [t for t in json.loads(response.read()) if t["type"] == "page"]
                if targets:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("chromium's DevTools endpoint never answered")
            time.sleep(0.5)
        page = Page(targets[0]["webSocketDebuggerUrl"])
        page.send("Page.enable")
        page.send("Runtime.enable")
        yield page
    finally:
        chromium.terminate()
        chromium.wait(timeout=30)


@pytest.fixture(scope="module")
def browser_stack(tmp_path_factory):
    from scripts.airflow_env import airflow_env

    base = tmp_path_factory.mktemp("ui")
    services = AirflowServices(base / "airflow", airflow_env()).start()
    try:
        with headless_chromium(base / "chromium", "1400,1000") as page:
            for dag_id in (names.DAG_TRAINING, names.DAG_REGISTRATION):
                services.wait_for_dag(dag_id)
            yield services, page
    finally:
        services.stop()


def _log_in(services, page) -> None:
    """Through the login page, as a person does."""
    page.send("Page.navigate", url=f"{services.url}/auth/login/")
    page.wait_for_text("Sign")
    for selector, text in (("input:not([type=password])", "admin"), ("input[type=password]", "admin")):
        page.js(f"document.querySelector('{selector}').focus()")
        page.send("Input.insertText", text=text)  # typed, as keystrokes reach the form library
    page.js("[...document.querySelectorAll('button')].find(b => /sign in/i.test(b.innerText)).click()")
    page.wait_for_text("Welcome", "Dags", timeout=60)


def _open_trigger_form(services, page, dag_id: str) -> str:
    page.send("Page.navigate", url=f"{services.url}/dags/{dag_id}")
    page.wait_for_text(dag_id, "Trigger")
    page.js("[...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Trigger' "
            "|| b.innerText.includes('Trigger')).click()")
    return page.wait_for_text("Run Parameters", timeout=30)


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_people_log_in_and_find_the_params_forms(browser_stack):
    services, page = browser_stack
    _log_in(services, page)

    page.send("Page.navigate", url=f"{services.url}/dags")
    listing = page.wait_for_text(names.DAG_TRAINING, names.DAG_REGISTRATION, names.DAG_PROMOTION)
    assert "planner" in listing
    page.screenshot(ARTIFACTS / "ui-dags.png")

    expected = {
        names.DAG_TRAINING: ["Backend", "Dataset version", "epochs", "learning_rate", "GPUs (kubernetes)"],
        names.DAG_REGISTRATION: ["Model path"],
    }
    for dag_id, fields in expected.items():
        form = _open_trigger_form(services, page, dag_id)
        page.js("[...document.querySelectorAll('button')].filter(b => /run parameters/i.test(b.innerText))"
                ".forEach(b => b.getAttribute('aria-expanded') === 'false' && b.click())")
        form = page.wait_for_text(*fields, timeout=30)
        for field in fields:
            assert field in form, (dag_id, field)
        shot = page.screenshot(ARTIFACTS / f"ui-trigger-{dag_id}.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
