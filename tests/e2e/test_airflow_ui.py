"""What an operator sees: the live local Airflow of ``make run``, read in headless Chromium.

The stack is the one ``make run`` brings up (``scripts/local_airflow.py`` with ``scripts/env.sh``: API server,
scheduler, DAG processor and triggerer on SQLite, and an MLflow server), on free ports and a temporary
directory. Three runs are triggered through its REST API as ``make trigger`` does: a first champion, a second
run that ties it (rejected) and a dry run. Then the browser logs in through the login form and checks that
the grid tells the three nights apart, that every extra link opens the right MLflow page (also after the API
server restarts), that the model page answers the on-call questions, and that with MLflow stopped the model
page says so while the rest of the UI works. Screenshots are kept in ``ABALONE_TEST_ARTIFACTS``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from abalone_pipeline.config import PROJECT_ROOT

from .conftest import chromium, free_port, wait_until

DAG_ID = "abalone_retraining"
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(os.environ.get("ABALONE_TEST_ARTIFACTS", PROJECT_ROOT / ".local" / "test-artifacts")) / "airflow-ui"
# Enough epochs for a model that beats the baselines; the second run, forced to train on the champion's
# dataset and settings, reproduces it exactly (a tie).
RETRAIN = {"epochs": 40, "force_training": True}
RUNS = {"promoted": {"epochs": 40}, "rejected": RETRAIN, "dry_run": {**RETRAIN, "dry_run": True}}

if not (CHROMIUM and CHROMEDRIVER) and not os.environ.get("CI"):
    pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)", allow_module_level=True)


@dataclass
class Live:
    env: dict[str, str]
    base: str  # the Airflow UI
    mlflow: str  # the MLflow UI
    password: str
    runs: dict[str, str]  # outcome -> DAG run id

    def script(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """``scripts/local_airflow.py`` as the Makefile calls it, with ``scripts/env.sh`` sourced."""
        command = f'source scripts/env.sh && exec "{sys.executable}" scripts/local_airflow.py "$@"'
        done = subprocess.run(
            ["bash", "-c", command, "local_airflow", *args],
            cwd=PROJECT_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert not check or done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        return done

    def api(self, path: str) -> dict:
        request = urllib.request.Request(f"{self.base}/auth/token", method="POST")
        request.add_header("Content-Type", "application/json")
        body = json.dumps({"username": "admin", "password": self.password}).encode()
        token = json.load(urllib.request.urlopen(request, body, timeout=30))["access_token"]
        request = urllib.request.Request(f"{self.base}/api/v2{path}", headers={"Authorization": f"Bearer {token}"})
        return json.load(urllib.request.urlopen(request, timeout=30))


@pytest.fixture(scope="module")
def live(tmp_path_factory, docker_engine) -> Live:
    local = tmp_path_factory.mktemp("make-run")
    airflow_port, mlflow_port = free_port(), free_port()
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("ABALONE_", "AIRFLOW_", "MLFLOW_"))}
    env = {
        **inherited,
        "ABALONE_LOCAL_DIR": str(local),
        "ABALONE_AIRFLOW_PORT": str(airflow_port),
        "ABALONE_MLFLOW_PORT": str(mlflow_port),
        "ABALONE_VENV": str(Path(sys.executable).parent.parent),
        # Manual runs only: the test decides which runs exist.
        "ABALONE_SCHEDULE": "none",
    }
    stack = Live(env, f"http://localhost:{airflow_port}", f"http://127.0.0.1:{mlflow_port}", "", {})
    try:
        stack.script("up")
        stack.password = json.loads((local / "airflow-passwords.json").read_text())["admin"]
        for outcome, conf in RUNS.items():
            done = stack.script("trigger", "--conf", json.dumps(conf))
            stack.runs[outcome] = stack.api(f"/dags/{DAG_ID}/dagRuns?order_by=-run_after&limit=1")["dag_runs"][0][
                "dag_run_id"
            ]
            assert "(success)" in done.stdout, done.stdout[-3000:]
        yield stack
    finally:
        stopped = stack.script("stop", check=False)
        assert stopped.returncode == 0, stopped.stderr[-3000:]


@pytest.fixture(scope="module")
def browser(tmp_path_factory, live):
    driver = chromium(tmp_path_factory.mktemp("chromium"), 1500, 1300)
    driver.implicitly_wait(5)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def wait_for_text(browser, *texts: str, timeout: float = 60) -> str:
    from selenium.webdriver.common.by import By

    wait_until(
        browser, lambda b: all(text in b.find_element(By.TAG_NAME, "body").text for text in texts), timeout=timeout
    )
    return browser.find_element(By.TAG_NAME, "body").text


def shot(browser, name: str) -> None:
    browser.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def run_page(live: Live, outcome: str) -> str:
    return f"{live.base}/dags/{DAG_ID}/runs/{quote(live.runs[outcome], safe='')}"


def log_in(live: Live, browser) -> None:
    """The login form, as a new user meets it (the simple auth manager's, user admin)."""
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    browser.get(live.base)
    wait_until(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "input[name=username]"), timeout=60)
    browser.find_element(By.CSS_SELECTOR, "input[name=username]").send_keys("admin")
    browser.find_element(By.CSS_SELECTOR, "input[name=password]").send_keys(live.password)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for_text(browser, "Dags")


