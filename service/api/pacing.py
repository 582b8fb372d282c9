"""Request bodies that must keep arriving: an ASGI middleware that drops a slow body with 408.

A client that announces a body and then sends it slowly (or not at all) holds a request slot of
the replica for as long as the HTTP proxy's ``request_timeout_s`` (half an hour by default, so a
2 GiB video fits at the slowest supported rate). A few hundred of them would take every slot.
So each body must arrive at the rate the upload limits are sized for (``jobs.min_upload_mbit_s``,
the same figure the deploy checks against ``request_timeout_s``): by ``grace_s + n / rate``
seconds after the route first asks for the body, its first ``n`` bytes must be in; a body that falls behind
is answered 408 ``upload_too_slow``. The grace covers a connection's start and a short stall.

Uvicorn and Ray Serve's proxy have a timeout for idle keep-alive connections but none for a
body in progress, which is why this is written here: it wraps the ASGI ``receive`` channel (as
`service.api.errors.JsonBodyLimit` does for the JSON size limit), so every route's body reading
is paced the same way, whether Starlette, FastAPI or our multipart parser reads it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

from pipeline.errors import PoseError

Receive = Callable[[], Awaitable[dict[str, Any]]]


class BodyPace:
    """ASGI middleware: the request body must keep up with ``min_bytes_per_s`` after ``grace_s``."""

    def __init__(self, app: Any, *, min_bytes_per_s: float, grace_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if min_bytes_per_s <= 0 or grace_s <= 0:
            raise ValueError("min_bytes_per_s and grace_s must be positive")
        self.app = app
        self.min_bytes_per_s = min_bytes_per_s
        self.grace_s = grace_s
        self.clock = clock

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.app(scope, self.paced(receive), send)

    def paced(self, receive: Receive) -> Receive:
        """``receive`` with a deadline on each body message; after the last one (the app then
        listens for a disconnect only) messages pass through unpaced."""
        started: float | None = None  # the route's first read: work before it is not the client's
        received = 0
        finished = False

        async def next_message() -> dict[str, Any]:
            nonlocal started, received, finished
            if finished:
                return await receive()
            if started is None:
                started = self.clock()
            deadline = started + self.grace_s + received / self.min_bytes_per_s
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - self.clock()))
            except asyncio.TimeoutError:
                raise self.too_slow(received, self.clock() - started) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                finished = not message.get("more_body", False)
            else:  # http.disconnect: nothing more will come
                finished = True
            return message

        return next_message

    def too_slow(self, received: int, elapsed_s: float) -> PoseError:
        mbit_s = self.min_bytes_per_s * 8 / 1e6
        return PoseError(
            "upload_too_slow",
            f"the request body stopped keeping up: {received} bytes in {elapsed_s:.0f} s; a body must arrive at "
            f"{mbit_s:g} Mbit/s or faster after the first {self.grace_s:g} s",
            status=408,
            details={"received_bytes": received, "min_mbit_s": mbit_s, "grace_s": self.grace_s},
        )
