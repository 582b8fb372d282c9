"""Which failures of a model stage a video job retries: Ray's and Serve's errors as stable codes."""

from __future__ import annotations

import pytest

pytest.importorskip("ray.serve")

from ray.exceptions import ActorDiedError, ObjectReconstructionFailedError  # noqa: E402
from ray.serve.exceptions import BackPressureError, RayServeException  # noqa: E402

from deployments.common import as_pose_error  # noqa: E402
from deployments.tracker import TRANSIENT_CODES  # noqa: E402
from pipeline.errors import InputError  # noqa: E402


def _raised(exc: BaseException, wrapper: BaseException | None = None) -> BaseException:
    try:
        try:
            raise exc
        except BaseException as inner:
            if wrapper is None:
                raise
            raise wrapper from inner
    except BaseException as caught:
        return caught


@pytest.mark.parametrize(
    "exc, code",
    [
        (_raised(ActorDiedError()), "stage_unavailable"),
        # Serve's "an upstream actor died before finishing a dependent task" (a chained response
        # whose first stage died) wraps the actor's error as its cause.
        (_raised(ActorDiedError(), RayServeException("upstream actor died")), "stage_unavailable"),
        (_raised(BackPressureError(num_queued_requests=9, max_queued_requests=8)), "overloaded"),
        (_raised(TimeoutError()), "stage_timeout"),
        # Serve's own failure of a call (a replica that died while the request was queued on it)
        (_raised(RayServeException("replica died while the request was queued")), "stage_unavailable"),
        # a stage's answer kept on a node that was lost: its object cannot be reconstructed
        (_raised(ObjectReconstructionFailedError("16a7902d712c963be6260c4840f6e391fc23f0570100000003000000")), "stage_unavailable"),
    ],
)
def test_transient_stage_failures_have_retryable_codes(exc, code):
    mapped = as_pose_error(exc)
    assert mapped is not None and mapped.code == code and mapped.status == 503
    assert code in TRANSIENT_CODES


def test_a_replica_error_with_a_code_keeps_it_and_is_not_retried():
    mapped = as_pose_error(_raised(InputError("box_empty", "empty box"), RayServeException("wrapped")))
    assert mapped is not None and mapped.code == "box_empty" and mapped.code not in TRANSIENT_CODES


def test_other_errors_are_not_stage_failures():
    assert as_pose_error(_raised(ValueError("bug"))) is None


class _Answer:
    """What `ChunkCalls` reads of a Serve response: ``result(timeout_s=)`` and ``cancel()``."""

    def __init__(self, value=None, hang: bool = False, dead: bool = False) -> None:
        self.value, self.hang, self.dead, self.cancelled, self.timeouts = value, hang, dead, False, []

    def result(self, timeout_s=None):
        self.timeouts.append(timeout_s)
        if self.hang:
            raise TimeoutError(f"no answer within {timeout_s} s")
        return self.value

    def cancel(self) -> None:
        self.cancelled = True
        if self.dead:  # Serve re-raises the failure of a call whose replica died
            raise ActorDiedError()


def test_a_chunk_waits_under_one_deadline_and_is_cancelled_whole():
    from deployments.tracker import ChunkCalls

    detections = [_Answer("d0"), _Answer("d1"), _Answer("d2")]
    regressions = [_Answer("r0"), _Answer(hang=True), _Answer("r2")]
    calls = ChunkCalls(detections, regressions, timeout_s=5.0)
    with pytest.raises(TimeoutError) as err:
        calls()
    assert as_pose_error(err.value).code == "stage_timeout" and "stage_timeout" in TRANSIENT_CODES
    assert all(a.cancelled for a in detections + regressions), "every call of the chunk is cancelled"
    assert regressions[2].timeouts == [], "the wait stops at the first failure"
    waited = regressions[0].timeouts + regressions[1].timeouts
    assert 0.0 <= waited[1] <= waited[0] <= 5.0, "one deadline for the chunk, not one per call"

    fine = ChunkCalls([_Answer("d")], [_Answer("r")], timeout_s=5.0)
    assert fine() == ["r"]

    # a call that already failed raises again when cancelled: the others are still cancelled,
    # and the error the loop sees is the chunk's own, not the cancel's
    dead = [_Answer(dead=True), _Answer("d1")]
    calls = ChunkCalls(dead, [_Answer(hang=True), _Answer("r1")], timeout_s=5.0)
    with pytest.raises(TimeoutError):
        calls()
    assert all(a.cancelled for a in calls.calls)
    calls.cancel()  # again, from the loop: never raises
