"""Batch bookkeeping shared by the batched deployments (reported by ``/v1/info``)."""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class BatchConfig(BaseModel):
    """A deployment's ``user_config``: applied at start and on every config update, no restart."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(ge=1, le=1024)
    batch_wait_timeout_s: float = Field(ge=0.0, le=10.0)


class BatchStats:
    """Sizes of the batches this replica ran: totals, maximum, histogram, the most recent ones."""

    def __init__(self) -> None:
        self.batches = 0
        self.items = 0
        self.max_size = 0
        self.sizes: Counter[int] = Counter()
        self.recent: deque[int] = deque(maxlen=32)

    def record(self, size: int) -> None:
        self.batches += 1
        self.items += size
        self.max_size = max(self.max_size, size)
        self.sizes[size] += 1
        self.recent.append(size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "items": self.items,
            "max_items_per_batch": self.max_size,
            "mean_items_per_batch": round(self.items / self.batches, 3) if self.batches else 0.0,
            "histogram": {str(k): v for k, v in sorted(self.sizes.items())},
            "recent": list(self.recent),
        }