def stop_process(live: Live, pid_file: str) -> None:
    """Stop one process group of the stack (by the pid file ``make run`` keeps) and wait for it to end."""
    pid = int((Path(live.env["ABALONE_LOCAL_DIR"]) / pid_file).read_text())
    os.killpg(pid, signal.SIGTERM)
    for _ in range(60):
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(1)
    pytest.fail(f"{pid_file}: process group {pid} still runs a minute after SIGTERM")


def test_logging_in_through_the_form_shows_the_dag(live, browser):
    log_in(live, browser)
    browser.get(f"{live.base}/dags/{DAG_ID}")
    wait_for_text(browser, DAG_ID)
    shot(browser, "dag")


def grid_state(browser, run_id: str, task_id: str) -> str:
    """The state the grid shows for one task of one run: its cell's tooltip, as an operator reads it."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    cell = browser.find_element(By.ID, f"grid-{run_id}-{task_id}")
    ActionChains(browser).move_to_element(cell).perform()
    shown = f"Run ID: {run_id}"
    tooltip = wait_until(
        browser,
        lambda b: next((t.text for t in b.find_elements(By.CSS_SELECTOR, "[role=tooltip]") if shown in t.text), None),
        timeout=20,
    )
    assert f"Task ID: {task_id}" in tooltip, tooltip
    return tooltip.split("State: ", 1)[1].split("\n", 1)[0]


def test_the_grid_shows_the_registry_task_ran_only_for_the_promotion(live, browser):
    browser.get(f"{live.base}/dags/{DAG_ID}")
    wait_for_text(browser, "promote", "summarize")
    shot(browser, "grid")
    states = {outcome: grid_state(browser, run_id, "promote") for outcome, run_id in live.runs.items()}
    assert states == {"promoted": "Success", "rejected": "Skipped", "dry_run": "Skipped"}, states
    # The run's own page says the same in its task instance table.
    from selenium.webdriver.common.by import By

    for outcome, state in (("promoted", "Success"), ("rejected", "Skipped"), ("dry_run", "Skipped")):
        browser.get(run_page(live, outcome))
        wait_for_text(browser, "Task Instances", "Try Number")
        (row,) = [
            row.text
            for row in browser.find_elements(By.CSS_SELECTOR, "tbody tr")
            if row.text.split("\n", 1)[0] == "promote"
        ]
        assert row.split("\n")[1] == state, (outcome, row)


def candidate(live: Live, outcome: str) -> dict:
    """The summarize task's XCom: the run at a glance, links included."""
    entry = live.api(
        f"/dags/{DAG_ID}/dagRuns/{quote(live.runs[outcome], safe='')}/taskInstances/summarize/xcomEntries/return_value"
    )
    value = entry["value"]
    return json.loads(value) if isinstance(value, str) else value


