"""The video workers' autoscaling policy, given Serve's own AutoscalingContext and config."""

from __future__ import annotations

import pytest

pytest.importorskip("ray.serve")

from ray.serve.config import AutoscalingConfig, AutoscalingContext  # noqa: E402

from deployments.autoscaling import JOBS_QUEUED, JOBS_RUNNING, video_queue_policy  # noqa: E402


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
