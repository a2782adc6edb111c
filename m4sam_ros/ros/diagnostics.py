"""What the node knows about its own health, summarised for /diagnostics.

Users of perception nodes most often cannot tell *why* nothing comes out (QoS mismatch,
sync that never fires, a model slower than the camera). So the status carries per-topic
input rates, the paired rate, drops, inference time, result age and the last problem,
and its level says at a glance whether the pipeline is healthy.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

__all__ = ["PipelineMonitor", "ProblemLog", "RateMeter"]

RECENT_S = 5.0          # a problem this recent still colours the status
INPUT_SILENT_S = 3.0    # no RGB for this long -> WARN


class RateMeter:
    """Events per second over a sliding window (thread-safe)."""

    def __init__(self, window_s: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self._window = window_s
        self._clock = clock
        self._times: deque[float] = deque()
        self._lock = threading.Lock()
        self._last: float | None = None
        self.total = 0

    def tick(self) -> None:
        with self._lock:
            now = self._clock()
            self._times.append(now)
            self._last = now
            self.total += 1
            self._expire(now)

    def rate(self) -> float:
        with self._lock:
            now = self._clock()
            self._expire(now)
            if len(self._times) < 2:
                return 0.0
            return (len(self._times) - 1) / max(now - self._times[0], 1e-6)

    def seconds_since_last(self) -> float | None:
        with self._lock:
            return None if self._last is None else self._clock() - self._last

    def _expire(self, now: float) -> None:
        while self._times and now - self._times[0] > self._window:
            self._times.popleft()


@dataclass(frozen=True)
class Problem:
    kind: str
    message: str
    time: float
    warning: bool


class ProblemLog:
    """Bad input and errors by kind: how often, and the latest one of each kind."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.last: Problem | None = None
        self._last_by_kind: dict[str, Problem] = {}

    def record(self, kind: str, message: str, warning: bool = True) -> None:
        with self._lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            self.last = self._last_by_kind[kind] = Problem(kind, message, self._clock(), warning)

    def snapshot(self) -> tuple[dict[str, int], Problem | None]:
        """(counts by kind, latest problem), consistent with each other; the dict is a copy, as
        iterating the live one while a callback adds a kind raises RuntimeError."""
        with self._lock:
            return dict(self.counts), self.last

    def recent_warning(self, within_s: float = RECENT_S, kind: str | None = None) -> Problem | None:
        """The newest warning (of ``kind``, if given) no older than ``within_s``."""
        with self._lock:
            now = self._clock()
            candidates = [p for k, p in self._last_by_kind.items()
                          if p.warning and now - p.time <= within_s and kind in (None, k)]
            return max(candidates, key=lambda p: p.time, default=None)


class PipelineMonitor:
    """Counters written by callbacks and the worker, read by the diagnostics timer."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.rgb = RateMeter(clock=clock)
        self.depth = RateMeter(clock=clock)
        self.camera_info = RateMeter(clock=clock)
        self.pairs = RateMeter(clock=clock)
        self.results = RateMeter(clock=clock)
        self.problems = ProblemLog(clock=clock)
        self._lock = threading.Lock()
        self.inference_ms = 0.0
        self.inference_ms_mean = 0.0
        self.result_age_ms = 0.0
        self._age_max_ms = 0.0            # since the last status
        self.memory_frames = 0
        self.used_depth = False
        self.reinit_count = 0
        self.last_reinit = ""
        self.last_init_rule = ""  # how the last zero-shot initial mask was chosen
        self.overlays = 0

    def record_result(self, *, inference_ms: float, age_s: float | None, memory_frames: int, used_depth: bool,
                      reinitialized: str | None, overlay: bool, init_rule: str | None = None) -> None:
        """``age_s``: node clock minus the frame's stamp; None when the stamp is on another clock."""
        self.results.tick()
        with self._lock:
            self.inference_ms = inference_ms
            n = self.results.total
            self.inference_ms_mean += (inference_ms - self.inference_ms_mean) / min(n, 20)  # ~20-frame mean
            self.result_age_ms = None if age_s is None else age_s * 1e3
            if self.result_age_ms is not None:
                self._age_max_ms = max(self._age_max_ms, self.result_age_ms)
            self.memory_frames = memory_frames
            self.used_depth = used_depth
            if reinitialized:
                self.reinit_count += 1
                self.last_reinit = reinitialized
            if init_rule:
                self.last_init_rule = init_rule
            self.overlays += int(overlay)

    def status(self, *, name: str, hardware_id: str, rgb_only: bool, extra: Mapping[str, object],
               hints: list[str], nonfinite: bool = False) -> DiagnosticStatus:
        """One DiagnosticStatus; ``extra`` adds node-side counters, ``hints`` are warnings (e.g. QoS)."""
        with self._lock:
            age_max, self._age_max_ms = self._age_max_ms, 0.0
            values: dict[str, object] = {
                "mode": "RGB-only" if rgb_only else "RGB-D",
                "rgb_hz": f"{self.rgb.rate():.1f}",
                "depth_hz": f"{self.depth.rate():.1f}",
                "camera_info_hz": f"{self.camera_info.rate():.1f}",
                "paired_hz": f"{self.pairs.rate():.1f}",
                "results_hz": f"{self.results.rate():.1f}",
                "frames_processed": self.results.total,
                "inference_ms": f"{self.inference_ms:.1f}",
                "inference_ms_mean": f"{self.inference_ms_mean:.1f}",
                "result_age_ms": "n/a (stamps not on this node's clock)" if self.result_age_ms is None
                else f"{self.result_age_ms:.1f}",
                "result_age_ms_max": f"{age_max:.1f}",
                "memory_frames": self.memory_frames,
                "last_used_depth": self.used_depth,
                "reinit_count": self.reinit_count,
                "last_reinit": self.last_reinit,
                "last_init_rule": self.last_init_rule,
                "overlays_computed": self.overlays,
            }
        values.update(extra)
        counts, last = self.problems.snapshot()
        values["problems"] = sum(counts.values())
        for kind, count in sorted(counts.items()):
            values[f"problems.{kind}"] = count
        values["last_error"] = f"[{last.kind}] {last.message}" if last else ""
        for i, hint in enumerate(hints):
            values[f"hint.{i}"] = hint

        level, summary = self._assess(rgb_only, hints, nonfinite)
        return DiagnosticStatus(level=level, name=name, hardware_id=hardware_id, message=summary,
                                values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])

    def _assess(self, rgb_only: bool, hints: list[str], nonfinite: bool) -> tuple[bytes, str]:
        since_rgb = self.rgb.seconds_since_last()
        error = self.problems.recent_warning(kind="inference")
        warning = self.problems.recent_warning()
        if nonfinite:  # until a good frame returns
            return DiagnosticStatus.ERROR, "model output not finite (NaN/inf): frames dropped, memory re-initialising"
        if error is not None:
            return DiagnosticStatus.ERROR, f"inference failing: {error.message}"
        if since_rgb is None or since_rgb > INPUT_SILENT_S:
            return DiagnosticStatus.WARN, "no RGB frames" + (f" ({hints[0]})" if hints else "")
        mode = "RGB-only (no depth)" if rgb_only else "RGB-D"
        summary = f"{mode}, {self.results.rate():.1f} Hz, {self.inference_ms_mean:.0f} ms inference"
        if warning is not None:
            return DiagnosticStatus.WARN, f"{summary}; {warning.message}"
        if rgb_only or hints:
            return DiagnosticStatus.WARN, summary + (f"; {hints[0]}" if hints else "")
        return DiagnosticStatus.OK, summary
