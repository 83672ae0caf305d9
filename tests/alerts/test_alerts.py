"""Alerts through the SMTP provider's notifier to a real SMTP server on loopback (aiosmtpd), configured by
environment only:

- end to end: `planner_promotion` (its real DAG file, whose default_args carry `failure_notifiers()`) made to
  fail with dag.test() (a version that does not exist): the message arrives and names the DAG, the run, the task,
  the error and the task's log;
- the gate's rejection and the drift alert arrive with what happened and where to look;
- unconfigured, nothing is attached and nothing is sent.
"""
from __future__ import annotations

import email
import json
import socket
import subprocess
import sys
from email import policy
from pathlib import Path
from types import SimpleNamespace

import pytest

from include.core import names

PROJECT_ROOT = Path(__file__).resolve().parents[2]
UI = "http://airflow.planner.test:8080"
MLFLOW_UI = "http://mlflow.planner.test:5000"


class Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd's handler hook
        self.messages.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos),
                              "message": email.message_from_bytes(envelope.original_content, policy=policy.default)})
        return "250 Message accepted for delivery"

    def one(self) -> tuple[dict, str, str]:
        assert len(self.messages) == 1, [m["message"]["Subject"] for m in self.messages]
        found = self.messages.pop()
        body = found["message"].get_body(("html", "plain")).get_content()
        return found, str(found["message"]["Subject"]), body


@pytest.fixture(scope="module")
def smtp_server():
    from aiosmtpd.controller import Controller

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield SimpleNamespace(port=port, inbox=inbox)
    finally:
        controller.stop()


@pytest.fixture()
def alerts_on(smtp_server, monkeypatch):
    smtp_server.inbox.messages.clear()
    monkeypatch.setenv("PLANNER_ALERT_EMAIL_TO", "ml-oncall@planner.test, lead@planner.test")
    monkeypatch.setenv("PLANNER_ALERT_EMAIL_FROM", "airflow@planner.test")
    monkeypatch.setenv("PLANNER_ALERT_SMTP_CONN_ID", "smtp_alerts")
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_ALERTS", json.dumps({
        "conn_type": "smtp", "host": "127.0.0.1", "port": smtp_server.port,
        "extra": {"disable_ssl": True, "disable_tls": True, "timeout": 10, "retry_limit": 1}}))
    monkeypatch.setenv("PLANNER_AIRFLOW_UI_URL", UI)
    monkeypatch.setenv("PLANNER_MLFLOW_UI_URL", MLFLOW_UI)
    return smtp_server.inbox


def test_a_failing_phase_sends_what_failed_and_where_to_look(alerts_on, airflow_db, events_dsn, tmp_path):
    from airflow.dag_processing.dagbag import DagBag

    from tests.conftest import isolated_planner

    with isolated_planner(tmp_path, events_dsn):
        bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "planner_promotion.py"))  # parsed with alerts on
        assert bag.import_errors == {}
        dag = bag.dags[names.DAG_PROMOTION]
        run = dag.test(run_conf={"model_version": "42"})
    assert run.state == "failed"

    found, subject, body = alerts_on.one()
    assert found["to"] == ["ml-oncall@planner.test", "lead@planner.test"]
    assert found["from"] == "airflow@planner.test"
    assert subject == f"[planner] planner_promotion: task decide failed (run {run.run_id})"
    for text in ("The promotion phase failed: task decide of planner_promotion", run.run_id,
                 "AirflowFailException", "has no version &#x27;42&#x27;",
                 f"{UI}/dags/planner_promotion/runs/", "/tasks/decide?try_number=1"):
        assert text in body, (text, body)


def test_the_gate_rejecting_a_candidate_is_sent_with_its_reasons(alerts_on):
    from include.alerts import notify_gate_rejected

    plan = {"action": "promote", "model_version": "3", "expected_champion": "2", "evaluation_run_id": "ev1234",
            "decision": {"reasons": ["roc_auc 0.61 < 0.70", "log_loss regressed by 0.05 against the champion"]}}
    context = {"run_id": "asset_triggered__2026-11-23T07:00:00+00:00", "dag": SimpleNamespace(dag_id="planner_promotion")}
    # not a rejection: nothing is sent
    assert notify_gate_rejected(plan, {"outcome": "promoted", "reasons": []}, context) is False
    assert alerts_on.messages == []
    assert notify_gate_rejected(plan, {"outcome": "rejected", "reasons": plan["decision"]["reasons"],
                                       "decision_id": 17}, context) is True
    _, subject, body = alerts_on.one()
    assert subject == f"[planner] gate rejected {names.REGISTERED_MODEL_NAME} version 3"
    for text in ("roc_auc 0.61 &lt; 0.70", "log_loss regressed", "the champion did not move", "17",
                 f"{UI}/dags/planner_promotion/runs/asset_triggered__2026-11-23T07%3A00%3A00%2B00%3A00",
                 f"{MLFLOW_UI}/#/models/planner_acceptance/versions/3", f"{MLFLOW_UI}/#/runs/ev1234"):
        assert text in body, (text, body)


def test_drift_over_its_threshold_is_sent(alerts_on, monkeypatch):
    from include.alerts import notify_drift

    report = {"current": {"version": "2026-11-30", "revision": "rev-bbbb"},
              "previous": {"version": "2026-11-23", "revision": "rev-aaaa"},
              "features": {"workflow_type": {"psi": 0.61, "alert": 0.25, "warn": 0.1},
                           "mode": {"psi": 0.12, "alert": 0.25, "warn": 0.1}},
              "over_threshold": ["workflow_type"], "warnings": ["mode"]}
    assert notify_drift({**report, "over_threshold": []}, "run9") is False  # under the limits: nothing
    assert notify_drift(report, "run9", {"run_id": "scheduled__2026-11-30T06:00:00+00:00",
                                         "dag": SimpleNamespace(dag_id="planner_dataset")}) is True
    _, subject, body = alerts_on.one()
    assert subject == "[planner] dataset 2026-11-30 drifted from 2026-11-23: workflow_type"
    for text in ("workflow_type: PSI 0.6100 &gt;= alert limit 0.25", "mode: PSI 0.1200", f"{MLFLOW_UI}/#/runs/run9",
                 f"{UI}/dags/planner_dataset/runs/", f"{UI}/planner/"):
        assert text in body, (text, body)
    monkeypatch.setenv("PLANNER_ALERT_ON_DRIFT", "false")
    assert notify_drift(report, "run9") is False and alerts_on.messages == []


def test_unconfigured_alerts_are_off_and_import_no_provider(monkeypatch):
    from include.alerts import failure_notifiers, send

    monkeypatch.delenv("PLANNER_ALERT_EMAIL_TO", raising=False)
    assert failure_notifiers() == []
    assert send("subject", "<p>body</p>") is False
    code = ("import sys; from include.alerts import failure_notifiers; assert failure_notifiers() == [];"
            " print('airflow.providers.smtp' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            env={k: v for k, v in __import__("os").environ.items() if k != "PLANNER_ALERT_EMAIL_TO"},
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_an_unreachable_mail_server_never_fails_the_phase(alerts_on, monkeypatch):
    from include.alerts import send

    monkeypatch.setenv("AIRFLOW_CONN_SMTP_ALERTS", json.dumps({
        "conn_type": "smtp", "host": "127.0.0.1", "port": 9,
        "extra": {"disable_ssl": True, "disable_tls": True, "timeout": 2, "retry_limit": 1}}))
    assert send("[planner] test", "<p>x</p>") is False
