"""docker-compose.airflow.yml, checked as a file (no Docker engine here): every service a team
needs, health checks and start order, the mounts and the environment the DAGs read, the team
topology (CeleryExecutor and its workers, MLflow with authentication, remote logging), scoped
credentials (no superuser or root credential outside its own service, every secret required
from .env), the login's roles and the approval's assignment, pinned images that match
requirements.txt, and no secret in the repository. The file is also interpolated here as
`docker compose config` would (${VAR}, ${VAR:-default}, ${VAR:?message}, $$)."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = PROJECT_ROOT / "docker-compose.airflow.yml"
AIRFLOW_SERVICES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                    "airflow-worker")
ALL_AIRFLOW = (*AIRFLOW_SERVICES, "airflow-init")
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)(?:(:?[-?])([^}]*))?\}")
SECRET_WORDS = ("PASSWORD", "SECRET", "FERNET")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _example() -> dict[str, str]:
    return dict(line.split("=", 1) for line in (PROJECT_ROOT / ".env.example").read_text().splitlines()
                if line and not line.startswith("#"))


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation of the file's text: raises KeyError naming a required variable that
    is unset or empty, as `docker compose config` refuses to go on."""
    def one(match):
        name, op, arg = match.groups()
        value = env.get(name)
        if op in (":?", "?") and (value is None or (op == ":?" and value == "")):
            raise KeyError(f"{name}: {arg}")
        if op in (":-", "-") and (value is None or (op == ":-" and value == "")):
            return arg
        return value or ""
    return VARIABLE.sub(one, text).replace("$$", "$")


def _filled_env() -> dict[str, str]:
    """.env.example with every empty value filled in, as an operator does."""
    return {key: value or f"filled-{key.lower()}" for key, value in _example().items()}


@pytest.fixture(scope="module")
def resolved() -> dict:
    return yaml.safe_load(interpolate(COMPOSE_FILE.read_text(), _filled_env()))


def _text(node) -> str:
    return json.dumps(node)


def _pins() -> dict[str, str]:
    lines = (PROJECT_ROOT / "requirements.txt").read_text().splitlines()
    return dict(line.split("==", 1) for line in lines if "==" in line and not line.startswith("#"))


