"""Load shedding at the door: a request that would wait too long is answered at once.

Little's law: with ``N`` requests of one kind in flight and a recent completion rate ``X``
(requests per second while busy), a new request waits about ``N / X`` before it is done. Past
``max_wait_s`` it is refused with 503 ``overloaded`` and a ``Retry-After`` of the time the queue
needs to drain to that bound, instead of joining a queue it cannot leave in time. The rate is
measured over busy time only (an idle minute does not make the service look slow) and decays
with ``tau_s``, so it follows a change of load within a few tens of seconds. Until
``min_samples`` requests have completed, at most ``cold_limit`` run at once.

Plain Python (no Ray): one instance per Ingress replica and kind of request.
"""

from __future__ import annotations

import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

from pipeline.errors import PoseError


@dataclass
class Admission:
    """Admit or shed requests of one kind (see the module docstring)."""

    max_wait_s: float
    tau_s: float = 30.0
    min_samples: int = 4
    cold_limit: int = 8
    max_retry_after_s: int = 300
    clock: Callable[[], float] = time.monotonic
    in_flight: int = field(default=0, init=False)
    admitted: int = field(default=0, init=False)
    shed: int = field(default=0, init=False)
    _done: float = field(default=0.0, init=False)  # decayed completions
    _busy: float = field(default=0.0, init=False)  # decayed busy seconds
    _samples: int = field(default=0, init=False)
    _last: float | None = field(default=None, init=False)

    def _advance(self) -> float:
        now = self.clock()
        if self._last is not None and self.in_flight > 0:
            dt = max(0.0, now - self._last)
            decay = math.exp(-dt / self.tau_s)
            self._done *= decay
            self._busy = self._busy * decay + dt
        self._last = now
        return now

    def rate(self) -> float | None:
        """Completions per busy second, or None while too few requests have completed."""
        self._advance()
        if self._samples < self.min_samples or self._busy <= 0.0:
            return None
        return self._done / self._busy

    def expected_wait_s(self) -> float | None:
        """How long a request arriving now would take, by Little's law; None while cold."""
        rate = self.rate()
        if rate is None or rate <= 0.0:
            return None
        return (self.in_flight + 1) / rate

    def check(self) -> None:
        """Raise 503 ``overloaded`` (with ``retry_after`` in its details) if a new request would
        wait past the bound; the first request in flight is always admitted."""
        if self.in_flight == 0:
            return
        wait = self.expected_wait_s()
        if wait is None:
            if self.in_flight < self.cold_limit:
                return
            retry = 1
        elif wait <= self.max_wait_s:
            return
        else:
            retry = min(self.max_retry_after_s, max(1, math.ceil(wait - self.max_wait_s)))
        self.shed += 1
        raise PoseError(
            "overloaded",
            f"the service is at capacity (about {wait:.0f} s of work queued, the bound is {self.max_wait_s:.0f} s); retry after {retry} s"
            if wait is not None else "the service is at capacity while it warms up; retry shortly",
            status=503,
            details={"retry_after": retry},
        )

    def enter(self) -> None:
        """Admit one request (or raise as `check` does); pair with `leave`."""
        self.check()
        self._advance()
        self.in_flight += 1
        self.admitted += 1

    def leave(self, ok: bool) -> None:
        """One admitted request is done; ``ok``: it was served (failures say nothing of the rate)."""
        self._advance()
        self.in_flight -= 1
        if ok:
            self._done += 1.0
            self._samples += 1

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """``async with admission.admit():`` around the work of one request."""
        self.enter()
        ok = False
        try:
            yield
            ok = True
        finally:
            self.leave(ok)

    def stats(self) -> dict[str, float | int | None]:
        """For /v1/info: in flight, admitted and shed so far, the measured rate."""
        rate = self.rate()
        return {
            "in_flight": self.in_flight,
            "admitted": self.admitted,
            "shed": self.shed,
            "rate_per_s": None if rate is None else round(rate, 3),
            "max_wait_s": self.max_wait_s,
        }
