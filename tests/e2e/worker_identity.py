"""Airflow's ``[core] hostname_callable`` for the distributed test: each Celery worker on this one machine
names itself (``ABALONE_WORKER_NAME``), so the task instances record which worker ran them."""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    return os.environ.get("ABALONE_WORKER_NAME") or socket.getfqdn()
