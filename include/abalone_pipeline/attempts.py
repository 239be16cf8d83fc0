"""Attempts and their fences: which try of a trainer task in a DAG run may go on working.

Each try of ``train`` and ``evaluate`` claims the task's fence (a small JSON object in the object store,
the one place every GPU host and the Airflow workers share) before its container starts; the trainer
reads it as it works and stops once another attempt owns it (``abalone_trainer.fence``). The DAG run's
cleanup closes the fence, so a container left behind anywhere stops at its next check.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import socket
from datetime import UTC, datetime

from abalone_pipeline.objectstore import ObjectStore

FENCE_PREFIX = "attempts"
TRAINER_TASKS = ("train", "evaluate")


def _safe(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.+-]+", "_", text)


def fence_key(dag_id: str, run_id: str, task_id: str) -> str:
    """The fence's key: readable, and unique even when two run ids differ only in characters made safe."""
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:8]
    return f"{FENCE_PREFIX}/{_safe(dag_id)}/{_safe(run_id)}-{digest}/{_safe(task_id)}.json"


def new_attempt(try_number: int) -> str:
    """An id unique to one try: the try number (for people) and a nonce (a re-run may repeat the number)."""
    return f"try{try_number}-{secrets.token_hex(4)}"


def _write(store: ObjectStore, key: str, record: dict) -> str:
    record = {**record, "host": socket.gethostname(), "at": datetime.now(UTC).isoformat(timespec="seconds")}
    store.replace(key, json.dumps(record, sort_keys=True).encode())
    return store.uri(key)


def claim(store: ObjectStore, key: str, attempt: str) -> str:
    """Make ``attempt`` the one allowed to work; return the fence's URI for the trainer."""
    return _write(store, key, {"attempt": attempt})


def close(store: ObjectStore, key: str, why: str) -> str:
    """Let no attempt work any more (until a new try claims the fence again)."""
    return _write(store, key, {"attempt": None, "closed": why})
