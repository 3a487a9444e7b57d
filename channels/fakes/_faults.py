"""Fault injection shared by the HTTP fakes: forced faults, a seeded failure rate, latency."""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from enum import StrEnum

from channels.fakes._server import start_fake


class Fault(StrEnum):
    TOO_MANY_REQUESTS = "429"  # answered with Retry-After
    SERVER_ERROR = "500"
    TIMEOUT = "timeout"  # the message IS accepted, the answer comes only after slow_s


class FakeProvider:
    """State every fake shares. ``deliveries`` counts, per idempotency key, how many times a
    message was actually handed to a patient: exactly-once means every count is 1."""

    def __init__(
        self,
        *,
        failure_rate: float = 0.0,
        failure_modes: Sequence[Fault | str] = (Fault.SERVER_ERROR, Fault.TIMEOUT),
        seed: int | None = 0,
        latency_s: float = 0.0,
        slow_s: float = 2.0,
    ) -> None:
        self.failure_rate = failure_rate
        self.failure_modes = [Fault(m) for m in failure_modes]
        self.latency_s = latency_s
        self.slow_s = slow_s
        self.deliveries: Counter[str] = Counter()
        self.requests = 0
        self._random = random.Random(seed)
        self._forced: list[Fault] = []
        self._lock = threading.Lock()
        self._stop: Callable[[], None] | None = None
        self.base_url = ""

    def fail_next(self, fault: Fault | str, times: int = 1) -> None:
        """The next ``times`` sends meet ``fault``, before any random failure."""
        with self._lock:
            self._forced.extend([Fault(fault)] * times)

    def reset(self) -> None:
        """Forget messages, counters and pending faults (configuration stays)."""
        with self._lock:
            self._forced.clear()
            self.deliveries.clear()
            self.requests = 0

    def _next_fault(self) -> Fault | None:
        with self._lock:
            self.requests += 1
            if self._forced:
                return self._forced.pop(0)
            if self.failure_rate and self._random.random() < self.failure_rate:
                return self._random.choice(self.failure_modes)
            return None

    async def _latency(self) -> None:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)

    def start(self) -> str:
        """Serve on 127.0.0.1; returns and remembers the base URL."""
        self.base_url, self._stop = start_fake(self.app)  # type: ignore[attr-defined]
        return self.base_url

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None

    def __enter__(self) -> FakeProvider:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
