"""Validation of a Bundle's resources in helper processes.

fhir.resources validates about 5,000 resources a second on one core here
(0.2 ms each, pydantic plus fhir.resources' Python validators), and holds
the GIL all that time: a 100-entry Bundle is 19 ms during which the serving
process's event loop (HL7 ACKs, other requests) and its writers barely run. From
``min_resources`` on, the resources are sent to helper processes instead (the
pickled resources cost well under a millisecond), so validation runs on another
core while this process goes on writing. Fewer resources are validated in the
calling thread, which is cheaper than the round trip. The helpers start with the
first large Bundle (a site that receives none runs none), which is validated in
the calling thread while they start.

The helpers are started with ``spawn`` (forking a process that runs threads is
unsafe), hold no database connection and no key, and exit by themselves when
the process that started them is gone. When a helper dies, Bundles are validated
in the calling thread (the one it was validating too) and new helpers start
``restart_after_s`` later.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from fhir.errors import FhirError
from fhir.validate import Verdict, verdicts

log = logging.getLogger(__name__)

MIN_RESOURCES = 8  # below this, the round trip costs more than validating here
RESTART_AFTER_S = 10.0  # after a helper died
_WATCH_PARENT_S = 0.5


def default_processes() -> int:
    """One helper per core beyond the first, at most four; none on one core."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


class ValidationPool:
    """``validate(resources)``: for each resource, None or the :class:`FhirError`
    :func:`fhir.validate.parse_data` raises for it, in order. ``processes`` 0
    validates in the calling thread. Thread-safe. Helpers start with the first
    large Bundle (or :meth:`start`), without making it wait: until they have
    imported the models (about a second), Bundles are validated in the calling
    thread. They stop on :meth:`close`."""

    def __init__(self, processes: int = 0, *, min_resources: int = MIN_RESOURCES,
                 restart_after_s: float = RESTART_AFTER_S) -> None:
        self.processes = processes
        self.min_resources = min_resources
        self.restart_after_s = restart_after_s
        self._executor: ProcessPoolExecutor | None = None
        self._warming: list[Future[list[Verdict]]] = []
        self._lock = threading.Lock()
        self._restart_at = 0.0  # time.monotonic() before which helpers are not started again
        self.failures = 0  # helpers found dead (a metric)

    def validate(self, resources: list[dict[str, Any]]) -> list[FhirError | None]:
        executor = self._ready() if len(resources) >= self.min_resources else None
        if executor is None:
            return _errors(verdicts(resources))
        try:
            futures = [executor.submit(verdicts, part) for part in _split(resources, self.processes)]
            found = [verdict for future in futures for verdict in future.result()]
        except BrokenProcessPool:
            self.failures += 1
            log.warning("a FHIR validation helper process stopped; Bundles are validated in "
                        "the serving process until a new one starts (in %g s)", self.restart_after_s)
            self._replace(executor)
            return _errors(verdicts(resources))
        return _errors(found)

    def start(self) -> None:
        """Start the helpers now, not with the first large Bundle."""
        self._ready()

    def ready(self) -> bool:
        """The helpers are up: large Bundles go to them."""
        with self._lock:
            return self._executor is not None and self._warmed()

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def helper_pids(self) -> list[int]:
        """The helpers' process ids (for health and tests)."""
        executor = self._executor
        processes = getattr(executor, "_processes", None) or {}
        return sorted(processes)

    def _ready(self) -> ProcessPoolExecutor | None:
        """The helpers once they are up; started here when there are none (and
        none died in the last ``restart_after_s``)."""
        if self.processes <= 0:
            return None
        with self._lock:
            if self._executor is None:
                if time.monotonic() < self._restart_at:
                    return None
                self._executor = ProcessPoolExecutor(
                    max_workers=self.processes, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_exit_with_parent, initargs=(os.getpid(),))
                # One small task per helper: each starts and imports the models.
                self._warming = [self._executor.submit(verdicts, [{"resourceType": "Patient"}])
                                 for _ in range(self.processes)]
            return self._executor if self._warmed() else None

    def _warmed(self) -> bool:
        """Every helper has imported the models (called holding ``_lock``)."""
        return all(f.done() for f in self._warming)

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """Drop a broken pool; a new one starts after ``restart_after_s`` (a helper
        that cannot start at all must not cost every Bundle a failed start)."""
        with self._lock:
            if self._executor is broken:
                self._executor = None
                self._restart_at = time.monotonic() + self.restart_after_s
        broken.shutdown(wait=False, cancel_futures=True)


def _split(items: list[Any], parts: int) -> list[list[Any]]:
    """``items`` in at most ``parts`` consecutive runs of nearly equal length.

    >>> [len(p) for p in _split(list(range(10)), 3)]
    [4, 3, 3]
    """
    size, extra = divmod(len(items), parts)
    runs, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        if end > start:
            runs.append(items[start:end])
        start = end
    return runs


def _errors(found: list[Verdict]) -> list[FhirError | None]:
    return [None if verdict is None else FhirError(*verdict) for verdict in found]


def _exit_with_parent(parent: int) -> None:
    """Helper initializer: leave when the serving process is gone (killed with
    SIGKILL it cannot tell its helpers, and they would wait forever)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_WATCH_PARENT_S)
        os._exit(0)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()
