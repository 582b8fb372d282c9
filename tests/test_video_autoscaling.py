"""The autoscaling policies (video workers by the queue, model stages with a dead band), given
Serve's own AutoscalingContext and config."""

from __future__ import annotations

import pytest

pytest.importorskip("ray.serve")

from ray.serve.config import AutoscalingConfig, AutoscalingContext  # noqa: E402

from deployments.autoscaling import JOBS_QUEUED, JOBS_RUNNING, stage_policy, video_queue_policy  # noqa: E402


def _context(queued: float, running: list[float], *, current: int, per_worker: float = 2.0) -> AutoscalingContext:
    replicas = [f"replica-{i}" for i in range(len(running))]
    metrics = {JOBS_QUEUED: {r: queued for r in replicas}, JOBS_RUNNING: dict(zip(replicas, running))} if replicas else {}
    return AutoscalingContext(
        deployment_id=None, deployment_name="Tracker", app_name="pose",
        current_num_replicas=current, target_num_replicas=current, running_replicas=replicas,
        total_num_requests=0.0, total_queued_requests=0.0, aggregated_metrics=metrics, raw_metrics={},
        capacity_adjusted_min_replicas=1, capacity_adjusted_max_replicas=8, policy_state={},
        last_scale_up_time=None, last_scale_down_time=None, current_time=None,
        config=AutoscalingConfig(min_replicas=1, max_replicas=8, target_ongoing_requests=per_worker),
    )


@pytest.mark.parametrize(
    "queued, running, current, want",
    [
        (0, [0.0], 1, 0),  # idle: as few as Serve's min_replicas allows
        (1, [2.0], 1, 2),  # one worker full, one job waiting: a second worker
        (6, [2.0, 2.0], 2, 5),  # a backlog: ceil((6 + 4) / 2)
        (0, [1.0, 0.0, 0.0], 3, 1),  # the queue drained: scale down to the jobs still running
    ],
)
def test_workers_follow_queued_plus_running_jobs(queued, running, current, want):
    desired, state = video_queue_policy(_context(queued, running, current=current))
    assert desired == want
    assert state == {"jobs_queued": queued, "jobs_running": sum(running)}


def test_no_report_yet_keeps_the_current_target():
    desired, _ = video_queue_policy(_context(0, [], current=2))
    assert desired == 2


def _stage_context(requests: float, *, current: int, target: float = 16.0) -> AutoscalingContext:
    replicas = [f"replica-{i}" for i in range(current)]
    return AutoscalingContext(
        deployment_id=None, deployment_name="Detector", app_name="pose",
        current_num_replicas=current, target_num_replicas=current, running_replicas=replicas,
        total_num_requests=requests, total_queued_requests=0.0, aggregated_metrics={}, raw_metrics={},
        capacity_adjusted_min_replicas=1, capacity_adjusted_max_replicas=4, policy_state={},
        last_scale_up_time=None, last_scale_down_time=None, current_time=None,
        config=AutoscalingConfig(min_replicas=1, max_replicas=4, target_ongoing_requests=target),
    )


@pytest.mark.parametrize(
    "requests, current, want",
    [
        (16.0, 1, 1),  # one video job's two chunks of 8 frames: one replica's target
        (17.0, 1, 2),  # above it: up, as Serve's own rule
        (40.0, 2, 3),
        (12.0, 2, 2),  # a second job just ended, the first goes on: the dead band holds 2
        (8.5, 2, 2),
        (8.0, 2, 1),  # one replica at most half busy: down
        (0.0, 3, 0),  # idle: as few as Serve's min_replicas allows
    ],
)
def test_model_stages_scale_up_as_serve_does_and_down_past_a_dead_band(requests, current, want):
    desired, state = stage_policy(_stage_context(requests, current=current))
    assert desired == want
    assert state == {"ongoing_requests": requests}


def test_a_steady_load_that_swings_between_chunks_moves_the_count_once():
    """Requests of one steady video job swinging between 6 and 16 (chunks finishing and being
    submitted), then a second job making them swing between 9 and 30: one step up, never back."""
    current, counts = 1, []
    for requests in [6, 16, 10, 16, 7, 14] + [20, 30, 12, 24, 9, 28, 22, 10] * 3:
        desired, _ = stage_policy(_stage_context(float(requests), current=current))
        current = max(1, int(desired))
        counts.append(current)
    assert counts[:6] == [1] * 6 and set(counts[6:]) == {2}
