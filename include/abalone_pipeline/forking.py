"""Helper processes forked from a task: staging's workers and the gate's chart.

Forked, not spawned: a spawned process re-imports the task runner's main module and every library (seconds
each), while a fork starts in milliseconds with them loaded. Two things a fork inherits from an Airflow task
need undoing:

- **The daemon mark.** Celery's prefork pool marks its processes daemonic, and the task process Airflow
  forks from one inherits the mark; ``multiprocessing`` then refuses to start any child ("daemonic processes
  are not allowed to have children"). The mark exists so that a daemon's children are not orphaned when it
  is terminated; here the children are ours and end with the task (``PR_SET_PDEATHSIG`` below, the pool's
  shutdown, ``Drawing.close``). ``children_allowed`` lifts it while children are started.
- **The task's signal handlers.** Airflow's handlers act on the task (they would run its ``on_kill`` in the
  child); a helper resets SIGTERM and SIGINT to their defaults (``as_helper``), and asks the kernel to kill
  it if the task's process dies first.
"""

from __future__ import annotations

import ctypes
import functools
import multiprocessing
import os
import signal
from collections.abc import Generator
from contextlib import contextmanager

PR_SET_PDEATHSIG = 1


def context():
    """The fork start method's context."""
    return multiprocessing.get_context("fork")


@contextmanager
def children_allowed() -> Generator[None, None, None]:
    """Let this process start ``multiprocessing`` children even if it inherited a daemon mark (see above)."""
    config = multiprocessing.current_process()._config  # the mark lives only here; no public way to lift it
    daemon = config.pop("daemon", None)
    try:
        yield
    finally:
        if daemon is not None:
            config["daemon"] = daemon


@functools.cache
def _libc():
    try:
        return ctypes.CDLL(None)  # the C library the interpreter is linked with
    except OSError:
        return None


def as_helper(parent: int) -> None:
    """Run first in a helper forked from process ``parent``: default SIGTERM and SIGINT, and die with the
    task (Linux), also if it died before this was set.

    The kernel's parent-death signal follows the thread that forked: helpers are forked from the task's main
    thread (a ``Drawing``, a pool's first submit), which lives as long as the task does.
    """
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, signal.SIG_DFL)
    prctl = getattr(_libc(), "prctl", None)
    if prctl is not None:
        prctl(ctypes.c_int(PR_SET_PDEATHSIG), ctypes.c_ulong(signal.SIGKILL))
    if os.getppid() != parent:
        os._exit(1)
