"""Request bodies that must keep arriving (`service.api.pacing.BodyPace`), on short graces:
the middleware around a small ASGI app that reads its whole body, as every route does."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from pipeline.errors import PoseError
from service.api.pacing import BodyPace

GRACE_S = 0.3


async def read_body(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the body to its end, then waits once for the disconnect (as a streaming answer does)."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    scope["body"] = body
    scope["after"] = await receive()


def feeder(chunks: list[tuple[float, dict[str, Any]]]) -> Any:
    """An ASGI receive channel that hands each message after its delay."""
    queue = list(chunks)

    async def receive() -> dict[str, Any]:
        delay, message = queue.pop(0)
        await asyncio.sleep(delay)
        return message

    return receive


def run(app: BodyPace, receive: Any, scope: dict[str, Any]) -> None:
    asyncio.run(app(scope, receive, None))


def test_a_stalled_body_is_dropped_with_408_after_the_grace() -> None:
    app = BodyPace(read_body, min_bytes_per_s=1e6, grace_s=GRACE_S)
    scope: dict[str, Any] = {"type": "http"}
    receive = feeder([(0.0, {"type": "http.request", "body": b"x" * 10, "more_body": True}), (60.0, {"type": "http.disconnect"})])
    started = time.monotonic()
    with pytest.raises(PoseError) as err:
        run(app, receive, scope)
    waited = time.monotonic() - started
    assert err.value.code == "upload_too_slow" and err.value.status == 408
    assert err.value.details == {"received_bytes": 10, "min_mbit_s": 8.0, "grace_s": GRACE_S}
    assert GRACE_S <= waited < 30.0  # dropped at the grace, long before the stalled message


def test_a_body_falling_behind_the_rate_is_dropped_though_bytes_keep_coming() -> None:
    # 1,000 bytes a second are asked for; 100 bytes every 0.2 s (500 B/s) fall behind once the grace is spent
    app = BodyPace(read_body, min_bytes_per_s=1000.0, grace_s=GRACE_S)
    chunks = [(0.2, {"type": "http.request", "body": b"y" * 100, "more_body": True}) for _ in range(50)]
    with pytest.raises(PoseError) as err:
        run(app, feeder(chunks), {"type": "http"})
    assert err.value.code == "upload_too_slow"
    assert 0 < err.value.details["received_bytes"] < 50 * 100


def test_a_body_at_the_rate_passes_and_the_wait_after_it_is_not_paced() -> None:
    app = BodyPace(read_body, min_bytes_per_s=1000.0, grace_s=GRACE_S)
    chunks: list[tuple[float, dict[str, Any]]] = [(0.05, {"type": "http.request", "body": b"z" * 200, "more_body": True}) for _ in range(5)]
    chunks.append((0.0, {"type": "http.request", "body": b"end", "more_body": False}))
    chunks.append((3 * GRACE_S, {"type": "http.disconnect"}))  # the app listens for the hang-up: no deadline
    scope: dict[str, Any] = {"type": "http"}
    run(app, feeder(chunks), scope)
    assert scope["body"] == b"z" * 1000 + b"end"
    assert scope["after"] == {"type": "http.disconnect"}


def test_the_routes_own_work_before_the_first_read_is_not_the_clients() -> None:
    async def slow_route(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await asyncio.sleep(3 * GRACE_S)  # e.g. a capacity check before the upload is read
        await read_body(scope, receive, send)

    app = BodyPace(slow_route, min_bytes_per_s=1000.0, grace_s=GRACE_S)
    scope: dict[str, Any] = {"type": "http"}
    chunks = [(0.0, {"type": "http.request", "body": b"ok", "more_body": False}), (0.0, {"type": "http.disconnect"})]
    run(app, feeder(chunks), scope)
    assert scope["body"] == b"ok"


def test_other_connections_pass_untouched() -> None:
    seen: dict[str, Any] = {}

    async def ws(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen["receive"] = receive

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    asyncio.run(BodyPace(ws, min_bytes_per_s=1.0, grace_s=1.0)({"type": "lifespan"}, receive, None))
    assert seen["receive"] is receive


@pytest.mark.parametrize("rate, grace", [(0.0, 1.0), (1.0, 0.0), (-1.0, 1.0)])
def test_a_rate_or_grace_that_is_not_positive_is_refused(rate: float, grace: float) -> None:
    with pytest.raises(ValueError):
        BodyPace(read_body, min_bytes_per_s=rate, grace_s=grace)
