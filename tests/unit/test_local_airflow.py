"""The pure helpers of scripts/local_airflow.py (the stack behind make run): settings, links, state changes; and
scripts/local_mlflow.py, the one way make run, the tests and the benchmarks start the local MLflow server."""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from abalone_pipeline.config import PROJECT_ROOT, Settings

# As when the scripts run: their directory on the path, so local_airflow finds local_mlflow beside it.
if str(PROJECT_ROOT / "scripts") not in sys.path:
    sys.path.append(str(PROJECT_ROOT / "scripts"))
local_airflow = importlib.import_module("local_airflow")
local_mlflow = importlib.import_module("local_mlflow")


@pytest.fixture
def stack(tmp_path):
    return local_airflow.Stack.from_env(
        {"ABALONE_LOCAL_DIR": str(tmp_path), "ABALONE_AIRFLOW_PORT": "18080", "ABALONE_MLFLOW_PORT": "15000"}
    )


def test_ports_and_directories_come_from_the_environment(stack, tmp_path):
    assert stack.api == "http://127.0.0.1:18080"
    assert stack.airflow_base_url == "http://localhost:18080"
    assert stack.tracking_uri == stack.mlflow_ui_url == "http://127.0.0.1:15000"
    assert stack.pid_file("scheduler") == tmp_path / "airflow" / "scheduler.pid"
    assert stack.pid_file("mlflow") == tmp_path / "mlflow" / "server.pid"
    assert stack.manages_mlflow()


def test_a_remote_tracking_server_or_an_arn_is_never_started_here(tmp_path):
    for uri in ("http://mlflow.example.com:5000", "arn:aws:sagemaker:eu-west-1:1:mlflow-tracking-server/x"):
        env = {"ABALONE_LOCAL_DIR": str(tmp_path), "ABALONE_MLFLOW_TRACKING_URI": uri}
        assert not local_airflow.Stack.from_env(env).manages_mlflow()


def test_without_env_sh_the_error_says_so():
    with pytest.raises(local_airflow.StackError, match=r"source scripts/env\.sh"):
        local_airflow.Stack.from_env({})


