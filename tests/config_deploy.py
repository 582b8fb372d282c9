"""serve_config.yaml deployed as written: a ``ray start`` head, then ``serve run`` (or ``serve
deploy``) of a copy of the file, as an operator runs it. Shared by the deploy-the-file test, the
autoscaling benchmark and the dashboard screenshot script.

The copy changes one thing: the HTTP port (a free one, so runs never collide). Everything a test
run needs beyond that reaches the builder and the replicas through the head's environment, which
every Ray worker inherits: ``POSE_SERVICE_PROFILE=tiny``, ``POSE_SERVICE_DATA_DIR`` (a temporary
folder) and ``POSE_TINY_DIR`` (tiny models written once, before the replicas start).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import yaml
from cluster_helpers import CLUSTER_ENV, LocalCluster
from serve_helpers import free_port

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "serve_config.yaml"
APP = "pose"


def file_config(path: Path = CONFIG) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def file_deployments(config: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The ``deployments:`` entries of the file's application, by name."""
    config = config if config is not None else file_config()
    (app,) = config["applications"]
    return {d["name"]: d for d in app.get("deployments", [])}


def with_http_port(config: dict[str, Any], http_port: int) -> dict[str, Any]:
    """The file with only ``http_options.port`` changed."""
    out = copy.deepcopy(config)
    out.setdefault("http_options", {})["port"] = http_port
    return out


@dataclass
class DeployedFile:
    url: str  # the HTTP proxy, e.g. http://127.0.0.1:PORT
    address: str  # the Ray head's GCS address
    dashboard_url: str | None
    config: dict[str, Any]  # the copy that was deployed
    data_dir: Path
    cluster: LocalCluster


def replica_counts(app: str = APP) -> dict[str, dict[str, int]]:
    """``serve.status()``'s replica states of each deployment of ``app``: {name: {state: n}}."""
    from ray import serve

    status = serve.status().applications[app]
    return {name: dict(d.replica_states) for name, d in status.deployments.items()}


def wait_running(app: str = APP, timeout: float = 600.0) -> None:
    """Until ``serve status`` shows the application RUNNING; its message if the deploy failed."""
    from ray import serve

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        apps = serve.status().applications
        last = apps.get(app)
        if last is not None and last.status == "RUNNING":
            return
        if last is not None and last.status == "DEPLOY_FAILED":
            raise RuntimeError(f"serve_config.yaml failed to deploy: {last.message}")
        time.sleep(1.0)
    raise RuntimeError(f"application {app!r} not RUNNING within {timeout} s: {last}")


@contextmanager
def deployed_file(
    workdir: Path,
    *,
    num_cpus: float = 2,
    via: Literal["run", "deploy"] = "run",
    env: dict[str, str] | None = None,
    timeout: float = 600.0,
) -> Iterator[DeployedFile]:
    """Start a head, deploy the file's copy with the serve CLI, wait for RUNNING; yield; stop all.

    ``via="run"``: ``serve run --non-blocking`` (what scripts/serve.sh runs; no dashboard needed);
    ``via="deploy"``: ``serve deploy`` through the dashboard's REST API (the head then runs Ray's
    dashboard, on loopback). This process joins the cluster as a driver, for ``serve.status()``."""
    import ray
    from ray import serve

    from pipeline.tiny.cache import tiny_roots

    os.environ.update(CLUSTER_ENV)  # this driver joins with the cluster's authentication mode
    workdir.mkdir(parents=True, exist_ok=True)
    tiny_dir, data_dir = workdir / "tiny", workdir / "data"
    tiny_roots(tiny_dir)  # written once here, so the replicas find them instead of racing to write
    head_env = {
        "POSE_SERVICE_PROFILE": "tiny",
        "POSE_TINY_DIR": str(tiny_dir),
        "POSE_SERVICE_DATA_DIR": str(data_dir),
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
        # a healthy proxy can take longer than Serve's 3 x 5 s readiness checks on a busy 2-core machine
        "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": os.environ.get("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30"),
        **(env or {}),
    }
    cluster = LocalCluster(workdir, env=head_env)
    dashboard_port = free_port() if via == "deploy" else None
    try:
        cluster.start_head(num_cpus=num_cpus, resources={}, dashboard_port=dashboard_port)
        config = with_http_port(file_config(), free_port())
        path = workdir / "serve_config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        serve_cli = str(Path(sys.executable).with_name("serve"))
        if via == "deploy":
            cmd = [serve_cli, "deploy", str(path), "--address", f"http://127.0.0.1:{dashboard_port}"]
            _wait_dashboard(dashboard_port)
        else:
            cmd = [serve_cli, "run", "--non-blocking", "--address", cluster.address, str(path)]
        done = subprocess.run(cmd, cwd=REPO, env=cluster._environ(), capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:2])} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)  # replica logs stay in the session folder
        try:
            wait_running(timeout=timeout)
            yield DeployedFile(
                url=f"http://127.0.0.1:{config['http_options']['port']}",
                address=cluster.address,
                dashboard_url=f"http://127.0.0.1:{dashboard_port}" if dashboard_port is not None else None,
                config=config,
                data_dir=data_dir,
                cluster=cluster,
            )
        finally:
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
    finally:
        cluster.stop()


def _wait_dashboard(port: int | None, timeout: float = 120.0) -> None:
    """The dashboard answers (it starts after ``ray start`` returns; ``serve deploy`` needs it)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/version", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise RuntimeError(f"Ray dashboard not answering on port {port} within {timeout} s")