def extra_link(live: Live, browser, outcome: str, task_id: str, name: str) -> str:
    from selenium.webdriver.common.by import By

    browser.get(f"{run_page(live, outcome)}/tasks/{task_id}/details")
    wait_for_text(browser, "Extra Links", name)
    (link,) = [a for a in browser.find_elements(By.TAG_NAME, "a") if a.text == name]
    return link.get_attribute("href")


def test_each_extra_link_opens_the_right_mlflow_page_also_after_an_api_server_restart(live, browser):
    summary = candidate(live, "promoted")
    run_id = summary["links"]["mlflow_run"].rsplit("/", 1)[1]
    expected = {
        ("train", "MLflow run"): (f"{live.mlflow}/#/runs/{run_id}", run_id),
        ("evaluate", "MLflow run"): (f"{live.mlflow}/#/runs/{run_id}", run_id),
        ("gate", "Gate report"): (summary["links"]["gate_report"], "Gate decision: PROMOTED"),
        ("promote", "Model version"): (f"{live.mlflow}/#/models/abalone-rings/versions/1", "Version 1"),
    }
    assert summary["links"]["gate_report"].endswith(f"/runs/{run_id}/artifacts/gate/report.md")
    for restarted in (False, True):
        if restarted:  # the links are the tasks' XComs: nothing of them lives in the API server
            stop_process(live, "airflow/api-server.pid")
            live.script("up")
            log_in(live, browser)
        for task_id, name in expected:
            assert extra_link(live, browser, "promoted", task_id, name) == expected[task_id, name][0], task_id
    for (task_id, _), (url, shown) in expected.items():
        browser.get(url)
        wait_for_text(browser, shown, timeout=90)
        shot(browser, f"mlflow-{task_id}")
    # A rejected night has no version to link to; its gate still links to its report.
    assert extra_link(live, browser, "rejected", "gate", "Gate report").endswith("/artifacts/gate/report.md")


def open_model_page(live: Live, browser) -> str:
    """The nav's "Model" entry (one click), then the page inside its frame."""
    from selenium.webdriver.common.by import By

    browser.get(live.base)
    wait_for_text(browser, "Model")
    browser.find_element(By.CSS_SELECTOR, "a[aria-label=Model], a[href$='/plugin/abalone-model']").click()
    frame = wait_until(browser, lambda b: b.find_element(By.TAG_NAME, "iframe"), timeout=30)
    browser.switch_to.frame(frame)
    return frame


def test_the_model_page_answers_the_on_call_questions(live, browser):
    open_model_page(live, browser)
    try:
        text = wait_for_text(browser, "Champion", "abalone-rings v1", "Decisions", "dry run", timeout=90)
        shot(browser, "model-page")
    finally:
        browser.switch_to.default_content()
    # The champion, the three nights with their outcomes, and why the tie was rejected.
    rows = text.split("Decisions", 1)[1]
    assert rows.count("promoted") >= 1 and "rejected" in rows and "dry run" in rows, rows
    assert "improvement" in rows, "the rejection names its failed rule"
    assert candidate(live, "rejected")["champion_now"] == candidate(live, "dry_run")["champion_now"] == "1"
    assert "Test RMSE per candidate run" in text, "the trend chart"


def test_with_mlflow_stopped_the_model_page_says_so_and_airflow_still_works(live, browser):
    stop_process(live, "mlflow/server.pid")
    # The page caches what it read for 30 s; a run page it has not read yet asks MLflow now.
    browser.get(f"{live.base}/abalone/runs/{DAG_ID}/{quote(live.runs['dry_run'], safe='')}")
    text = wait_for_text(browser, "MLflow is not answering", timeout=30)
    assert live.mlflow.removeprefix("http://") in text, "it names the server"
    shot(browser, "model-page-mlflow-down")
    browser.get(run_page(live, "promoted"))
    wait_for_text(browser, "Task Instances", "promote", "Success")
    shot(browser, "run-page-mlflow-down")
