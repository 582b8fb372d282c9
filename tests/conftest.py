"""Shared fixtures: the golden reference data and a tiny model cache written by our factory."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from export_readers import GLTF_VALIDATOR, VALIDATE_JS

REPO = Path(__file__).resolve().parents[1]
_EXIT_STATUS = pytest.StashKey[int]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave without interpreter finalisation once Ray has run in this process.

    After several ``ray.init``/``ray.shutdown`` cycles, Ray's core-worker threads can still call
    into Python (``check_signals`` → ``PyGILState_Ensure``) while the interpreter tears down, and
    the process dies with SIGSEGV after every test has passed and the summary is printed
    (ray-project/ray#47864). Everything is reported by now, so exit with pytest's own status.
    """
    if "ray" not in sys.modules or _EXIT_STATUS not in config.stash:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(config.stash[_EXIT_STATUS])


@pytest.fixture(scope="session", autouse=True)
def _test_ray_settings():
    """Settings every Ray process the tests start inherits from the test process.

    - Ray Serve marks its HTTP proxy unhealthy after three 5 s readiness checks; on a 2-core
      machine busy with model replicas starting, a healthy proxy can take longer than that.
    - Every test cluster is loopback-only and runs without Ray's token authentication. Ray reads
      the mode once per process, so one test process cannot switch it between clusters: a local
      ``ray.init()`` turns tokens on by default while a driver that already ran with them off
      keeps sending none, and the new GCS refuses it.
    """
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    yield


def golden_root() -> Path:
    """``$POSE_GOLDEN_DIR`` or ``../shared/golden`` beside the checkout."""
    env = os.environ.get("POSE_GOLDEN_DIR")
    return Path(env) if env else REPO.parent / "shared" / "golden"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def golden():
    """``golden("hmr2")`` -> the fixture folder of one model.

    Absent folder: a skip with the reason, except in CI (``CI=true``) where it is a failure.
    """

    def get(model: str) -> Path:
        path = golden_root() / model
        if not path.is_dir():
            msg = f"golden fixtures not found at {path} (set POSE_GOLDEN_DIR to the folder holding {model}/)"
            if _in_ci():
                pytest.fail(msg)
            pytest.skip(msg)
        return path

    return get


@pytest.fixture(scope="session")
def tiny_roots(tmp_path_factory):
    """Cache roots holding every tiny model, written once per session by the project's factory."""
    from pipeline.tiny import write_tiny_caches
    from pipeline.weights import CacheRoots

    roots = CacheRoots.under(tmp_path_factory.mktemp("tiny_cache"))
    write_tiny_caches(roots)
    return roots


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the serving tests pass as the application's ``tiny_dir``: tiny models written
    once per session (half a minute on two cores), before any replica starts, so the replicas
    find them instead of racing to write."""
    from pipeline.tiny.cache import tiny_roots

    base = tmp_path_factory.mktemp("tiny")
    tiny_roots(base)
    return base


@pytest.fixture(scope="session")
def phalp_golden_models(golden):
    """PHALP's pose predictor and appearance encoder from the golden files, built by the same
    loader the service uses (gzip'ed weight files are read as they are)."""
    from pipeline.models.phalp.loading import load_tracking_models_from_paths

    folder = golden("phalp")
    paths = {
        "phalp.pose_predictor_config": folder / "pose_predictor.yaml",
        "phalp.pose_predictor": next(folder.glob("pose_predictor*.ckpt*")),
        "phalp.mean_std": folder / "mean_std.npy",
        "phalp.hmar_weights": next(folder.glob("hmar_v2_weights.pth*")),
    }
    return load_tracking_models_from_paths(paths, device="cpu")


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """URL of a reachable PostgreSQL server (``$POSE_TEST_POSTGRES_URL`` or the local default).

    None answering: a skip with the reason, except in CI (``CI=true``) where it is a failure.
    """
    from pg_helpers import POSTGRES_URL_ENV, server_url

    url = server_url()
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # not installed, refused, wrong credentials: all mean "no server"
        msg = f"no PostgreSQL server answers at {url} ({type(exc).__name__}: {exc}); set {POSTGRES_URL_ENV}"
        if _in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    return url


@pytest.fixture
def postgres_url(postgres_server: str):
    """A URL whose connections use a fresh schema of their own, dropped after the test."""
    from pg_helpers import isolated_schema

    with isolated_schema(postgres_server) as (url, _):
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request, tmp_path):
    """``open_store(data_dir, **kw)``: a `JobStore` on this test's backend (same database each call)."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    opened: list[Any] = []

    def make(data_dir, **kw) -> Any:
        from service.jobs import JobStore

        store = JobStore(data_dir, url=url, **kw)
        opened.append(store)
        return store

    yield make
    for store in opened:
        with contextlib.suppress(Exception):
            store.close()


@pytest.fixture
def private_postgres():
    """(URL, `pg_helpers.PrivateServer`): a PostgreSQL server of the test's own, to restart or
    stop (the shared one serves other tests); removed after the test.

    Server programs missing: a skip with the reason, except in CI (``CI=true``) where it is a failure."""
    from pg_helpers import PrivateServerUnavailable, private_server

    with contextlib.ExitStack() as stack:
        try:
            url, server = stack.enter_context(private_server())
        except PrivateServerUnavailable as exc:
            if _in_ci():
                pytest.fail(str(exc))
            pytest.skip(str(exc))
        yield url, server


@pytest.fixture(scope="session")
def gltf_validator(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, dict[str, str]]:
    """node + the Khronos glTF-Validator (npm ``gltf-validator``), installed once into
    ``.cache/node`` (ignored by git). Without node/npm: a skip, except under CI=true: a failure."""
    def unavailable(msg: str) -> None:
        if _in_ci():
            pytest.fail(msg)
        pytest.skip(msg)

    node, npm = shutil.which("node"), shutil.which("npm")
    prefix = REPO / ".cache" / "node"
    if node is None or npm is None:
        unavailable("node and npm are needed to run the Khronos glTF validator (npm package gltf-validator)")
    if not (prefix / "node_modules" / "gltf-validator").is_dir():
        prefix.mkdir(parents=True, exist_ok=True)
        cmd = [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", GLTF_VALIDATOR]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            unavailable(f"npm could not install {GLTF_VALIDATOR} (offline?): {done.stderr[-500:]}")
    script = tmp_path_factory.mktemp("node") / "validate.js"
    script.write_text(VALIDATE_JS)
    return node, script, {**os.environ, "NODE_PATH": str(prefix / "node_modules")}
