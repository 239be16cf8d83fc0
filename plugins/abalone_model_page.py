"""The abalone model page inside Airflow: a nav entry ("Model") and a tab on every DAG run.

Every Airflow component loads this file (the scheduler and the DAG processor too), so it imports nothing but
``AirflowPlugin``: the page's app (FastAPI, Airflow's security module, the pipeline package, MLflow inside its
handlers) is built on the first request to ``/abalone``, in the API server only.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin


class LazyModelPage:
    """An ASGI app that builds the model page's FastAPI app on its first request and hands every request to it."""

    def __init__(self) -> None:
        self.app = None

    async def __call__(self, scope, receive, send) -> None:
        if self.app is None:
            from abalone_model_page_app.app import create_app

            self.app = create_app()
        await self.app(scope, receive, send)


class AbaloneModelPagePlugin(AirflowPlugin):
    name = "abalone_model_page"
    fastapi_apps = [{"app": LazyModelPage(), "url_prefix": "/abalone", "name": "Abalone model page"}]
    # Relative hrefs: the UI resolves them against its base URL, so the page also works under a path prefix.
    external_views = [
        {
            "name": "Model",
            "href": "abalone/",
            "destination": "nav",
            "url_route": "abalone-model",
            "nav_top_level": True,
        },
        {
            "name": "Gate report",
            "href": "abalone/runs/{DAG_ID}/{RUN_ID}",
            "destination": "dag_run",
            "url_route": "abalone-gate-report",
        },
    ]
