"""Work that somebody waits on: HL7 messages before their ACK, FHIR requests
before their answer. Background work (mapping, sending) gives way to it: with
SQLite one transaction writes at a time, and the GIL is shared."""

from __future__ import annotations

import math
import threading
import time

# Under a feed that never pauses, background work still runs, but takes at most
# about this share of the time: after a piece that took t seconds it waits at
# least t * (1 / share - 1) for a pause before the next.
BACKGROUND_SHARE = 0.1


class Waiting:
    """Counts work in progress that a client waits on. ``idle`` is set while
    there is none; background work checks it between items and calls
    :meth:`wait_quiet` before each transaction. Also a context manager
    (``with waiting:`` around a request)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._arrivals = 0
        # time.monotonic() when something last arrived or the last waiting item was
        # answered (its sender may send the next at once); never yet
        self.last_busy = -math.inf
        self.idle = threading.Event()
        self.idle.set()

    def begin(self) -> None:
        with self._lock:
            self._active += 1
            self._arrivals += 1
            self.last_busy = time.monotonic()
            if self.idle.is_set():  # clear() takes the Event's own lock every time
                self.idle.clear()

    def end(self, count: int = 1) -> None:
        with self._lock:
            self._active -= count
            if self._active <= 0:
                self._active = 0
                self.last_busy = time.monotonic()
                self.idle.set()

    def __enter__(self) -> None:
        self.begin()

    def __exit__(self, *_: object) -> None:
        self.end()

    def quiet_seconds(self) -> float:
        """How long nothing has waited and nothing has arrived (0 while something waits)."""
        return time.monotonic() - self.last_busy if self.idle.is_set() else 0.0

    def wait_quiet(self, *, quiet: float = 0.002, timeout: float = 0.05, after: float = 0.0) -> None:
        """Return once nothing has arrived for ``quiet`` seconds (a sender on one
        connection sends its next message right after its ACK), or after
        ``timeout`` anyway, so background work still progresses under load;
        ``after``: how long the caller's previous piece of work took, which
        lengthens that time-out to keep its share to :data:`BACKGROUND_SHARE`."""
        if self.quiet_seconds() >= quiet:
            return  # already quiet: nothing to wait for
        deadline = time.monotonic() + max(timeout, after * (1 / BACKGROUND_SHARE - 1))
        while time.monotonic() < deadline:
            seen = self._arrivals
            if not self.idle.wait(max(0.0, deadline - time.monotonic())):
                return
            time.sleep(quiet)
            if self._arrivals == seen and self.idle.is_set():
                return
