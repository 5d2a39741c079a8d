"""Waiting out a database that went away (a restart, a network cut), and giving up in time."""

import time
from collections.abc import Callable
from typing import TypeVar

from carbrand_search.core.errors import first_line
from carbrand_search.search.storage import database_unreachable

T = TypeVar("T")


class WorkerStopped(Exception):
    """A worker (or `run`) gave up: the database stayed away, or its trials keep failing for
    the same reason."""


class Backoff:
    """Waits 1, 2, 4 … 30 s between retries while the database is unreachable; gives up after
    `patience_s` without success. `say` hears the first error of each outage."""

    def __init__(self, patience_s: float = 300, say: Callable[[str], None] | None = None):
        self.patience_s = patience_s
        self.say = say
        self.delay = 1.0
        self.since: float | None = None

    def reset(self) -> None:
        self.delay, self.since = 1.0, None

    def wait(self, error: Exception) -> None:
        now = time.monotonic()
        if self.since is None and self.say is not None:
            self.say(f"database unreachable ({first_line(error, 160)}); waiting for it")
        self.since = self.since or now
        if now - self.since > self.patience_s:
            raise WorkerStopped(f"database unreachable for {self.patience_s:.0f}s: {error}")
        time.sleep(self.delay)
        self.delay = min(30.0, self.delay * 2)


def riding_out(call: Callable[[], T], outage: Backoff) -> T:
    """`call()`, retried with `outage`'s back-off while the database is unreachable."""
    while True:
        try:
            result = call()
        except Exception as e:
            if not database_unreachable(e):
                raise
            outage.wait(e)
        else:
            outage.reset()
            return result
