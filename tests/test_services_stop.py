"""The local services stop with the command that started them, however it ends: Ctrl-C, SIGTERM,
SIGHUP, an exception, or even SIGKILL of the command (each service dies with its parent)."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from scripts.airflow_services import free_port

PROJECT_ROOT = Path(__file__).resolve().parents[1]

COMMAND = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from scripts.airflow_services import spawn_service, stop_on_termination, stop_service

    with stop_on_termination():
        service = spawn_service(["sleep", "600"], {}, Path(sys.argv[1]))
        print(service.pid, flush=True)
        try:
            time.sleep(600)
        finally:
            stop_service(service)
""")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pids, timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(_gone(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if not _gone(p)]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGKILL])
def test_a_service_does_not_outlive_its_command(sig, tmp_path):
    # As from a terminal: a test run started in the background inherits SIGINT ignored (POSIX), and so would
    # the command, which then rightly goes on running.
    command = subprocess.Popen([sys.executable, "-c", COMMAND, str(tmp_path / "service.log")], cwd=PROJECT_ROOT,
                               stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    service_pid = int(command.stdout.readline())
    assert not _gone(service_pid)
    command.send_signal(sig)
    command.wait(timeout=30)
    if sig in (signal.SIGTERM, signal.SIGHUP):
        assert command.returncode == 128 + sig  # ended through the clean-up, not killed on the spot
    assert _wait_gone([service_pid], timeout=10) == []


LEAVER = textwrap.dedent("""
    import signal, subprocess, sys, time
    # A child in a session of its own (as a worker's pool or a task's child may be): the group's
    # signals miss it. The service itself ignores SIGTERM, so that stop_service escalates.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    grandchild = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                                   "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"],
                                  start_new_session=True)
    print(child.pid, grandchild.pid, flush=True)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(600)
""")


def test_stop_service_sweeps_the_children_that_left_its_group(tmp_path):
    from scripts.airflow_services import spawn_service, stop_service

    log = tmp_path / "leaver.log"
    service = spawn_service([sys.executable, "-c", LEAVER], dict(os.environ), log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not log.read_text().strip():
        time.sleep(0.1)
    children = [int(pid) for pid in log.read_text().split()]
    assert len(children) == 2 and not any(_gone(pid) for pid in children)
    assert all(os.getpgid(pid) != service.pid for pid in children)  # outside the service's group
    try:
        stop_service(service, timeout=2)
        assert service.poll() is not None
        assert _wait_gone(children, timeout=10) == [], "a child that left the group outlived its service"
    finally:
        for pid in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_sigterm_to_make_airflow_stops_every_airflow_service(events_dsn, tmp_path):
    env = {**os.environ, "AIRFLOW_PORT": str(free_port()), "PLANNER_EVENTS_DSN": events_dsn,
           "PLANNER_AIRFLOW_SERVICES_HOME": str(tmp_path / "airflow-services")}
    env.pop("MAKEFLAGS", None)
    make = subprocess.Popen(["make", "-s", "airflow"], cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen, started = [], []
    try:
        for line in make.stdout:
            seen.append(line)
            if line.startswith("Airflow UI:"):
                break
        else:
            pytest.fail("make airflow ended before the UI was up:\n" + "".join(seen[-40:]))
        started = psutil.Process(make.pid).children(recursive=True)
        commands = [" ".join(p.cmdline()) for p in started if not _gone(p.pid)]
        services = ("api-server", "scheduler", "dag-processor", "triggerer")
        assert [s for s in services if not any(f"airflow {s}" in c.replace("_", "-") for c in commands)] == [], commands
        make.send_signal(signal.SIGTERM)
        make.wait(timeout=120)
        assert _wait_gone([p.pid for p in started]) == [], [p.cmdline() for p in started if not _gone(p.pid)]
    finally:  # a failed test leaves nothing running either
        if make.poll() is None:
            started = started or psutil.Process(make.pid).children(recursive=True)
            make.kill()
        for process in started:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
