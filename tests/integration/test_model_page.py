"""The model page plugin in a real Airflow API server, reading a real MLflow server: auth, content, MLflow down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from abalone_pipeline.config import PROJECT_ROOT
from tests.e2e.conftest import free_port, mlflow_healthy, mlflow_server_command

# Real services, as the end-to-end tests use them (no Docker engine needed): `make test` runs it, test-fast not.
pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
DAG = "abalone_retraining"
EXPERIMENT = MODEL = "abalone-page-it"
USER, PASSWORD = "oncall", "night-shift"
NIGHTS = {
    1: ("promoted", None),
    2: ("rejected", "REJECT: failed improvement: test_rmse 2.1300 is worse than champion v1 2.0500 by 0.0800"),
    3: ("dry_run", "REJECT: failed improvement: test_rmse 2.1200 is worse than champion v1 2.0500 by 0.0700"),
}
SLICES_PNG = b"\x89PNG\r\n\x1a\n" + b"slices" * 10


def run_id(night: int) -> str:
    return f"manual__2026-01-0{night}T02:00:00+00:00"


class Service:
    """A server process in its own session, stopped with everything it started."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.process = subprocess.Popen(
            command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, cwd=PROJECT_ROOT
        )

    def wait_until(self, ready, what: str, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while not ready():
            assert self.process.poll() is None, f"{what} exited: {self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{what} not ready within {seconds:.0f} s"
            time.sleep(0.5)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)


def seed(uri: str, scratch: Path) -> None:
    """Three nights as the pipeline leaves them: a first champion, a rejection (with its report), a dry run."""
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    from abalone_pipeline import registry

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment(EXPERIMENT)
    client.create_registered_model(MODEL)
    for night, (outcome, reasons) in NIGHTS.items():
        start = 1_767_232_800_000 + (night - 1) * 86_400_000  # 2026-01-01T02:00Z and the nights after
        tags = {"airflow.dag_id": DAG, "airflow.run_id": run_id(night), registry.TAG_OUTCOME: outcome}
        tags |= {registry.TAG_DRY_RUN: "rejected"} if outcome == "dry_run" else {registry.TAG_DECISION: outcome}
        run = client.create_run(experiment, start_time=start, tags=tags | {registry.TAG_REASONS: reasons or "PROMOTE"})
        metrics = {"test_rmse": 2.04 + night * 0.03, "gate.baseline_mean_rmse": 3.2, "gate.baseline_linear_rmse": 2.4}
        metrics |= {"gate.champion_rmse": 2.07} if night > 1 else {}
        client.log_batch(
            run.info.run_id,
            metrics=[Metric(key, value, start, 0) for key, value in metrics.items()],
            tags=[RunTag("airflow.run_url", f"http://airflow.example/dags/{DAG}/runs/{quote(run_id(night))}")],
        )
        if night == 1:
            version = client.create_model_version(
                MODEL,
                f"runs:/{run.info.run_id}/model",
                run_id=run.info.run_id,
                tags={
                    registry.TAG_AIRFLOW_RUN: f"{DAG}/{run_id(night)}",
                    registry.TAG_DECISION: "promoted",
                    registry.TAG_PROMOTED_AT: "2026-01-01T02:40:00.000+00:00",
                    registry.TAG_REASONS: "PROMOTE: all 4 applicable rules passed",
                    "abalone.dataset_id": "7c4075e67892e879",
                },
            )
            client.set_registered_model_alias(MODEL, "champion", version.version)
            client.set_tag(run.info.run_id, registry.TAG_VERSION, version.version)
        if night == 2:
            checks = [
                {"rule": "ceiling", "applied": True, "passed": True, "detail": "2.1300 <= 3.0", "observed": 2.13},
                {"rule": "improvement", "applied": True, "passed": False, "detail": "worse by 0.0800"},
            ]
            client.log_text(run.info.run_id, json.dumps({"checks": checks, "summary": reasons}), registry.REPORT_JSON)
            client.log_text(run.info.run_id, "# Gate decision: REJECT\n\n<b>bold?</b>\n", registry.REPORT_MARKDOWN)
            (scratch / "slices.png").write_bytes(SLICES_PNG)
            client.log_artifact(run.info.run_id, str(scratch / "slices.png"), "gate")
        client.set_terminated(run.info.run_id, end_time=start + 600_000)


