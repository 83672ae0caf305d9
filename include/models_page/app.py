"""The FastAPI app the plugin mounts on the api-server under `/planner`:

    GET /planner/                                          the page (HTML)
    GET /planner/api/models/planner_acceptance             {model, champion, versions, promotions, decisions, ...}
    GET /planner/api/models/planner_acceptance/versions/N  one version
    GET /planner/api/datasets/YYYY-MM-DD                   a dataset version's revisions and the versions trained on it

Airflow gives a plugin's sub-app no authentication: every route here depends on `require_user`, which
resolves the caller through Airflow's own auth manager exactly as the REST API does
(`airflow.api_fastapi.core_api.security.get_user`: a bearer JWT, else the UI's `_token` cookie; no
credential -> 401, a bad one -> 403) and then asks the auth manager whether that user may read the
runs of `planner_promotion` (403 otherwise). Airflow, MLflow and psycopg are imported on first use, not
when the plugin is loaded.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from include.core import names

URL_PREFIX = "/planner"
_bearer = HTTPBearer(auto_error=False)
_clients: dict[str, object] = {}
_lock = threading.Lock()


class Snapshot:
    """The model document, read at most every `fresh_s` seconds (stale-while-revalidate).

    Reading a registry of 100 versions costs MLflow's SQL store ~0.2-0.8 s on a loaded machine (the bare
    version search alone is most of it), more than a page should wait. So: younger than `fresh_s`, the
    last read is answered; up to `stale_s`, it is answered too while one background thread reads again;
    older (or `fresh=True`, or the first call), the caller waits for a new read. Every answer says when
    it was read (`read_at`)."""

    def __init__(self, build: Callable[[], dict], fresh_s: float, stale_s: float):
        self.build, self.fresh_s, self.stale_s = build, fresh_s, stale_s
        self.entry: tuple[float, dict, bytes] | None = None
        self.reading = threading.Lock()
        self.refreshing = False

    def _read(self) -> tuple[float, dict, bytes]:
        import json
        from datetime import UTC, datetime

        at = time.monotonic()
        doc = self.build()
        doc["read_at"] = datetime.now(UTC).isoformat()
        entry = (at, doc, json.dumps(doc).encode())
        self.entry = entry
        return entry

    def _refresh_in_background(self) -> None:
        try:
            with self.reading:
                self._read()
        except Exception:  # noqa: BLE001 - the next caller reads again and sees the error itself
            pass
        finally:
            self.refreshing = False

    def get(self, fresh: bool = False) -> tuple[dict, bytes]:
        entry = self.entry
        age = time.monotonic() - entry[0] if entry else None
        if entry is None or fresh or age > self.stale_s:
            with self.reading:
                current = self.entry
                if current is not None and current is not entry and not fresh:
                    return current[1], current[2]  # another caller just read it
                _, doc, raw = self._read()
                return doc, raw
        if age > self.fresh_s and not self.refreshing:
            self.refreshing = True
            threading.Thread(target=self._refresh_in_background, name="models-page-refresh", daemon=True).start()
        return entry[1], entry[2]


async def require_user(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)):
    """The authenticated Airflow user allowed to read the lifecycle's promotion runs, or 401/403."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from airflow.api_fastapi.core_api.security import get_user

    user = await get_user(request, None, credentials)
    allowed = get_auth_manager().is_authorized_dag(method="GET", access_entity=DagAccessEntity.RUN,
                                                   details=DagDetails(id=names.DAG_PROMOTION), user=user)
    if not allowed:
        raise HTTPException(status_code=403, detail=f"not allowed to read the runs of {names.DAG_PROMOTION}")
    return user


def mlflow_client():
    """One client per tracking URI (the store and its connection pool are built once)."""
    from include.core.config import settings

    uri = settings().mlflow_tracking_uri
    with _lock:
        client = _clients.get(uri)
        if client is None:
            import mlflow

            from include.core.tracking import configure_mlflow

            configure_mlflow()
            client = _clients[uri] = mlflow.MlflowClient(tracking_uri=uri)
    return client


