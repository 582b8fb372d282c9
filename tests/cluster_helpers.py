"""A real multi-node Ray cluster on one machine, for the cluster test and the scaling benchmark.

The head and each worker are started with ``ray start`` as separate node processes. Every
worker node runs in its own mount namespace (``unshare --mount``) with a private, empty tmpfs
over the default data folder (``~/.cache/pose-service``), so anything that reads or writes a
node-local path instead of the configured shared storage finds nothing another node wrote.
A worker node is killed by killing every process in its mount namespace (what losing the
machine looks like to Ray).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from serve_helpers import free_port

PRIVATE_DATA = Path.home() / ".cache" / "pose-service"
# Loopback-only test cluster: no token (the driver must run with the same setting, see `driver_env`).
CLUSTER_ENV = {"RAY_AUTH_MODE": "disabled"}
# Fast failure detection: a dead node is noticed in about 3 s instead of the default 30 s or so.
_FAST_HEALTH = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def unshare_available() -> str | None:
    """None when private mount namespaces work here, else why not."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, text=True, timeout=30
    )
    if probe.returncode != 0:
        return f"cannot create a mount namespace: {probe.stderr.strip() or probe.returncode}"
    return None


@dataclass
class Node:
    name: str
    process: subprocess.Popen
    log: Path
    mnt_ns: int | None = None  # inode of the node's mount namespace (workers)


@dataclass
class LocalCluster:
    """``ray start`` nodes on this machine; see the module docstring."""

    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    address: str = ""

    def _ray(self) -> str:
        return str(Path(sys.executable).with_name("ray"))

    def _ports(self) -> list[str]:
        return [
            "--node-manager-port", str(free_port()),
            "--object-manager-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()),
            "--dashboard-agent-grpc-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()),
            "--metrics-export-port", str(free_port()),
        ]

    def _environ(self) -> dict[str, str]:
        return {**os.environ, **CLUSTER_ENV, **_FAST_HEALTH, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0", **self.env}

    def start_head(
        self, *, num_cpus: float, resources: dict[str, float], private: bool = False, port: int | None = None,
        dashboard_port: int | None = None,
    ) -> str:
        """The head node; ``private``: in its own mount namespace too (so it can be killed whole);
        ``dashboard_port``: with Ray's dashboard on loopback at that port (needed by ``serve
        deploy``, which talks to its REST API), else without one."""
        dashboard = (
            ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}"]
            if dashboard_port is not None
            else ["--include-dashboard=false"]
        )
        for attempt in range(2):
            head_port = port or free_port()
            log = self.workdir / f"head-{len(self.nodes)}-{attempt}.log"
            start = [
                self._ray(), "start", "--head", "--block", f"--port={head_port}", f"--num-cpus={num_cpus}",
                f"--resources={json.dumps(resources)}", *dashboard, "--disable-usage-stats", *self._ports(),
            ]
            node = Node("head", _spawn(_namespaced(start) if private else start, log, self._environ()), log)
            self.nodes.insert(0, node)
            self.address = f"127.0.0.1:{head_port}"
            try:
                self._wait_nodes(1)
                break
            except RuntimeError as exc:
                # Ray gives a starting node a fixed 30 s to register with its GCS; on a loaded
                # 2-core machine that can run out once. Start it again, once.
                self.nodes.remove(node)
                if attempt == 1 or "timed out during startup" not in str(exc):
                    raise
                node.process.wait(timeout=30)
        if private:
            node.mnt_ns = _mnt_ns(node.process.pid)
        return self.address

    def add_worker(self, name: str, *, num_cpus: float, resources: dict[str, float]) -> Node:
        """A worker node in its own mount namespace, a private tmpfs on the default data folder."""
        log = self.workdir / f"{name}.log"
        cmd = _namespaced([
            self._ray(), "start", "--block", f"--address={self.address}", f"--num-cpus={num_cpus}",
            f"--resources={json.dumps(resources)}", "--disable-usage-stats", *self._ports(),
        ])
        node = Node(name, _spawn(cmd, log, self._environ()), log)
        self.nodes.append(node)
        self._wait_nodes(len(self.nodes))
        node.mnt_ns = _mnt_ns(node.process.pid)
        return node

    def kill(self, node: Node) -> int:
        """SIGKILL every process of a worker node (all processes in its mount namespace)."""
        assert node.mnt_ns is not None and node.mnt_ns != _mnt_ns(os.getpid()), "only namespaced nodes can be killed whole"
        killed = 0
        for pid in _pids():
            if _mnt_ns(pid) == node.mnt_ns:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:
                    pass
        node.process.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(_mnt_ns(pid) == node.mnt_ns for pid in _pids()) and time.monotonic() < deadline:
            time.sleep(0.2)  # SIGKILLed processes are gone once reaped
        self.nodes.remove(node)
        return killed

    def head(self) -> Node:
        return next(n for n in self.nodes if n.name == "head")

    def alive_nodes(self) -> int:
        import ray

        return sum(1 for n in ray.nodes() if n.get("Alive"))

    def _wait_nodes(self, count: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = subprocess.run(
                [self._ray(), "status", f"--address={self.address}"], capture_output=True, text=True,
                env=self._environ(), timeout=60,
            ) if self.address else None
            if status is not None and status.returncode == 0 and _active_nodes(status.stdout) >= count:
                return
            for node in self.nodes:
                if node.process.poll() is not None:
                    raise RuntimeError(f"ray node {node.name} exited: {node.log.read_text()[-3000:]}")
            time.sleep(1.0)
        raise RuntimeError(f"expected {count} Ray nodes within {timeout} s")

    def stop(self) -> None:
        for node in reversed(self.nodes):
            if node.mnt_ns is not None:
                for pid in _pids():
                    if _mnt_ns(pid) == node.mnt_ns:
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
            else:
                node.process.send_signal(signal.SIGTERM)
        for node in self.nodes:
            try:
                node.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                node.process.kill()
        # Not `ray stop`: it would stop every Ray instance on the machine, not only this cluster's.
        self.nodes.clear()


def _namespaced(start: list[str]) -> list[str]:
    """``start`` in a new mount namespace with a private, empty tmpfs on the default data folder."""
    data = _quote(str(PRIVATE_DATA))
    script = f"mkdir -p {data} && mount -t tmpfs -o size=256m tmpfs {data} && exec {' '.join(_quote(a) for a in start)}"
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]


def _spawn(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _active_nodes(status_text: str) -> int:
    """Count of the node lines under "Active:" in ``ray status``."""
    lines = status_text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Active:")
    except StopIteration:
        return 0
    count = 0
    for line in lines[start + 1 :]:
        if not line.strip() or line.strip().endswith(":"):
            break
        count += 1
    return count


def _mnt_ns(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return None


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def ingress_and_two_video_nodes(workdir: Path, env: dict[str, str] | None = None) -> LocalCluster:
    """The layout the cluster test and benchmarks use: a head offering ``pose_ingress`` and two
    worker nodes offering ``pose_video``, one CPU each, every node in its own mount namespace."""
    cluster = LocalCluster(workdir, env=dict(env or {}))
    try:
        cluster.start_head(num_cpus=1, resources={"pose_ingress": 1}, private=True)
        cluster.add_worker("worker-1", num_cpus=1, resources={"pose_video": 1})
        cluster.add_worker("worker-2", num_cpus=1, resources={"pose_video": 1})
    except BaseException:
        cluster.stop()
        raise
    return cluster
