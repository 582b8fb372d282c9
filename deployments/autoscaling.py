"""Autoscaling of the video workers by their queue, through Ray Serve's custom policy hook.

A video worker is busy for minutes with a handful of jobs while serving almost no requests, so
Serve's default signal (ongoing requests per replica) never moves. Each `Tracker` replica
reports two metrics instead (``record_autoscaling_stats``): ``jobs_queued``, the store's queue
(the same number from every replica), and ``jobs_running``, the jobs that replica runs. The
policy asks for ``ceil((queued + running) / target_ongoing_requests)`` replicas, so
``target_ongoing_requests`` in the deployment's ``autoscaling_config`` reads "jobs per video
worker"; Serve applies ``min_replicas`` / ``max_replicas`` and the up/down delays itself.
"""

from __future__ import annotations

import math
from typing import Any

JOBS_QUEUED = "jobs_queued"
JOBS_RUNNING = "jobs_running"


def video_queue_policy(ctx: Any) -> tuple[float, dict[str, Any]]:
    """Desired video workers from the job queue (``ctx``: Serve's ``AutoscalingContext``)."""
    metrics = ctx.aggregated_metrics or {}
    queued = max(metrics.get(JOBS_QUEUED, {}).values(), default=0.0)
    running = sum(metrics.get(JOBS_RUNNING, {}).values())
    per_replica = max(1.0, float(ctx.config.get_target_ongoing_requests()))
    if not metrics:  # no replica has reported yet: keep what there is
        return float(ctx.target_num_replicas), {}
    return float(math.ceil((queued + running) / per_replica)), {"jobs_queued": queued, "jobs_running": running}
