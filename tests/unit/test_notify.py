"""Failure notifiers (the log line always; SNS against moto's server) and the run summary."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import boto3
import pytest
from moto.server import ThreadedMotoServer

from abalone_pipeline.notify import (
    LogFailure,
    SnsFailure,
    failure_line,
    failure_notifiers,
    failure_summary,
)

CONTEXT = {
    "dag_run": SimpleNamespace(dag_id="abalone_retraining", run_id="scheduled__2026-11-26", run_type="scheduled"),
    "ti": SimpleNamespace(dag_id="abalone_retraining", run_id="scheduled__2026-11-26", task_id="train", try_number=3),
    "exception": RuntimeError("the trainer container exited with 137 (killed)"),
}


def test_the_log_notifier_is_always_there_and_sns_only_when_configured():
    assert [type(n) for n in failure_notifiers(None, "aws_default")] == [LogFailure]
    notifiers = failure_notifiers("arn:aws:sns:eu-west-1:123456789012:ml-alerts", "aws_default")
    assert [type(n) for n in notifiers] == [LogFailure, SnsFailure]


def test_a_failure_is_one_structured_log_line(caplog):
    with caplog.at_level(logging.ERROR, logger="abalone_pipeline.notify"):
        LogFailure().notify(CONTEXT)
    (record,) = caplog.records
    prefix, payload = record.getMessage().split(" ", 1)
    assert prefix == "ABALONE_FAILURE"
    assert json.loads(payload) == {
        "dag_id": "abalone_retraining",
        "run_id": "scheduled__2026-11-26",
        "run_type": "scheduled",
        "task_id": "train",
        "try_number": 3,
        "error": "the trainer container exited with 137 (killed)",
    }
    run_level = failure_summary({"dag_run": CONTEXT["dag_run"], "reason": "task_failure"})
    assert run_level["task_id"] is None and run_level["error"] == "task_failure"


@pytest.fixture
def sns_endpoint(monkeypatch):
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    extra = {"endpoint_url": url, "region_name": "eu-west-1"}
    monkeypatch.setenv("AIRFLOW_CONN_ALERTS", json.dumps({"conn_type": "aws", "extra": extra}))
    yield url
    server.stop()


def test_sns_publishes_the_failure_to_the_topic(sns_endpoint):
    clients = {name: boto3.client(name, endpoint_url=sns_endpoint, region_name="eu-west-1") for name in ("sns", "sqs")}
    topic = clients["sns"].create_topic(Name="ml-alerts")["TopicArn"]
    queue = clients["sqs"].create_queue(QueueName="inbox")["QueueUrl"]
    queue_arn = clients["sqs"].get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    clients["sns"].subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)

    SnsFailure(target_arn=topic, aws_conn_id="alerts").notify(CONTEXT)

    (message,) = clients["sqs"].receive_message(QueueUrl=queue, WaitTimeSeconds=2)["Messages"]
    envelope = json.loads(message["Body"])
    assert envelope["Subject"] == "Airflow failure: abalone_retraining.train"
    assert json.loads(envelope["Message"])["error"] == "the trainer container exited with 137 (killed)"


def test_a_multi_line_error_is_told_in_one_line_the_same_for_the_log_and_sns(caplog):
    context = {**CONTEXT, "exception": ValueError("cannot stage: the header\n  has 8 columns\n")}
    with caplog.at_level(logging.ERROR, logger="abalone_pipeline.notify"):
        LogFailure().notify(context)
    (record,) = caplog.records
    line = record.getMessage()
    assert "\n" not in line
    assert line == f"ABALONE_FAILURE {failure_line(failure_summary(context))}"
    assert failure_summary(context)["error"] == "cannot stage: the header has 8 columns"
