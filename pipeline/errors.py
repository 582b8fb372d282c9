"""Errors with stable codes.

Every failure a caller can cause or fix (bad input, missing weights, a corrupt checkpoint) is a
`PoseError` carrying a machine-readable ``code`` that never changes between releases, a human
message, and the HTTP status the serving layer answers with. Anything else is a bug.
"""

from __future__ import annotations

from typing import Any


class PoseError(Exception):
    """Base class: ``code`` is stable, ``message`` is for humans, ``status`` is the HTTP status."""

    status: int = 400

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        if status is not None:
            self.status = status
        self.details = details or {}

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep code, status and details when the error crosses a process boundary (Ray pickles
        # exceptions raised in replicas); the default would call __init__ with the message only.
        return (type(self), (self.code, self.message), self.__dict__)

    def to_dict(self) -> dict[str, Any]:
        """The JSON error body: ``{"error": {"code", "message", "details"}}``."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return {"error": body}

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


class InputError(PoseError):
    """The request itself is wrong (unreadable image, bad boxes, wrong type): HTTP 4xx."""

    status = 400


class WeightsError(PoseError):
    """Model files are missing, corrupt or of the wrong kind: the service cannot start."""

    status = 503
