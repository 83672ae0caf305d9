"""docker-compose.airflow.yml, checked as a file (no Docker engine here): every service a team
needs, health checks and start order, the mounts and the environment the DAGs read, pinned
images that match requirements.txt, and no secret in the repository."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_SERVICES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "docker-compose.airflow.yml").read_text())


def _pins() -> dict[str, str]:
    lines = (PROJECT_ROOT / "requirements.txt").read_text().splitlines()
    return dict(line.split("==", 1) for line in lines if "==" in line and not line.startswith("#"))


def test_every_service_of_the_stack_is_there_with_a_health_check(compose):
    services = compose["services"]
    assert set(services) >= {"postgres", "redis", "minio", "minio-init", "mlflow", "airflow-init", *AIRFLOW_SERVICES}
    for name in ("postgres", "redis", "minio", "mlflow", *AIRFLOW_SERVICES):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_start_order_waits_for_health_and_for_the_init_jobs(compose):
    services = compose["services"]
    for name in AIRFLOW_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["airflow-init"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["mlflow"]["condition"] == "service_healthy", name
    assert services["mlflow"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    init = " ".join(services["airflow-init"]["command"])
    assert "airflow db migrate" in init and "pools set gpu_training" in init and "apply_schema" in init


def test_the_dags_see_the_project_and_the_environment_they_read(compose):
    for name in AIRFLOW_SERVICES:
        service = compose["services"][name]
        mounts = {m.split(":")[0]: m.split(":")[1] for m in service["volumes"]}
        for folder in ("dags", "include", "plugins"):
            assert mounts[f"./{folder}"] == f"/opt/airflow/{folder}", (name, folder)
            assert (PROJECT_ROOT / folder).is_dir()
        env = service["environment"]
        for key in ("AIRFLOW_CONN_EVENTS_DB", "MLFLOW_TRACKING_URI", "PLANNER_STORAGE_ROOT", "REDIS_URL",
                    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "AIRFLOW__API_AUTH__JWT_SECRET",
                    "HF_HUB_OFFLINE", "MLFLOW_DISABLE_TELEMETRY", "DEPLOY_ACCURACY_THRESHOLD"):
            assert env.get(key), (name, key)
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    mlflow = " ".join(compose["services"]["mlflow"]["command"].split())
    assert "--backend-store-uri postgresql://" in mlflow and "--artifacts-destination s3://" in mlflow


def test_images_are_pinned_to_the_versions_the_project_runs(compose):
    pins = _pins()
    for name, service in compose["services"].items():
        image = service.get("image", "")
        assert image and ":" in image and not image.endswith(":latest"), f"{name}: unpinned image {image!r}"
    assert compose["services"]["mlflow"]["image"].endswith(f":v{pins['mlflow']}")
    dockerfile = (PROJECT_ROOT / "docker" / "airflow.Dockerfile").read_text()
    assert f"FROM apache/airflow:{pins['apache-airflow']}-python3.11" in dockerfile
    assert f"torch=={pins['torch']}" in dockerfile


def test_every_variable_comes_from_env_example_and_no_secret_is_committed(compose):
    text = (PROJECT_ROOT / "docker-compose.airflow.yml").read_text()
    without_default = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)\}", text))
    example = dict(line.split("=", 1) for line in (PROJECT_ROOT / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert without_default <= set(example), without_default - set(example)
    for key, value in example.items():
        if "PASSWORD" in key or "SECRET" in key:
            assert value.startswith("CHANGE-ME"), key
    assert not (PROJECT_ROOT / ".env").exists() or ".env" in (PROJECT_ROOT / ".gitignore").read_text()
