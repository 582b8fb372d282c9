"""Service metrics through ``ray.serve.metrics`` (exported on each node's Prometheus endpoint and
shown in the Ray dashboard's Grafana panels). Serve adds deployment, replica and application tags.

Created per replica, in constructors, never at import.
"""

from __future__ import annotations

from ray.serve.metrics import Counter, Gauge, Histogram

_LATENCY_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
_CROPS = [1, 2, 4, 8, 16, 32, 64, 128]
_BYTES = [1e3, 1e4, 1e5, 3e5, 1e6, 3e6, 1e7, 3e7]


class IngressMetrics:
    """Requests and errors as the HTTP client sees them."""

    def __init__(self) -> None:
        self.requests = Counter(
            "pose_requests_total", description="HTTP requests by route and status", tag_keys=("route", "status")
        )
        self.errors = Counter(
            "pose_errors_total", description="error responses by stable error code", tag_keys=("route", "code")
        )
        self.latency = Histogram(
            "pose_request_latency_s", description="end-to-end request latency", boundaries=_LATENCY_S, tag_keys=("route",)
        )
        self.stage = StageMetrics()


class StageMetrics:
    """Per pipeline stage: latency, and how many person crops shared each network forward."""

    def __init__(self) -> None:
        self.latency = Histogram(
            "pose_stage_latency_s", description="latency of one pipeline stage", boundaries=_LATENCY_S, tag_keys=("stage",)
        )
        self.crops_per_batch = Histogram(
            "pose_crops_per_batch", description="person crops in one batched HMR2 forward", boundaries=_CROPS
        )
        self.images_per_batch = Histogram(
            "pose_images_per_batch", description="images in one batched ViTDet forward", boundaries=_CROPS
        )

        self.boundary_bytes = Histogram(
            "pose_boundary_bytes",
            description="array bytes of one frame's answer crossing a deployment boundary",
            boundaries=_BYTES,
            tag_keys=("boundary",),
        )

    def observe(self, stage: str, seconds: float) -> None:
        self.latency.observe(seconds, tags={"stage": stage})

    def observe_traffic(self, boundary: str, nbytes: float) -> None:
        self.boundary_bytes.observe(float(nbytes), tags={"boundary": boundary})


class QueueMetrics:
    """What the video workers' autoscaling follows (`deployments.autoscaling`), as gauges: the
    store's queued jobs (the same figure from every replica) and the jobs each replica runs."""

    def __init__(self) -> None:
        self.queued = Gauge("pose_jobs_queued", description="video jobs waiting in the job store")
        self.running = Gauge("pose_jobs_running", description="video jobs this Tracker replica runs")

    def set(self, queued: float, running: float) -> None:
        self.queued.set(queued)
        self.running.set(running)
