"""SIGTERM as an exception, so ``docker stop`` ends a training promptly and its MLflow run as KILLED.

The container runs under an init process (Docker's ``--init``) that forwards the signal; without a
handler, Python as PID 1 would ignore it and ``docker stop`` would wait out its grace period and SIGKILL.
"""

from __future__ import annotations

import signal


class Terminated(BaseException):
    """The container is being stopped. A BaseException, so that no ``except Exception`` swallows it."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated(f"stopped by signal {signal.Signals(signum).name}")


def install() -> None:
    signal.signal(signal.SIGTERM, _raise_terminated)
    signal.signal(signal.SIGINT, _raise_terminated)


def ignore() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
