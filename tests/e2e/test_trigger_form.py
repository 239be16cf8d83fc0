"""The trigger form of abalone_retraining in a real browser: Debian's headless Chromium against Airflow's API server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from abalone_pipeline.config import PROJECT_ROOT

from .conftest import chromium, free_port, wait_until

DAG_ID = "abalone_retraining"
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(os.environ.get("ABALONE_TEST_ARTIFACTS", PROJECT_ROOT / ".local" / "test-artifacts"))

if not (CHROMIUM and CHROMEDRIVER) and not os.environ.get("CI"):
    pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)", allow_module_level=True)


@pytest.fixture(scope="module")
def api_server(tmp_path_factory):
    """Airflow's API server (and UI) on SQLite, with the project's DAGs parsed into its database."""
    home = tmp_path_factory.mktemp("airflow-ui")
    port = free_port()
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        # The simple auth manager with everyone admin: the test is about the form, not the login page.
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "GIT_PYTHON_REFRESH": "quiet",
    }
    airflow = str(Path(sys.executable).with_name("airflow"))
    for command in (["db", "migrate"], ["dags", "reserialize"]):
        done = subprocess.run([airflow, *command], env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = (home / "api-server.log").open("w")
    server = subprocess.Popen(
        [airflow, "api-server", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/api/v2/version", timeout=2)
                break
            except OSError:
                assert server.poll() is None, (home / "api-server.log").read_text()[-3000:]
                time.sleep(1)
        else:
            pytest.fail("the API server did not answer within 2 minutes")
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = chromium(tmp_path_factory.mktemp("chromium"), 1400, 1800)
    driver.implicitly_wait(10)
    yield driver
    driver.quit()


def dag_runs(base: str) -> list[dict]:
    with urllib.request.urlopen(f"{base}/api/v2/dags/{DAG_ID}/dagRuns?order_by=-run_after") as response:
        return json.load(response)["dag_runs"]


def open_form(browser, base: str):
    """The DAG's page, then its Trigger button: returns the form's dialog."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    browser.get(f"{base}/dags/{DAG_ID}")
    wait_until(
        browser,
        ec.element_to_be_clickable((By.CSS_SELECTOR, "button[aria-label='Trigger Dag']")),
        timeout=60,
    ).click()
    wait_until(
        browser,
        lambda b: "Run Parameters" in b.find_elements(By.CSS_SELECTOR, "[role=dialog]")[-1].text,
        timeout=30,
    )
    return browser.find_elements(By.CSS_SELECTOR, "[role=dialog]")[-1]


def set_field(browser, name: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = browser.find_element(By.CSS_SELECTOR, f"input[name=element_{name}]")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(value)


def submit(dialog) -> None:
    from selenium.webdriver.common.by import By

    (button,) = [b for b in dialog.find_elements(By.CSS_SELECTOR, "button") if b.text == "Trigger"]
    assert button.get_attribute("disabled") is None, "the form refuses its own defaults"
    button.click()


def test_the_form_shows_every_param_and_a_changed_value_reaches_the_run(api_server, browser):
    dialog = open_form(browser, api_server)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "trigger-form.png"))
    text = dialog.text
    dag = json.loads(urllib.request.urlopen(f"{api_server}/api/v2/dags/{DAG_ID}/details").read())
    params = dag["params"]
    assert len(params) == 11
    for name, param in params.items():
        assert param["schema"]["title"] in text, f"{name}: its title is not on the form"
        assert param["description"] in text, f"{name}: its description is not on the form"

    before = {run["dag_run_id"] for run in dag_runs(api_server)}
    set_field(browser, "epochs", "7")
    submit(dialog)
    for _ in range(30):
        new = [run for run in dag_runs(api_server) if run["dag_run_id"] not in before]
        if new:
            break
        time.sleep(1)
    (run,) = new
    assert run["conf"]["epochs"] == 7, "the value typed in the form is the run's"
    assert run["conf"]["batch_size"] == 64 and run["conf"]["force_reason"] is None, "the rest keep their defaults"


def test_an_out_of_bounds_value_is_refused_and_creates_no_run(api_server, browser):
    before = {run["dag_run_id"] for run in dag_runs(api_server)}
    dialog = open_form(browser, api_server)
    set_field(browser, "max_quarantine_fraction", "1")  # the share must be below 1
    submit(dialog)
    wait_until(browser, lambda b: "Failed to Trigger" in b.page_source, timeout=30)
    browser.save_screenshot(str(ARTIFACTS / "trigger-form-refused.png"))
    time.sleep(2)
    assert {run["dag_run_id"] for run in dag_runs(api_server)} == before, "a refused form created a run"
