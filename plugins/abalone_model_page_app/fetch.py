"""MLflow reads for the page, bounded in time: a reachability probe, a deadline, few threads and a short cache.

MLflow's client retries a failed request with backoff for minutes, and its limits are process-wide environment
variables. Rather than change them for the whole API server, every read runs in a thread of its own: the request
waits at most ``DEADLINE_SECONDS`` and then answers with the error, while the read finishes in the background
holding one of ``MAX_READS`` slots; concurrent requests for the same data share one read and its result.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

DEADLINE_SECONDS = 5.0  # the longest a page waits for MLflow
PROBE_SECONDS = 2.0  # a server that does not answer at all is reported at once, before MLflow's retries
CACHE_SECONDS = 30.0  # hundreds of runs load once per half minute, whoever asks
FAILURE_CACHE_SECONDS = 5.0  # a restarted server shows up on the next reload
STALE_SECONDS = 30.0  # an unfinished read this old no longer holds up a new one
MAX_READS = 4  # reads still waiting for MLflow at once; past that a page answers without asking
MAX_ENTRIES = 256

_entries: dict[tuple, tuple[float, Future]] = {}
_lock = threading.Lock()
_slots = threading.BoundedSemaphore(MAX_READS)
_client_loaded = threading.Event()


class MlflowUnavailable(RuntimeError):
    """MLflow did not answer in time, or answered with an error; the message names the server."""

    def __init__(self, server: str, error: str) -> None:
        super().__init__(f"MLflow at {server}: {error}")
        self.server = server
        self.error = error


class Starting(RuntimeError):
    """The first read since the API server started is still loading the MLflow client."""


def display_uri(uri: str) -> str:
    """``uri`` without user info, fit for a page: a tracking URI may carry credentials."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def probe(tracking_uri: str) -> None:
    """Raise ``MlflowUnavailable`` if an http(s) tracking server does not answer; any HTTP answer will do."""
    if not tracking_uri.startswith(("http://", "https://")):
        return  # a SageMaker ARN: the plugin resolves its endpoint; the deadline still bounds the wait
    import requests

    try:
        requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=PROBE_SECONDS)
    except requests.exceptions.SSLError:
        return  # MLflow may trust a CA that plain requests does not: let the real read decide
    except requests.RequestException as exc:
        raise MlflowUnavailable(display_uri(tracking_uri), f"unreachable ({type(exc).__name__}: {exc})") from None


def _server() -> str:
    from abalone_pipeline.config import Settings

    return display_uri(Settings.from_env().tracking_uri)


def _read(query: Callable[..., Any], args: tuple) -> Any:
    from abalone_contract.tracking import mlflow_client
    from abalone_pipeline.config import Settings

    settings = Settings.from_env()
    server = display_uri(settings.tracking_uri)
    probe(settings.tracking_uri)
    try:
        client = mlflow_client(settings.tracking_uri)
        _client_loaded.set()
        return query(client, settings, *args)
    except Exception as exc:
        log.exception("model page: reading MLflow at %s failed", server)
        raise MlflowUnavailable(server, f"{type(exc).__name__}: {exc}") from None


def _start(query: Callable[..., Any], args: tuple) -> Future:
    if not _slots.acquire(blocking=False):
        raise MlflowUnavailable(_server(), f"{MAX_READS} earlier reads are still waiting for it; not asking again")
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(_read(query, args))
        except BaseException as exc:
            future.set_exception(exc)
        finally:
            _slots.release()

    threading.Thread(target=run, name=f"abalone-model-page-{query.__name__}", daemon=True).start()
    return future


def _reusable(created: float, future: Future) -> bool:
    age = time.monotonic() - created
    if not future.done():
        return age < STALE_SECONDS
    return age < (FAILURE_CACHE_SECONDS if future.exception() else CACHE_SECONDS)


def _future(query: Callable[..., Any], args: tuple) -> Future:
    key = (query.__name__, *args)
    with _lock:
        entry = _entries.get(key)
        if entry and _reusable(*entry):
            return entry[1]
        if len(_entries) >= MAX_ENTRIES:
            for old in [old for old, entry in _entries.items() if not _reusable(*entry)]:
                del _entries[old]
            if len(_entries) >= MAX_ENTRIES:
                del _entries[min(_entries, key=lambda old: _entries[old][0])]
        future = _start(query, args)
        _entries[key] = (time.monotonic(), future)
        return future


async def read(query: Callable[..., Any], *args: Any) -> Any:
    """``query(client, settings, *args)``, shared and cached; past the deadline, ``MlflowUnavailable``.

    ``args`` must be hashable: with the query's name they are the cache key.
    """
    waiting = asyncio.wrap_future(_future(query, args))
    done, _ = await asyncio.wait({waiting}, timeout=DEADLINE_SECONDS)
    if done:
        return waiting.result()
    # The read's outcome is the cache's; retrieving it here keeps asyncio from logging it as never retrieved.
    waiting.add_done_callback(lambda future: future.cancelled() or future.exception())
    if not _client_loaded.is_set():
        raise Starting("loading the MLflow client for the first time since the API server started")
    raise MlflowUnavailable(_server(), f"no answer within {DEADLINE_SECONDS:.0f} s (still waiting in the background)")


def clear() -> None:
    """Forget every cached read (tests)."""
    with _lock:
        _entries.clear()