@pytest.fixture(scope="module")
def services(tmp_path_factory) -> Iterator[dict]:
    """A real ``mlflow server`` (seeded) and Airflow's API server with the plugins folder, on SQLite."""
    home = tmp_path_factory.mktemp("model-page")
    mlflow_port, airflow_port = free_port(), free_port()
    mlflow_uri, base = f"http://127.0.0.1:{mlflow_port}", f"http://127.0.0.1:{airflow_port}"
    mlflow = Service(
        mlflow_server_command(home, mlflow_port, str(home / "artifacts")),
        {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        home / "mlflow.log",
    )
    (home / "passwords.json").write_text(json.dumps({USER: PASSWORD}))
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__API__BASE_URL": base,
        "ABALONE_MLFLOW_TRACKING_URI": mlflow_uri,
        "ABALONE_EXPERIMENT": EXPERIMENT,
        "ABALONE_MODEL_NAME": MODEL,
        "GIT_PYTHON_REFRESH": "quiet",
    }
    migrate = subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True)
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
    api = Service([str(BIN / "airflow"), "api-server", "--port", str(airflow_port)], env, home / "api-server.log")
    try:
        mlflow.wait_until(lambda: mlflow_healthy(mlflow_uri), "mlflow server")
        seed(mlflow_uri, home)
        api.wait_until(lambda: answers(f"{base}/api/v2/version"), "the API server")
        token = requests.post(f"{base}/auth/token", json={"username": USER, "password": PASSWORD}, timeout=10)
        assert token.status_code == 201, token.text
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        # The first read since the server started loads the MLflow client; the page may say so until then.
        api.wait_until(lambda: answers(f"{base}/abalone/api/summary", headers), "the model page", seconds=60)
        yield {
            "base": base,
            "headers": headers,
            "token": token.json()["access_token"],
            "mlflow": mlflow,
            "mlflow_port": mlflow_port,
        }
    finally:
        api.stop()
        mlflow.stop()


def answers(url: str, headers: dict | None = None) -> bool:
    try:
        return requests.get(url, headers=headers, timeout=10).status_code == 200
    except requests.ConnectionError:
        return False


def report_path(night: int) -> str:
    return f"/abalone/runs/{DAG}/{quote(run_id(night), safe='')}"


@pytest.mark.parametrize(
    "path",
    ["/abalone/", "/abalone/api/summary", report_path(2), f"{report_path(2)}/slices.png", "/abalone/api/runs/x/y"],
)
def test_no_credentials_no_page(services, path):
    assert requests.get(services["base"] + path, timeout=10).status_code == 401
    forged = requests.get(services["base"] + path, headers={"Authorization": "Bearer forged.jwt.value"}, timeout=10)
    assert forged.status_code in (401, 403)


