"""The models page: a FastAPI app on the api-server under /planner and an entry in the UI's navigation
(Browse -> Models) that shows it inside the UI, and the "MLflow run" / "MLflow model version" extra links of
the lifecycle's task instances. Every route requires an authenticated Airflow user
(include/models_page/app.py: `require_user`). Importing this module loads FastAPI and the project's
`include.models_page` modules, nothing else: MLflow, psycopg and Airflow's security module load on the
first request."""
from __future__ import annotations

import sys
from pathlib import Path

from airflow.plugins_manager import AirflowPlugin

_PROJECT_ROOT = str(Path(__file__).resolve().parents[1])
if _PROJECT_ROOT not in sys.path:  # `include` lives beside plugins/ (services started without PYTHONPATH)
    sys.path.append(_PROJECT_ROOT)

from include.models_page.app import URL_PREFIX, create_app  # noqa: E402
from include.models_page.links import MlflowModelVersionLink, MlflowRunLink  # noqa: E402


class PlannerModelsPagePlugin(AirflowPlugin):
    name = "planner_models_page"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "planner models page"}]
    external_views = [{
        "name": "Models",
        "href": f"{URL_PREFIX}/",
        "destination": "nav",
        "category": "browse",
        "url_route": "planner-models",
        "icon": None,
    }]
    # TaskFlow tasks have no operator class of their own to hang links on: global links, each answering only
    # for the lifecycle's tasks that recorded a run or a version (include/models_page/links.py)
    global_operator_extra_links = [MlflowRunLink(), MlflowModelVersionLink()]

