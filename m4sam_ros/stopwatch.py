"""Per-stage wall-clock timing of one frame, keyed by stage name.

On CUDA kernels run asynchronously: each stage ends by waiting for the device, so a
stage is charged its own time and not the previous stage's queued work.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class Stopwatch:
    """``with watch("encoder"): ...`` adds the block's milliseconds to ``laps["encoder"]``."""

    def __init__(self, device: torch.device | None = None):
        self.device = device
        self.laps: dict[str, float] = {}
        self.started = time.perf_counter()

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.laps[stage] = self.laps.get(stage, 0.0) + (time.perf_counter() - start) * 1e3

    def report(self, stages: tuple[str, ...]) -> dict[str, float]:
        """ms per stage (0 for a stage this frame skipped) and "total" since the watch started."""
        return {**{stage: self.laps.get(stage, 0.0) for stage in stages},
                "total": (time.perf_counter() - self.started) * 1e3}
