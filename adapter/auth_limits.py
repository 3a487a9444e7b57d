"""Rate limiting of failed authentication, per client address (GDPR art. 32: a guessed
token must take more than a lifetime). After ``limit`` failures within ``window_s``
seconds an address is refused (HTTP 429) until its oldest failure leaves the window."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

AUTH_FAILURES_PER_MINUTE = 10


class AuthFailureLimiter:
    def __init__(self, limit: int = AUTH_FAILURES_PER_MINUTE, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window_s, self._clock = limit, window_s, clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def blocked_for(self, client: str) -> float:
        """Seconds until ``client`` may try again; 0 when it may now."""
        with self._lock:
            failures = self._prune(client)
            if len(failures) < self.limit:
                return 0.0
            return max(0.0, failures[0] + self.window_s - self._clock())

    def failed(self, client: str) -> None:
        with self._lock:
            self._prune(client).append(self._clock())

    def _prune(self, client: str) -> deque[float]:
        failures = self._failures.setdefault(client, deque())
        horizon = self._clock() - self.window_s
        while failures and failures[0] <= horizon:
            failures.popleft()
        if len(self._failures) > 10_000:  # forget idle addresses
            for key in [k for k, v in self._failures.items() if not v and k != client]:
                del self._failures[key]
        return failures