def test_the_page_answers_the_daily_questions(services):
    page = requests.get(f"{services['base']}/abalone/", headers=services["headers"], timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert f"{MODEL} v1" in html and "7c4075e67892e879" in html, "the champion, with its data"
    assert "PROMOTE: all 4 applicable rules passed" in html
    assert "dry run" in html and "the gate would say rejected" in html, "last night's candidate first"
    assert html.count('class="badge rejected"') >= 1 and ">improvement</span>" in html, "why it was rejected"
    assert html.count("<circle") == 3 and "mean baseline" in html, "the RMSE trend"
    assert f'href="{report_path(2)}"' in html, "one more click to the full report"
    summary = requests.get(f"{services['base']}/abalone/api/summary", headers=services["headers"], timeout=10).json()
    assert summary["champion"]["version"] == "1"
    assert [row["outcome"] for row in summary["decisions"]] == ["dry_run", "rejected", "promoted"]
    assert summary["decisions"][0]["mlflow_run_url"].startswith(summary["server"] + "/#/experiments/")


def test_the_dag_run_tab_shows_the_checks_report_and_chart(services):
    page = requests.get(services["base"] + report_path(2), headers=services["headers"], timeout=10)
    assert page.status_code == 200, page.text[-2000:]
    html = page.text
    assert "<h2>Checks</h2>" in html and "ceiling" in html and '<span class="fail">FAIL</span>' in html
    assert "Gate decision: REJECT" in html and "<b>bold?</b>" not in html, "the report's own HTML is not rendered"
    assert f'<img src="{report_path(2)}/slices.png"' in html
    chart = requests.get(f"{services['base']}{report_path(2)}/slices.png", headers=services["headers"], timeout=10)
    assert chart.status_code == 200 and chart.headers["content-type"] == "image/png" and chart.content == SLICES_PNG
    unknown = requests.get(
        f"{services['base']}/abalone/runs/other_dag/manual__1", headers=services["headers"], timeout=10
    )
    assert unknown.status_code == 200 and "No candidate MLflow run is tagged with this DAG run" in unknown.text


def test_the_ui_frames_the_page_and_its_cookie_authenticates_it(services):
    plugins = requests.get(f"{services['base']}/api/v2/plugins", headers=services["headers"], timeout=10).json()
    (plugin,) = [plugin for plugin in plugins["plugins"] if plugin["name"] == "abalone_model_page"]
    views = {view["destination"]: view for view in plugin["external_views"]}
    assert views["nav"]["href"] == "abalone/" and views["nav"]["nav_top_level"]
    assert views["dag_run"]["href"] == "abalone/runs/{DAG_ID}/{RUN_ID}"
    # What the UI's iframe requests: the href with the ids URL-encoded, against the UI's base URL, same origin,
    # carrying only the UI's session cookie.
    frame = views["dag_run"]["href"].replace("{DAG_ID}", DAG).replace("{RUN_ID}", quote(run_id(2), safe=""))
    cookies = {"_token": services["token"]}
    for path in (views["nav"]["href"], frame):
        assert requests.get(f"{services['base']}/{path}", cookies=cookies, timeout=10).status_code == 200


class HangingMlflow(BaseHTTPRequestHandler):
    """Answers /health, then never answers the API: a tracking server whose database is stuck."""

    release = threading.Event()

    def do_GET(self):
        if self.path == "/health":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")
            return
        self.release.wait(60)

    do_POST = do_GET

    def log_message(self, *args):
        pass


def timed(url: str, headers: dict) -> tuple[requests.Response, float]:
    start = time.monotonic()
    response = requests.get(url, headers=headers, timeout=30)
    return response, time.monotonic() - start


def test_with_mlflow_down_the_page_says_so_fast_and_airflow_keeps_answering(services):
    base, headers = services["base"], services["headers"]
    services["mlflow"].stop()
    # A page not read before: the others' reads are served from the cache for 30 s, MLflow down or not.
    page, seconds = timed(f"{base}{report_path(1)}", headers)
    assert page.status_code == 503 and seconds < 10
    assert "MLflow is not answering" in page.text and "127.0.0.1" in page.text and "unreachable" in page.text
    assert requests.get(f"{base}/api/v2/version", timeout=5).status_code == 200

    server = ThreadingHTTPServer(("127.0.0.1", services["mlflow_port"]), HangingMlflow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        time.sleep(6)  # the failure above is remembered for 5 s
        result = {}
        waiting = threading.Thread(target=lambda: result.update(page=timed(f"{base}{report_path(3)}", headers)))
        waiting.start()
        time.sleep(1)
        version, version_seconds = timed(f"{base}/api/v2/version", {})
        waiting.join()
        page, seconds = result["page"]
        assert version.status_code == 200 and version_seconds < 2, "a hung read holds up no other request"
        assert page.status_code == 503 and 4 < seconds < 10 and "no answer within 5 s" in page.text
    finally:
        HangingMlflow.release.set()
        server.shutdown()