def test_every_service_of_the_stack_is_there_with_a_health_check(compose):
    services = compose["services"]
    assert set(services) >= {"postgres", "redis", "minio", "minio-init", "mlflow", "mlflow-init", "airflow-init",
                             *AIRFLOW_SERVICES}
    for name in ("postgres", "redis", "minio", "mlflow", *AIRFLOW_SERVICES):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_start_order_waits_for_health_and_for_the_init_jobs(compose):
    services = compose["services"]
    for name in AIRFLOW_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["airflow-init"]["condition"] == "service_completed_successfully", name
        for healthy in ("postgres", "redis", "mlflow"):
            assert depends[healthy]["condition"] == "service_healthy", (name, healthy)
        for init in ("mlflow-init", "minio-init"):
            assert depends[init]["condition"] == "service_completed_successfully", (name, init)
    assert services["airflow-worker"]["depends_on"]["airflow-apiserver"]["condition"] == "service_healthy"
    assert services["mlflow"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["mlflow-init"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    init = " ".join(services["airflow-init"]["command"])
    for step in ("airflow db migrate", "pools set gpu_training", "apply_schema", "ensure_schema", "passwords.json"):
        assert step in init, step


def test_the_dags_see_the_project_and_the_environment_they_read(compose):
    for name in ALL_AIRFLOW:
        service = compose["services"][name]
        mounts = {m.split(":")[0]: m.split(":")[1] for m in service["volumes"]}
        for folder in ("dags", "include", "plugins"):
            assert mounts[f"./{folder}"] == f"/opt/airflow/{folder}", (name, folder)
            assert (PROJECT_ROOT / folder).is_dir()
        assert not any(m.split(":")[0] in ("planner-storage", "airflow-logs") for m in service["volumes"]), \
            f"{name} shares a local disk"
        env = service["environment"]
        for key in ("AIRFLOW_CONN_EVENTS_DB", "MLFLOW_TRACKING_URI", "PLANNER_STORAGE_ROOT", "REDIS_URL",
                    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "AIRFLOW__API_AUTH__JWT_SECRET",
                    "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API__SECRET_KEY",
                    "HF_HUB_OFFLINE", "MLFLOW_DISABLE_TELEMETRY", "DEPLOY_ACCURACY_THRESHOLD"):
            assert env.get(key), (name, key)
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert env["PLANNER_STORAGE_ROOT"].startswith("s3://"), "the workers share no disk: the root is a bucket"


def test_celery_executor_with_workers_as_in_the_official_compose_file(compose, resolved):
    services = compose["services"]
    for name in ALL_AIRFLOW:
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://:${REDIS_PASSWORD:?"), name
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://planner_airflow:"), name
        assert env["AIRFLOW__LOGGING__REMOTE_LOGGING"] == "True", name
    worker = resolved["services"]["airflow-worker"]
    assert worker["command"] == "celery worker"
    assert int(worker["deploy"]["replicas"]) >= 2
    assert "inspect ping" in worker["healthcheck"]["test"][1] and "celery@$${HOSTNAME}" in \
        services["airflow-worker"]["healthcheck"]["test"][1]
    assert worker["environment"]["DUMB_INIT_SETSID"] == "0"
    # Task logs go to the Airflow bucket, through the connection that holds the scoped user.
    env = resolved["services"]["airflow-scheduler"]["environment"]
    bucket = env["PLANNER_STORAGE_ROOT"].removeprefix("s3://").split("/")[0]
    assert env["AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER"].startswith(f"s3://{bucket}/")
    conn = json.loads(env["AIRFLOW_CONN_" + env["AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID"].upper()])
    assert conn["login"] == env["AWS_ACCESS_KEY_ID"] and conn["extra"]["endpoint_url"] == "http://minio:9000"
    assert env["PLANNER_AWS_CONN_ID"] == env["AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID"]
    assert services["redis"]["healthcheck"]["test"][1].startswith("redis-cli --no-auth-warning -a")
    assert "--requirepass" in " ".join(services["redis"]["command"])


def test_mlflow_runs_with_authentication_and_the_tasks_sign_in_as_its_service_user(compose, resolved):
    mlflow = resolved["services"]["mlflow"]
    script = mlflow["command"][0]
    server = " ".join(script[script.index("exec mlflow server"):].replace("\\\n", " ").split())
    assert "--app-name basic-auth" in server
    assert '--backend-store-uri "postgresql://planner_mlflow:$' in server and "/mlflow\"" in server
    assert "--artifacts-destination s3://" in server and "--serve-artifacts" in server
    config_path = mlflow["environment"]["MLFLOW_AUTH_CONFIG_PATH"]
    assert f"cat > {config_path} <<EOF" in script
    auth_config = script[script.index("[mlflow]"):script.index("\nEOF")]
    assert "database_uri = postgresql://planner_mlflow:" in auth_config and "/mlflow_auth" in auth_config
    assert "authenticate_request_basic_auth" in auth_config
    raw = compose["services"]["mlflow"]["environment"]
    for key in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert raw[key].startswith("${") and ":?" in raw[key], key
    # The tasks' user: made by mlflow-init with the same name and password variable the tasks use.
    airflow_env = compose["services"]["airflow-worker"]["environment"]
    user = airflow_env["MLFLOW_TRACKING_USERNAME"]
    made = compose["services"]["mlflow-init"]
    assert f'"{user}"' in made["command"][0] and "/create" in made["command"][0]
    password_var = VARIABLE.search(airflow_env["MLFLOW_TRACKING_PASSWORD"]).group(1)
    assert VARIABLE.search(made["environment"][password_var]).group(1) == password_var
    assert user != "admin"


def _postgres_urls(node) -> list[tuple[str, str]]:
    """(user, database) of every PostgreSQL URL in a service's definition."""
    return [(m.group(1), m.group(2)) for m in
            re.finditer(r"postgresql(?:\+psycopg2)?://([^:@/\s]+)(?::[^@\s]*)?@postgres:5432/(\w+)", _text(node))]


def _init_roles() -> dict[str, str]:
    """{role: its CREATE ROLE line} of docker/postgres-init.sql."""
    sql = (PROJECT_ROOT / "docker" / "postgres-init.sql").read_text()
    return {m.group(1): m.group(0) for m in re.finditer(r"^CREATE ROLE (\w+)[^;]*;", sql, re.M)}


def test_no_service_but_postgres_holds_the_superuser_and_each_role_is_made_by_the_init_file(compose, resolved):
    roles = _init_roles()
    sql = (PROJECT_ROOT / "docker" / "postgres-init.sql").read_text()
    owners = dict(re.findall(r"^CREATE DATABASE (\w+) OWNER (\w+);", sql, re.M))
    postgres = compose["services"]["postgres"]["environment"]
    assert postgres["POSTGRES_USER"] == "postgres"
    used = set()
    for name, service in resolved["services"].items():
        if name == "postgres":
            continue
        assert "POSTGRES_SUPERUSER_PASSWORD" not in _text(compose["services"][name]), name
        for user, database in _postgres_urls(service):
            assert user != postgres["POSTGRES_USER"] and user in roles, (name, user)
            assert "SUPERUSER" not in roles[user] and "LOGIN" in roles[user].split(), (name, user)
            assert database in owners, (name, database)
            used.add((name, user, database))
    for service in ALL_AIRFLOW:
        assert (service, "planner_airflow", "airflow") in used, service
        assert (service, "planner_tasks", "planner_events") in used, service
    assert ("mlflow", "planner_mlflow", "mlflow") in used and ("mlflow", "planner_mlflow", "mlflow_auth") in used
    assert owners["airflow"] == "planner_airflow" and owners["mlflow"] == owners["mlflow_auth"] == "planner_mlflow"
    # The tasks read the events and own schema ml, nothing more.
    assert "IN ROLE planner_events_reader, planner_ml_writer" in roles["planner_tasks"]
    assert "CREATE SCHEMA ml AUTHORIZATION planner_ml_writer;" in sql
    assert "GRANT SELECT ON TABLES TO planner_events_reader;" in sql
    assert not re.search(r"GRANT (INSERT|UPDATE|DELETE|ALL)[^;]* TO planner_(events_reader|tasks)", sql)
    # Every login role's password comes from the postgres service's environment.
    for role, line in roles.items():
        if "LOGIN" in line.split():
            variable = re.search(r"PASSWORD :'(\w+)'", line).group(1)
            env_name = re.search(rf"^\\getenv {variable} (\w+)$", sql, re.M).group(1)
            assert postgres[env_name].startswith(f"${{{env_name}:?"), role


def test_minio_root_credentials_stay_in_minio_and_its_init_and_each_user_gets_one_bucket(compose, resolved):
    for name, service in compose["services"].items():
        if name not in ("minio", "minio-init"):
            assert "MINIO_ROOT_" not in _text(service), f"{name} holds the MinIO root user"
    example = _filled_env()
    airflow_env = resolved["services"]["airflow-worker"]["environment"]
    mlflow_env = resolved["services"]["mlflow"]["environment"]
    assert airflow_env["AWS_ACCESS_KEY_ID"] == example["MINIO_AIRFLOW_ACCESS_KEY"]
    assert mlflow_env["AWS_ACCESS_KEY_ID"] == example["MINIO_MLFLOW_ACCESS_KEY"]
    assert "AWS_ACCESS_KEY_ID" not in airflow_env["MLFLOW_TRACKING_URI"]
    assert airflow_env["AWS_ACCESS_KEY_ID"] != mlflow_env["AWS_ACCESS_KEY_ID"] != example["MINIO_ROOT_USER"]
    # The init's policy, for each user: its own bucket only, object and listing actions only.
    script = resolved["services"]["minio-init"]["command"][0]
    template = script[script.index('<<EOF\n') + 6:script.index("\nEOF")]
    calls = re.findall(r'^scoped_user "([^"]+)" "\$\{(\w+)\}" "\$\{(\w+)\}"$', script, re.M)
    users = {bucket: key for bucket, key, _secret in calls}
    assert users == {example["PLANNER_BUCKET"]: "MINIO_AIRFLOW_ACCESS_KEY",
                     example["MLFLOW_BUCKET"]: "MINIO_MLFLOW_ACCESS_KEY"}
    assert airflow_env["PLANNER_STORAGE_ROOT"].startswith(f"s3://{example['PLANNER_BUCKET']}/")
    assert f"--artifacts-destination s3://{example['MLFLOW_BUCKET']}/ " in resolved["services"]["mlflow"]["command"][0]
    for bucket in users:
        policy = json.loads(template.replace("$1", bucket))
        resources = {r for s in policy["Statement"] for r in s["Resource"]}
        assert resources == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}, resources
        actions = {a for s in policy["Statement"] for a in s["Action"]}
        assert all(a.startswith("s3:") and "*" not in a and not a.startswith("s3:PutBucket") for a in actions)
        assert {"s3:GetObject", "s3:PutObject", "s3:ListBucket"} <= actions
    for step in ('mc admin user add local "$2" "$3"', 'mc admin policy attach local "$1-rw" --user "$2"',
                 'mc admin policy create local "$1-rw"'):
        assert step in script, step


def test_every_secret_is_required_from_env_and_none_is_committed(compose):
    text = COMPOSE_FILE.read_text()
    example = _example()
    for match in VARIABLE.finditer(text):
        name, op, _arg = match.groups()
        assert name in example, f"{name} is not in .env.example"
        if any(word in name for word in SECRET_WORDS) or name.endswith("_SECRET_KEY"):
            assert op == ":?", f"{match.group(0)}: a secret must be required (${{{name}:?...}})"
    secrets = [k for k in example if any(w in k for w in SECRET_WORDS) or k.endswith(("_SECRET_KEY", "_SECRET"))]
    assert len(secrets) >= 15, secrets
    for key in secrets:
        assert example[key] == "", f".env.example gives {key} a value"
    # Interpolated as `docker compose config` would: each empty secret stops it...
    for key in secrets:
        with pytest.raises(KeyError, match=key):
            interpolate(text, {**_filled_env(), key: ""})
    # ... as does the unedited copy of .env.example; filled in, it resolves.
    with pytest.raises(KeyError):
        interpolate(text, example)
    assert yaml.safe_load(interpolate(text, _filled_env()))["services"]
    assert not (PROJECT_ROOT / ".env").exists() or ".env" in (PROJECT_ROOT / ".gitignore").read_text()


def _resolved_auth_env(resolved) -> dict[str, str]:
    env = resolved["services"]["airflow-apiserver"]["environment"]
    return {k: v for k, v in env.items() if k.startswith("AIRFLOW__CORE__") or k == "PLANNER_APPROVERS"}


def test_the_login_has_a_trigger_role_and_an_approver_the_approval_is_assigned_to(resolved, monkeypatch):
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

    example = _filled_env()
    auth = _resolved_auth_env(resolved)
    assert auth["AIRFLOW__CORE__AUTH_MANAGER"].endswith("SimpleAuthManager")
    for key in ("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"):
        monkeypatch.setenv(key, auth[key])
    users = {u.username: u for u in SimpleAuthManager.get_users()}
    admin, trigger, approver = (users[example[f"AIRFLOW_{who}_USER"]] for who in ("ADMIN", "TRIGGER", "APPROVER"))
    assert "admin" not in (trigger.username, approver.username) and len(users) == 3
    assert auth["PLANNER_APPROVERS"] == approver.username
    manager = SimpleAuthManager()
    # Who triggers: runs yes, connections no; who approves: may answer a required action.
    assert manager.is_authorized_dag(method="POST", access_entity=DagAccessEntity.RUN, user=trigger)
    assert not manager.is_authorized_connection(method="POST", user=trigger)
    assert manager.is_authorized_dag(method="PUT", access_entity=DagAccessEntity.HITL_DETAIL, user=approver)
    # Assigned to the approver only: the trigger user and the admin are refused.
    assigned = {approver.username}
    assert manager.is_authorized_hitl_task(assigned_users=assigned, user=approver)
    assert not manager.is_authorized_hitl_task(assigned_users=assigned, user=trigger)
    assert not manager.is_authorized_hitl_task(assigned_users=assigned, user=admin)
    # airflow-init writes the passwords of exactly these users.
    init = " ".join(resolved["services"]["airflow-init"]["command"])
    assert 'for who in ("ADMIN", "TRIGGER", "APPROVER")' in init
    init_env = resolved["services"]["airflow-init"]["environment"]
    assert {init_env[f"AIRFLOW_{who}_USER"] for who in ("ADMIN", "TRIGGER", "APPROVER")} == set(users)


def test_the_cluster_policy_assigns_promotions_approval_to_the_approvers(compose, resolved, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    for name in ALL_AIRFLOW:
        mounts = dict(m.rsplit(":", 1)[0].split(":", 1) for m in compose["services"][name]["volumes"]
                      if m.startswith("./docker/"))
        assert mounts.get("./docker/airflow_local_settings.py") == "/opt/airflow/config/airflow_local_settings.py"
    spec = importlib.util.spec_from_file_location("compose_local_settings",
                                                  PROJECT_ROOT / "docker" / "airflow_local_settings.py")
    policy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(policy)
    approvers = resolved["services"]["airflow-dag-processor"]["environment"]["PLANNER_APPROVERS"]
    assert approvers == resolved["services"]["airflow-worker"]["environment"]["PLANNER_APPROVERS"]
    monkeypatch.setenv("PLANNER_APPROVERS", approvers)
    dag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "planner_promotion.py")).dags["planner_promotion"]
    for task in dag.tasks:
        policy.task_policy(task)
    approval = dag.get_task("await_approval")
    assert approval.assigned_users == [{"id": approvers, "name": approvers}]
    assert all(not getattr(t, "assigned_users", None) for t in dag.tasks if t.task_id != "await_approval")
    monkeypatch.setenv("PLANNER_APPROVERS", "")
    fresh = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "planner_promotion.py")).dags["planner_promotion"]
    policy.task_policy(fresh.get_task("await_approval"))
    assert not fresh.get_task("await_approval").assigned_users


def test_images_are_pinned_to_the_versions_the_project_runs(compose):
    pins = _pins()
    for name, service in compose["services"].items():
        image = service.get("image", "")
        assert image and ":" in image and not image.endswith(":latest"), f"{name}: unpinned image {image!r}"
    assert compose["services"]["mlflow"]["image"].endswith(f":v{pins['mlflow']}")
    assert compose["services"]["mlflow-init"]["image"] == compose["services"]["mlflow"]["image"]
    dockerfile = (PROJECT_ROOT / "docker" / "airflow.Dockerfile").read_text()
    assert f"FROM apache/airflow:{pins['apache-airflow']}-python3.11" in dockerfile
    assert f"torch=={pins['torch']}" in dockerfile
    mlflow_dockerfile = (PROJECT_ROOT / "docker" / "mlflow.Dockerfile").read_text()
    assert f"FROM ghcr.io/mlflow/mlflow:v{pins['mlflow']}" in mlflow_dockerfile
    for package in ("psycopg2-binary", "boto3", "Flask-WTF"):
        assert f"{package}=={pins[package]}" in mlflow_dockerfile, package
    assert f'"mlflow[auth]=={pins["mlflow"]}"' in mlflow_dockerfile
