"""Fencing: a trainer keeps working only while its attempt is the current one for its DAG run and task.

Before it starts a container, the Airflow task writes ``{"attempt": ...}`` to a small fence object in the
object store (``abalone_pipeline.attempts``); a newer try overwrites it, and the DAG run's cleanup
overwrites it with a closed marker. A container whose Airflow process died (a killed worker, a lost host)
cannot be stopped by a retry on another host, so it stops itself: it reads the fence at every epoch (at
most every ``interval`` seconds) and, unconditionally, before it logs its model and before it ends its
MLflow run, and exits without finishing anything once its attempt is no longer the current one.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

from abalone_trainer.data import read_uri

log = logging.getLogger(__name__)


class Superseded(Exception):
    """A newer attempt (or the DAG run's cleanup) owns this task now: stop without finishing anything."""


class FenceUnreadable(Exception):
    """The fence cannot be read when it must be: the attempt cannot prove it is still the current one."""


@dataclass
class Fence:
    """The fence at ``uri`` and this container's ``attempt``; with no ``uri``, every check passes."""

    uri: str | None
    attempt: str | None
    interval: float = 5.0
    _last_check: float = field(default=float("-inf"), init=False)

    def current(self) -> str | None:
        """The attempt the fence names now."""
        record = json.loads(read_uri(self.uri))
        return record.get("attempt")

    def check(self, *, required: bool = False) -> None:
        """Raise ``Superseded`` if another attempt owns the task.

        A periodic check (``required=False``) is skipped within ``interval`` of the last one and shrugs off a
        fence it cannot read (the store may be briefly unreachable; the next check will tell). A required
        check always reads, and raises ``FenceUnreadable`` if it cannot.
        """
        if not self.uri:
            return
        now = time.monotonic()
        if not required and now - self._last_check < self.interval:
            return
        self._last_check = now
        try:
            current = self.current()
        except Exception as exc:
            if required:
                raise FenceUnreadable(f"cannot read the fence {self.uri}: {exc}") from exc
            log.warning("cannot read the fence %s (will check again): %s", self.uri, exc)
            return
        if current != self.attempt:
            raise Superseded(f"attempt {self.attempt} was superseded by {current or 'nothing'} ({self.uri})")
