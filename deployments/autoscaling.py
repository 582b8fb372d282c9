"""Autoscaling policies, through Ray Serve's custom policy hook: the video workers by their
queue, the model stages by their requests with a dead band.

A video worker is busy for minutes with a handful of jobs while serving almost no requests, so
Serve's default signal (ongoing requests per replica) never moves. Each `Tracker` replica
reports two metrics instead (``record_autoscaling_stats``): ``jobs_queued``, the store's queue
(the same number from every replica), and ``jobs_running``, the jobs that replica runs. The
policy asks for ``ceil((queued + running) / target_ongoing_requests)`` replicas, so
``target_ongoing_requests`` in the deployment's ``autoscaling_config`` reads "jobs per video
worker"; Serve applies ``min_replicas`` / ``max_replicas`` and the up/down delays itself.

The model stages (``Detector``, ``MeshRegressor``) scale on their requests in flight, as Serve's
default policy does, but a video job is a closed loop: each job keeps two chunks of frames in
flight whatever the replicas' speed, and the count swings between chunks (a chunk's calls
finish, the next chunk is submitted). Serve's rule, ``ceil(requests / target)`` both ways, then
moves the replica count up and down around a boundary during one steady job. `stage_policy`
keeps Serve's rule for scaling up and scales down only once the requests would leave the fewer
replicas at most half busy (`DOWNSCALE_FILL`): between the two, the count stays.
"""

from __future__ import annotations

import math
from typing import Any

JOBS_QUEUED = "jobs_queued"
JOBS_RUNNING = "jobs_running"
# Scale a model stage down only to a count the requests fill to at most this share of
# ``target_ongoing_requests``: the dead band between scaling up and down.
DOWNSCALE_FILL = 0.5


def video_queue_policy(ctx: Any) -> tuple[float, dict[str, Any]]:
    """Desired video workers from the job queue (``ctx``: Serve's ``AutoscalingContext``)."""
    metrics = ctx.aggregated_metrics or {}
    queued = max(metrics.get(JOBS_QUEUED, {}).values(), default=0.0)
    running = sum(metrics.get(JOBS_RUNNING, {}).values())
    per_replica = max(1.0, float(ctx.config.get_target_ongoing_requests()))
    if not metrics:  # no replica has reported yet: keep what there is
        return float(ctx.target_num_replicas), {}
    return float(math.ceil((queued + running) / per_replica)), {"jobs_queued": queued, "jobs_running": running}


def stage_policy(ctx: Any) -> tuple[float, dict[str, Any]]:
    """Desired model-stage replicas from the requests in flight, with a dead band.

    ``ctx.total_num_requests``: requests running on the replicas and queued at the callers,
    averaged over ``look_back_period_s``. Up to ``ceil(requests / target)`` when that is above
    the current count (Serve's own rule); down to ``ceil(requests / (target * DOWNSCALE_FILL))``
    when that is below it; otherwise the current count."""
    current = int(ctx.target_num_replicas)
    target = max(1e-9, float(ctx.config.get_target_ongoing_requests()))
    requests = float(ctx.total_num_requests)
    up = math.ceil(requests / target)
    down = math.ceil(requests / (target * DOWNSCALE_FILL))
    desired = up if up > current else down if down < current else current
    return float(desired), {"ongoing_requests": requests}
