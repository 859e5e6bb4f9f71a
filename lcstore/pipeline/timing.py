"""Where the time goes: per-step seconds that tasks report back to the build report."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


class StepTimer:
    """Accumulates wall-clock seconds per named step within one task."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def add_seconds(total: dict[str, float], part: dict[str, float]) -> None:
    """Add one task's step seconds into a running total."""
    for name, secs in part.items():
        total[name] = round(total.get(name, 0.0) + secs, 3)
