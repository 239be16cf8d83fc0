"""Worker processes for the scan and the assembly: how many, and results in order with bounded work in flight.

Blocks of the source (in the scan) and partitions of the spool (in the assembly) are independent, so they are
handed to a pool of forked processes and their results taken back in order, which keeps the output the same
for any number of workers. A source of one block, or one worker, is processed in the task's own process.
"""

from __future__ import annotations

import collections
import math
import os
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from abalone_pipeline import forking

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
# Workers by default at most: each holds the libraries' working memory and a block or a partition, and the
# task's own process (reading, hashing, writing the splits) is the limit well before this on a big host.
DEFAULT_MAX_WORKERS = 8


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity, capped by its cgroup's CPU quota (cgroup v2's
    ``cpu.max``, a container's ``--cpus``; cgroup v1 quotas and a parent cgroup's are not read)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def worker_count(requested: int | None, size: int | None, block_bytes: int) -> int:
    """``requested`` workers (if None, the CPUs available, at most ``DEFAULT_MAX_WORKERS``), never more than
    the source has blocks."""
    workers = requested or min(available_cpus(), DEFAULT_MAX_WORKERS)
    if size is not None:
        workers = min(workers, max(1, math.ceil(size / block_bytes)))
    return max(1, workers)


class _InProcess(Executor):
    """Runs each call at once in this process: one worker needs no pool."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # handed back through the future, as a pool would
            future.set_exception(exc)
        return future


@contextmanager
def pool(workers: int) -> Generator[Executor, None, None]:
    """A pool of ``workers`` forked processes (``abalone_pipeline.forking``), or this process alone.

    On exit, work not started is cancelled and the work running is waited for, so that nothing writes to
    the spool once the caller goes on (or removes it).
    """
    if workers <= 1:
        yield _InProcess()
        return
    executor = ProcessPoolExecutor(
        workers, mp_context=forking.context(), initializer=forking.as_helper, initargs=(os.getpid(),)
    )
    try:
        with forking.children_allowed():  # forked, all of them start on the first submit (none is replaced)
            executor.submit(os.getpid).result()
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def in_order(executor: Executor, calls: Iterable[tuple[Callable[..., Any], tuple]], ahead: int) -> Iterator[Any]:
    """The result of each ``(function, args)`` in ``calls``, in order, with at most ``ahead`` of them pending.

    ``calls`` is consumed lazily, so the caller's reading (of the source, of the spool) is bounded too. An
    error in ``calls`` itself (reading further ahead) comes after the results submitted before it, as it
    would in one process: an earlier block's refusal is the one raised.
    """
    pending: collections.deque[Future] = collections.deque()
    iterator = iter(calls)
    while True:
        try:
            function, args = next(iterator)
        except StopIteration:
            break
        except Exception:  # reading further ahead failed: the results before it come first
            while pending:
                yield pending.popleft().result()
            raise
        pending.append(executor.submit(function, *args))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
