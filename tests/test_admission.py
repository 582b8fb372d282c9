"""Load shedding at the door (`service.api.admission`): Little's law over busy time, on a clock
the test moves by hand."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.errors import PoseError
from service.api.admission import Admission


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _enter(adm: Admission) -> Admission:
    adm.enter()
    return adm


def _leave(adm: Admission, ok: bool = True) -> None:
    adm.leave(ok)


def _serve_one_at_a_time(adm: Admission, clock: Clock, n: int, seconds: float) -> None:
    for _ in range(n):
        cm = _enter(adm)
        clock.now += seconds
        _leave(cm)


def test_cold_start_admits_up_to_the_cold_limit():
    clock = Clock()
    adm = Admission(max_wait_s=5.0, cold_limit=3, clock=clock)
    held = [_enter(adm) for _ in range(3)]
    with pytest.raises(PoseError) as err:
        _enter(adm)
    assert err.value.code == "overloaded" and err.value.status == 503 and err.value.details == {"retry_after": 1}
    assert (adm.in_flight, adm.admitted, adm.shed) == (3, 3, 1)
    for cm in held:
        _leave(cm)
    assert adm.in_flight == 0


def test_past_the_bound_requests_are_shed_with_the_drain_time():
    clock = Clock()
    adm = Admission(max_wait_s=5.0, tau_s=1e9, min_samples=4, cold_limit=100, clock=clock)
    _serve_one_at_a_time(adm, clock, 10, 1.0)  # 1 request a second while busy
    assert adm.rate() == pytest.approx(1.0)
    held = [_enter(adm) for _ in range(4)]  # a 5th would finish in (4 + 1) / 1 = 5 s: admitted
    assert adm.expected_wait_s() == pytest.approx(5.0)
    held.append(_enter(adm))
    with pytest.raises(PoseError) as err:  # (5 + 1) / 1 = 6 s > 5 s
        _enter(adm)
    assert err.value.details == {"retry_after": 1}
    held += [_enter_unchecked(adm) for _ in range(5)]  # 10 in flight: (10 + 1) - 5 = 6 s to drain
    with pytest.raises(PoseError) as err:
        _enter(adm)
    assert err.value.details == {"retry_after": 6}
    assert adm.shed == 2


def _enter_unchecked(adm: Admission) -> None:
    """Put a request in flight past the check (as if it came in before the load rose)."""
    adm._advance()
    adm.in_flight += 1
    adm.admitted += 1


def test_idle_time_does_not_lower_the_rate():
    clock = Clock()
    adm = Admission(max_wait_s=3.0, tau_s=1e9, clock=clock)
    _serve_one_at_a_time(adm, clock, 6, 0.5)
    before = adm.rate()
    clock.now += 3600.0  # an hour with nothing to do
    assert adm.rate() == pytest.approx(before) == pytest.approx(2.0)
    held = [_enter(adm) for _ in range(6)]  # the 6th: (5 + 1) / 2 = 3 s, still admitted
    with pytest.raises(PoseError):  # the 7th: 3.5 s
        _enter(adm)
    for cm in held:
        _leave(cm)


def test_the_rate_follows_a_slower_service_and_failures_do_not_count():
    clock = Clock()
    adm = Admission(max_wait_s=10.0, tau_s=5.0, clock=clock)
    _serve_one_at_a_time(adm, clock, 20, 0.1)  # 10 a second
    assert adm.rate() == pytest.approx(10.0, rel=0.05)
    _serve_one_at_a_time(adm, clock, 20, 2.0)  # then 0.5 a second, for 40 s (8 time constants)
    assert adm.rate() == pytest.approx(0.5, rel=0.05)
    samples = adm._samples
    cm = _enter(adm)
    clock.now += 0.01
    _leave(cm, ok=False)
    assert adm._samples == samples and adm.in_flight == 0


def test_the_context_manager_counts_only_what_it_served():
    adm = Admission(max_wait_s=1.0)

    async def run() -> None:
        async with adm.admit():
            assert adm.in_flight == 1
        with pytest.raises(ValueError):
            async with adm.admit():
                raise ValueError("bad image")

    asyncio.run(run())
    assert (adm.in_flight, adm.admitted, adm._samples) == (0, 2, 1)


def test_the_first_request_is_always_admitted():
    clock = Clock()
    adm = Admission(max_wait_s=0.001, tau_s=1e9, clock=clock)
    _serve_one_at_a_time(adm, clock, 5, 10.0)  # very slow: 0.1 a second
    cm = _enter(adm)  # nothing in flight: admitted whatever the rate says
    assert adm.in_flight == 1
    with pytest.raises(PoseError):
        _enter(adm)
    _leave(cm)
    assert adm.stats() == {"in_flight": 0, "admitted": 6, "shed": 1, "rate_per_s": 0.12, "max_wait_s": 0.001}  # 6 served in 50 busy seconds