def test_env_sh_makes_every_url_agree(tmp_path):
    env = {"PATH": os.environ["PATH"], "ABALONE_LOCAL_DIR": str(tmp_path), "ABALONE_AIRFLOW_PORT": "18081"}
    script = f"source {PROJECT_ROOT / 'scripts' / 'env.sh'} && env"
    printed = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    values = dict(line.split("=", 1) for line in printed.splitlines() if "=" in line)
    assert values["ABALONE_AIRFLOW_BASE_URL"] == values["AIRFLOW__API__BASE_URL"] == "http://localhost:18081"
    assert values["ABALONE_MLFLOW_UI_URL"] == values["ABALONE_MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    assert values["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"].startswith(str(tmp_path))
    assert values["AIRFLOW_HOME"] == str(tmp_path / "airflow")
    # A SageMaker ARN is no URL a browser opens: the UI URL stays unset and the pipeline links to the console.
    arn = "arn:aws:sagemaker:eu-west-1:1:mlflow-tracking-server/x"
    env["ABALONE_MLFLOW_TRACKING_URI"] = arn
    printed = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    assert "ABALONE_MLFLOW_UI_URL=" not in printed
    assert Settings.from_env({"ABALONE_MLFLOW_TRACKING_URI": arn}).mlflow_ui_url is None


def test_the_run_link_is_the_one_the_pipeline_writes_to_mlflow(stack):
    from abalone_pipeline.links import airflow_run_url

    run_id = "manual__2026-12-01T16:49:02.616801+00:00"
    pipeline = airflow_run_url(stack.airflow_base_url, "abalone_retraining", run_id)
    assert local_airflow.run_url(stack, "abalone_retraining", run_id) == pipeline
    assert local_airflow.task_url(stack, "d", "r", "t", 2) == "http://localhost:18080/dags/d/runs/r/tasks/t/mapped/2"


def test_the_task_log_path_follows_airflows_default_template(stack):
    path = local_airflow.task_log_path(stack, "d", "r", "train", 2)
    assert path == stack.airflow_home / "logs" / "dag_id=d" / "run_id=r" / "task_id=train" / "attempt=2.log"
    mapped = local_airflow.task_log_path(stack, "d", "r", "train", 1, map_index=3)
    assert mapped.parent.name == "map_index=3"


def test_each_state_change_prints_one_line_and_repeats_print_nothing():
    tis = [
        {"task_id": "stage", "map_index": -1, "state": "success", "try_number": 1, "start_date": "2026-12-01T01"},
        {"task_id": "train", "map_index": -1, "state": None, "try_number": 0, "start_date": None},
    ]
    seen, lines = local_airflow.state_changes({}, tis)
    assert [line.split() for line in lines] == [["stage", "success"]]
    tis[1].update(state="up_for_retry", try_number=1)
    seen, lines = local_airflow.state_changes(seen, tis)
    assert [line.split() for line in lines] == [["train", "up_for_retry"]]
    tis[1].update(state="running", try_number=2)
    seen, lines = local_airflow.state_changes(seen, tis)
    assert [line.split() for line in lines] == [["train", "running", "(try", "2)"]]
    assert local_airflow.state_changes(seen, tis)[1] == []


def test_mapped_task_instances_are_told_apart():
    tis = [{"task_id": "score", "map_index": i, "state": "running", "try_number": 1} for i in range(2)]
    assert [line.split()[0] for line in local_airflow.state_changes({}, tis)[1]] == ["score[0]", "score[1]"]


def test_a_changed_setting_is_named_without_storing_its_value():
    before = local_airflow.fingerprint({"ABALONE_TASK_RETRIES": "1", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "HOME": "/x"})
    assert "HOME" not in before and "s3cr3t" not in json.dumps(before)
    now = local_airflow.fingerprint({"ABALONE_TASK_RETRIES": "2", "AWS_SECRET_ACCESS_KEY": "s3cr3t"})
    assert local_airflow.changed_settings(before, now) == ["ABALONE_TASK_RETRIES"]
    ignored = local_airflow.fingerprint({"ABALONE_RUN_TIMEOUT_SECONDS": "5"})
    assert ignored == {}


def test_only_a_past_slot_is_due_on_unpausing():
    now = datetime(2026, 12, 1, 16, 0, tzinfo=UTC)
    dag = {"next_dagrun_logical_date": "2026-12-01T02:00:00Z", "next_dagrun_run_after": "2026-12-01T02:00:00Z"}
    assert local_airflow.pending_slot(dag, now) == "2026-12-01T02:00:00Z"
    later = {"next_dagrun_logical_date": "2026-12-02T02:00:00Z", "next_dagrun_run_after": "2026-12-02T02:00:00Z"}
    assert local_airflow.pending_slot(later, now) is None
    assert local_airflow.pending_slot({"next_dagrun_logical_date": None}, now) is None, "schedule none"


def test_a_taken_port_is_reported_with_the_variable_to_change():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(local_airflow.StackError, match=f"port {port} .*ABALONE_AIRFLOW_PORT"):
            local_airflow.check_port_free(port, "the Airflow API server", "ABALONE_AIRFLOW_PORT")


def test_a_stale_pid_file_is_not_running(stack):
    stack.state_dir.mkdir(parents=True)
    stack.pid_file("scheduler").write_text(f"{os.getpid()}\n")  # alive, but not a group leader running airflow
    assert local_airflow.running(stack, "scheduler") is None
    stack.pid_file("scheduler").write_text("not a pid\n")
    assert local_airflow.running(stack, "scheduler") is None


def test_the_end_of_a_json_task_log_is_readable(tmp_path):
    log = tmp_path / "attempt=1.log"
    entries = [
        {"level": "info", "event": "training"},
        {"level": "error", "event": "Task failed", "error_detail": [{"exc_type": "ValueError", "exc_value": "bad"}]},
    ]
    log.write_text("\n".join(json.dumps(e) for e in entries) + "\nplain line\n")
    text = local_airflow.readable_log(log)
    assert "info: training" in text and "ValueError: bad" in text and "plain line" in text
    assert "no log at" in local_airflow.readable_log(Path(tmp_path / "missing.log"))


# --- scripts/local_mlflow.py -------------------------------------------------------------------------------------


def test_the_mlflow_command_is_sqlite_proxied_artifacts_loopback_one_worker(tmp_path):
    command = local_mlflow.command(tmp_path, 15000, bin_dir=Path("/venv/bin"))
    assert command == [
        "/venv/bin/mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{tmp_path}/mlflow.db",
        "--artifacts-destination",
        str(tmp_path / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        "15000",
        "--workers",
        "1",
    ]
    in_s3 = local_mlflow.command(tmp_path, 15000, artifacts="s3://bucket/", allowed_hosts=["mlflow:5000", "localhost"])
    assert in_s3[in_s3.index("--artifacts-destination") + 1] == "s3://bucket/"
    assert in_s3[-2:] == ["--allowed-hosts", "mlflow:5000,localhost"]
    assert local_mlflow.command(tmp_path, 1)[0] == str(Path(sys.executable).parent / "mlflow")


def test_the_server_environment_keeps_the_callers_but_never_runs_mlflows_job_runner():
    env = local_mlflow.environment({"A": "1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true"})
    assert env == {"A": "1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    assert local_mlflow.environment({"MLFLOW_DISABLE_TELEMETRY": "false"})["MLFLOW_DISABLE_TELEMETRY"] == "false"


def test_make_run_keeps_its_mlflow_files_where_make_stop_and_the_ui_test_look(stack, tmp_path):
    assert stack.log_file("mlflow") == tmp_path / "mlflow" / "server.log"
    command = local_mlflow.command(stack.mlflow_dir, stack.mlflow_port, bin_dir=stack.bin_dir)
    assert f"sqlite:///{tmp_path}/mlflow/mlflow.db" in command and str(tmp_path / "mlflow" / "artifacts") in command


def test_a_server_that_exits_during_start_up_is_reported_with_its_log(tmp_path):
    log = tmp_path / "server.log"
    crash = [sys.executable, "-c", "print('no such backend store'); raise SystemExit(3)"]
    process = local_mlflow.start(crash, log, pid_file=tmp_path / "server.pid")
    assert (tmp_path / "server.pid").read_text() == f"{process.pid}\n"
    uri = local_mlflow.uri(local_mlflow.free_port())
    with pytest.raises(local_mlflow.MlflowServerError, match=r"exited \(3\)") as error:
        local_mlflow.wait_healthy(uri, process=process, log=log, timeout=30, interval=0.1)
    assert str(log) in str(error.value) and "no such backend store" in str(error.value)


def test_a_server_that_never_answers_times_out_and_stop_ends_its_whole_process_group(tmp_path):
    log = tmp_path / "server.log"
    process = local_mlflow.start(["sh", "-c", "sleep 300 & sleep 300"], log)
    try:
        uri = local_mlflow.uri(local_mlflow.free_port())
        with pytest.raises(local_mlflow.MlflowServerError, match=r"did not answer .*/health within 0 s") as error:
            local_mlflow.wait_healthy(uri, process=process, log=log, timeout=0.3, interval=0.1)
        assert str(log) in str(error.value)
    finally:
        local_mlflow.stop(process, timeout=10)
    assert process.returncode is not None and local_airflow.group_members(process.pid) == []


def test_healthy_means_health_answers_200():
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Health) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            assert local_mlflow.healthy(local_mlflow.uri(server.server_address[1]))
            assert local_mlflow.healthy(local_mlflow.uri(server.server_address[1]) + "/")
        finally:
            server.shutdown()
    assert not local_mlflow.healthy(local_mlflow.uri(local_mlflow.free_port()))


def test_make_run_prints_the_followed_runs_own_headline(tmp_path):
    """Not the newest MLflow run's: a night that did not train made none."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    answers = {
        "/api/v2/dags/d/dagRuns/manual__1%2B00/taskInstances/summarize/xcomEntries/return_value": {
            "value": {"headline": "not trained: unchanged since the champion v1"}
        },
        "/api/v2/dags/d/dagRuns/as-text/taskInstances/summarize/xcomEntries/return_value": {
            "value": json.dumps({"headline": "promoted v2: test RMSE 2.0"})
        },
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = answers.get(self.path)
            self.send_response(200 if body else 404)
            self.end_headers()
            self.wfile.write(json.dumps(body or {"detail": "not found"}).encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        stack = local_airflow.Stack.from_env(
            {"ABALONE_LOCAL_DIR": str(tmp_path), "ABALONE_AIRFLOW_PORT": str(server.server_address[1])}
        )
        headline = local_airflow.run_headline
        assert headline(stack, "t", "d", "manual__1+00") == "not trained: unchanged since the champion v1"
        assert headline(stack, "t", "d", "as-text") == "promoted v2: test RMSE 2.0"
        assert headline(stack, "t", "d", "failed-before-summarize") is None
    finally:
        server.shutdown()