def events_dsn() -> str | None:
    """The `ml` schema's database: the `events_db` Airflow connection the DAGs use, else PLANNER_EVENTS_DSN."""
    from include.core.config import settings

    try:
        from airflow.models.connection import Connection

        from include.core.connections import libpq_uri_for_connection

        return libpq_uri_for_connection(Connection.get_connection_from_secrets(names.EVENTS_CONN_ID))
    except Exception:  # noqa: BLE001 - not defined (AirflowNotFoundException) or outside Airflow
        return settings().events_dsn


def mlflow_ui() -> str | None:
    """Where MLflow run links point: PLANNER_MLFLOW_UI_URL, else the tracking server when it is one."""
    from include.core.config import mlflow_ui_url

    return mlflow_ui_url()


def cache_seconds() -> tuple[float, float]:
    """(fresh, stale) seconds of the snapshot: PLANNER_MODELS_PAGE_CACHE_S (default 10; 0 reads on every
    call) and six times that."""
    fresh = float(os.environ.get("PLANNER_MODELS_PAGE_CACHE_S", "").strip() or 10)
    return fresh, 6 * fresh


def create_app(authenticate: Callable | None = require_user, client_factory: Callable = mlflow_client,
               dsn_factory: Callable = events_dsn, prefix: str = URL_PREFIX) -> FastAPI:
    """The app; `authenticate`, `client_factory` and `dsn_factory` are what tests and the bench replace."""
    from fastapi import Response

    from include.models_page import collect

    snapshots: dict[tuple, Snapshot] = {}

    def snapshot() -> Snapshot:
        from include.core.config import settings

        client, dsn = client_factory(), dsn_factory()
        key = (settings().mlflow_tracking_uri, dsn)
        with _lock:
            found = snapshots.get(key)
            if found is None:
                found = snapshots[key] = Snapshot(lambda: collect.model_document(client, dsn), *cache_seconds())
        return found

    dependencies = [Depends(authenticate)] if authenticate is not None else []
    app = FastAPI(title="planner models page", dependencies=dependencies, docs_url=None, redoc_url=None,
                  openapi_url=None)

    def registry_call(fn, *args):
        from mlflow.exceptions import MlflowException

        try:
            return fn(*args)
        except collect.NotFound as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from exc
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        except MlflowException as exc:
            raise HTTPException(status_code=503, detail=f"MLflow registry: {str(exc)[:300]}") from exc

    def known(model: str) -> None:
        if model != collect.MODEL:
            raise HTTPException(status_code=404, detail=f"no model {model!r} here (only {collect.MODEL})")

    @app.get("/", response_class=HTMLResponse)
    def models_page(fresh: bool = False) -> HTMLResponse:
        from include.models_page.render import page

        doc, _ = registry_call(snapshot().get, fresh)
        return HTMLResponse(page(doc, mlflow_ui=mlflow_ui(), api_prefix=prefix))

    @app.get("/api/models/{model}")
    def model(model: str, fresh: bool = False) -> Response:
        known(model)
        _, raw = registry_call(snapshot().get, fresh)
        return Response(raw, media_type="application/json")

    @app.get("/api/models/{model}/versions/{number}")
    def version(model: str, number: str, fresh: bool = False) -> JSONResponse:
        known(model)
        doc, _ = registry_call(snapshot().get, fresh)
        try:
            return JSONResponse(collect.version_entry(doc, number))
        except collect.NotFound:
            if fresh:
                raise HTTPException(status_code=404, detail=f"{collect.MODEL} has no version {number}") from None
        doc, _ = registry_call(snapshot().get, True)  # registered since the snapshot was read?
        return JSONResponse(registry_call(collect.version_entry, doc, number))

    @app.get("/api/datasets/{dataset_version}")
    def dataset(dataset_version: str) -> JSONResponse:
        return JSONResponse(registry_call(collect.dataset_document, client_factory(), dataset_version))

    return app
