"""The model page's FastAPI app: HTML pages and their JSON, behind Airflow's own authentication and authorization."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import requires_access_dag
from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from abalone_model_page_app import fetch, render
from abalone_pipeline import dashboard
from abalone_pipeline.config import ConfigError, Settings

MOUNT = "/abalone"
RETRAINING_DAG_ID = "abalone_retraining"
DECISIONS_SHOWN = 60  # about two months of nights: one MLflow search, one chart

# Airflow's own dependencies, as its API uses them: the caller's JWT (Authorization header, or the UI's _token
# cookie) must be valid, and its user may read the runs of the DAG (the retraining DAG, or the one in the path).
read_model = Depends(requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=RETRAINING_DAG_ID))
read_dag_run = Depends(requires_access_dag("GET", DagAccessEntity.RUN))


def summary(client, settings: Settings) -> dict[str, Any]:
    """Everything the model page shows: one read of the champion, one of the history."""
    rows = dashboard.decisions(client, settings, limit=DECISIONS_SHOWN)
    return {
        "model": settings.model_name,
        "experiment": settings.experiment,
        "server": fetch.display_uri(settings.tracking_uri),
        "read_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cache_seconds": fetch.CACHE_SECONDS,
        "champion": dashboard.champion(client, settings),
        "decisions": rows,
        "trend": dashboard.trend(rows),
    }


def run_report(client, settings: Settings, dag_id: str, run_id: str) -> dict[str, Any]:
    return dashboard.run_report(client, settings, dag_id, run_id)


def slices_chart(client, settings: Settings, dag_id: str, run_id: str) -> bytes | None:
    """The candidate's per-slice chart, if its evaluation drew one; only this artifact is served."""
    run = dashboard.find_candidate(client, settings, dag_id, run_id)
    if run is None or not any(
        item.path == dashboard.SLICES_CHART for item in client.list_artifacts(run.info.run_id, "gate")
    ):
        return None
    return dashboard.artifact_bytes(client, run.info.run_id, dashboard.SLICES_CHART)


def links(request: Request) -> render.Links:
    page = request.scope.get("root_path", "").rstrip("/")
    return render.Links(page=page, airflow=page.removesuffix(MOUNT))


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith(f"{request.scope.get('root_path', '').rstrip('/')}/api/")


def create_app() -> FastAPI:
    app = FastAPI(title="Abalone model page", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(fetch.MlflowUnavailable)
    def mlflow_unavailable(request: Request, exc: fetch.MlflowUnavailable) -> Response:
        if _wants_json(request):
            return JSONResponse({"detail": str(exc), "server": exc.server, "error": exc.error}, status_code=503)
        hint = (
            f"The page waits at most {fetch.DEADLINE_SECONDS:.0f} s for MLflow; Airflow itself is not affected. "
            "Check that the tracking server (ABALONE_MLFLOW_TRACKING_URI) is up and reachable from the API server, "
            "then reload."
        )
        return HTMLResponse(render.error_page("MLflow is not answering", str(exc), hint), status_code=503)

    @app.exception_handler(fetch.Starting)
    def starting(request: Request, exc: fetch.Starting) -> Response:
        headers = {"Retry-After": "3"}
        if _wants_json(request):
            return JSONResponse({"detail": str(exc)}, status_code=503, headers=headers)
        page = render.error_page("The model page is starting", f"It is {exc}.", "It reloads itself.", 3)
        return HTMLResponse(page, status_code=503, headers=headers)

    @app.exception_handler(ConfigError)
    def bad_settings(request: Request, exc: ConfigError) -> Response:
        if _wants_json(request):
            return JSONResponse({"detail": str(exc)}, status_code=500)
        hint = "The API server reads the pipeline's ABALONE_* settings from its environment; fix it and restart."
        return HTMLResponse(render.error_page("A pipeline setting is invalid", str(exc), hint), status_code=500)

    @app.get("/", response_class=HTMLResponse, dependencies=[read_model])
    async def model_page(request: Request) -> HTMLResponse:
        """The champion, the latest candidate's outcome, the RMSE trend and the decision history."""
        return HTMLResponse(render.model_page(await fetch.read(summary), links(request)))

    @app.get("/api/summary", dependencies=[read_model])
    async def model_summary() -> dict[str, Any]:
        return await fetch.read(summary)

    @app.get("/runs/{dag_id}/{run_id}", response_class=HTMLResponse, dependencies=[read_dag_run])
    async def run_page(request: Request, dag_id: str, run_id: str) -> HTMLResponse:
        """One DAG run's candidate: its outcome, every gate check and the gate report (the DAG run's tab)."""
        report = await fetch.read(run_report, dag_id, run_id)
        return HTMLResponse(render.run_page(report, links(request)))

    @app.get("/api/runs/{dag_id}/{run_id}", dependencies=[read_dag_run])
    async def run_summary(dag_id: str, run_id: str) -> dict[str, Any]:
        return await fetch.read(run_report, dag_id, run_id)

    @app.get("/runs/{dag_id}/{run_id}/slices.png", dependencies=[read_dag_run])
    async def run_slices(dag_id: str, run_id: str) -> Response:
        chart = await fetch.read(slices_chart, dag_id, run_id)
        if chart is None:
            return JSONResponse({"detail": f"no {dashboard.SLICES_CHART} for {dag_id}/{run_id}"}, status_code=404)
        return Response(chart, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})

    return app
