"""RGB/depth pairing by header stamp and the latest-pair hand-off to the inference worker.

message_filters is not pip-installable, so the approximate-time policy lives here, free
of rclpy. The policy is latency-first, like message_filters' Python
ApproximateTimeSynchronizer: a frame is paired as soon as the other stream holds a frame
within ``slop`` seconds (the closest one), and everything older is dropped. With ``slop``
below half the frame period no better partner can arrive later, so the greedy choice is
also the closest one. When RGB frames keep arriving without depth for ``depth_timeout``
seconds, RGB frames pass alone (RGB-only mode) until depth returns. Depth freshness follows
the streams, not the idle time: the clock starts with the first RGB frame that finds no
depth since the last one, so a camera starting after the node, or both streams pausing
and resuming, never sends a frame through alone.

``LatestSlot`` is the one-item mailbox between ROS callbacks and the worker: a slow model
drops stale pairs (counted) instead of queueing them, so result age stays bounded.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

__all__ = ["ApproximateTimePairer", "FramePair", "LatestSlot", "PairingStats"]

T = TypeVar("T")


@dataclass(frozen=True)
class FramePair:
    """One RGB frame and its depth partner (None in RGB-only mode)."""

    rgb: Any
    rgb_stamp: float
    depth: Any | None = None
    depth_stamp: float | None = None

    @property
    def skew(self) -> float | None:
        """depth stamp - rgb stamp, seconds."""
        return None if self.depth_stamp is None else self.depth_stamp - self.rgb_stamp


@dataclass(frozen=True)
class PairingStats:
    """Counters since start (monotonic, never reset) for diagnostics."""

    rgb_received: int = 0
    depth_received: int = 0
    pairs: int = 0                 # RGB-D pairs emitted
    rgb_only: int = 0              # RGB frames emitted alone (depth timed out)
    unmatched_rgb: int = 0         # RGB frames dropped without a partner
    unmatched_depth: int = 0       # depth frames dropped without a partner
    stamp_resets: int = 0          # a stream's stamp went backwards; queues cleared


@dataclass
class _Entry:
    stamp: float
    payload: Any


class ApproximateTimePairer:
    """Pairs RGB and depth frames whose stamps differ by at most ``slop`` seconds.

    Thread-safe: ``add_rgb``/``add_depth`` may be called from different threads.
    Stamps are seconds (any epoch, the same for both streams); arrival times for the
    depth timeout come from ``clock`` (monotonic seconds), injectable for tests.
    """

    def __init__(self, slop: float = 0.015, queue_size: int = 5, depth_timeout: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self._lock = threading.Lock()
        self._clock = clock
        self._rgb: deque[_Entry] = deque()
        self._depth: deque[_Entry] = deque()
        self._last_stamp = {"rgb": float("-inf"), "depth": float("-inf")}
        self._rgb_without_depth_since: float | None = None  # arrival of the first RGB frame since the last depth
        self._stats = PairingStats()
        self.configure(slop=slop, queue_size=queue_size, depth_timeout=depth_timeout)

    def configure(self, *, slop: float | None = None, queue_size: int | None = None,
                  depth_timeout: float | None = None) -> None:
        """Change settings at run time; queued frames are kept (trimmed to the new size)."""
        if slop is not None and not slop >= 0.0:
            raise ValueError(f"slop must be >= 0 seconds, got {slop}")
        if queue_size is not None and queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if depth_timeout is not None and not depth_timeout > 0.0:
            raise ValueError(f"depth_timeout must be > 0 seconds, got {depth_timeout}")
        with self._lock:
            if slop is not None:
                self.slop = float(slop)
            if queue_size is not None:
                self.queue_size = int(queue_size)
                self._trim(self._rgb, "unmatched_rgb")
                self._trim(self._depth, "unmatched_depth")
            if depth_timeout is not None:
                self.depth_timeout = float(depth_timeout)

    @property
    def depth_available(self) -> bool:
        """False once RGB has kept arriving without depth for longer than ``depth_timeout`` (RGB-only mode)."""
        with self._lock:
            return self._depth_fresh()

    @property
    def stats(self) -> PairingStats:
        with self._lock:
            return self._stats

    @property
    def queued(self) -> tuple[int, int]:
        """(RGB, depth) frames waiting for a partner."""
        with self._lock:
            return len(self._rgb), len(self._depth)

    def add_rgb(self, stamp: float, payload: Any) -> FramePair | None:
        """Offer an RGB frame; returns a pair when one is complete."""
        with self._lock:
            self._count(rgb_received=1)
            if self._rgb_without_depth_since is None:
                self._rgb_without_depth_since = self._clock()
            self._check_order("rgb", stamp)
            if not self._depth_fresh():
                # RGB-only: nothing waits for a partner any more, on either side
                self._drop_all(self._depth, "unmatched_depth")
                self._drop_all(self._rgb, "unmatched_rgb")
                self._count(rgb_only=1)
                return FramePair(rgb=payload, rgb_stamp=stamp)
            partner = self._match(stamp, own=self._rgb, other=self._depth,
                                  own_counter="unmatched_rgb", other_counter="unmatched_depth")
            if partner is None:
                self._push(self._rgb, _Entry(stamp, payload), "unmatched_rgb")
                return None
            self._count(pairs=1)
            return FramePair(rgb=payload, rgb_stamp=stamp, depth=partner.payload, depth_stamp=partner.stamp)

    def add_depth(self, stamp: float, payload: Any) -> FramePair | None:
        """Offer a depth frame; returns a pair when one is complete."""
        with self._lock:
            self._count(depth_received=1)
            self._rgb_without_depth_since = None
            self._check_order("depth", stamp)
            partner = self._match(stamp, own=self._depth, other=self._rgb,
                                  own_counter="unmatched_depth", other_counter="unmatched_rgb")
            if partner is None:
                self._push(self._depth, _Entry(stamp, payload), "unmatched_depth")
                return None
            self._count(pairs=1)
            return FramePair(rgb=partner.payload, rgb_stamp=partner.stamp, depth=payload, depth_stamp=stamp)

    # -- internals (called with the lock held) --------------------------------------------

    def _depth_fresh(self) -> bool:
        since = self._rgb_without_depth_since
        return since is None or self._clock() - since <= self.depth_timeout

    def _count(self, **increments: int) -> None:
        self._stats = replace(self._stats, **{k: getattr(self._stats, k) + v for k, v in increments.items()})

    def _check_order(self, stream: str, stamp: float) -> None:
        """A stamp older than its stream's last one (bag loop, clock reset): start afresh."""
        if stamp < self._last_stamp[stream]:
            self._drop_all(self._rgb, "unmatched_rgb")
            self._drop_all(self._depth, "unmatched_depth")
            self._last_stamp = {"rgb": float("-inf"), "depth": float("-inf")}
            self._count(stamp_resets=1)
        self._last_stamp[stream] = stamp

    def _match(self, stamp: float, own: deque[_Entry], other: deque[_Entry],
               own_counter: str, other_counter: str) -> _Entry | None:
        # Frames of the other stream older than stamp - slop can never be matched any more:
        # this stream's later frames only get newer.
        while other and other[0].stamp < stamp - self.slop:
            other.popleft()
            self._count(**{other_counter: 1})
        if not other:
            return None
        best = min(other, key=lambda e: abs(e.stamp - stamp))
        if abs(best.stamp - stamp) > self.slop:
            return None
        # Latest pair wins: everything older than the pair on both sides is stale.
        while other[0] is not best:
            other.popleft()
            self._count(**{other_counter: 1})
        other.popleft()
        self._drop_all(own, own_counter)
        return best

    def _push(self, queue: deque[_Entry], entry: _Entry, counter: str) -> None:
        queue.append(entry)
        self._trim(queue, counter)

    def _trim(self, queue: deque[_Entry], counter: str) -> None:
        while len(queue) > self.queue_size:
            queue.popleft()
            self._count(**{counter: 1})

    def _drop_all(self, queue: deque[_Entry], counter: str) -> None:
        if queue:
            self._count(**{counter: len(queue)})
            queue.clear()


class LatestSlot(Generic[T]):
    """One-item mailbox: ``put`` replaces an item nobody took yet (counted in ``dropped``)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._full = False
        self._closed = False
        self.put_count = 0
        self.dropped = 0

    def put(self, item: T) -> bool:
        """Store ``item``; True when it replaced (dropped) an unconsumed one."""
        with self._cond:
            if self._closed:
                raise RuntimeError("put() on a closed LatestSlot")
            replaced = self._full
            self.dropped += int(replaced)
            self.put_count += 1
            self._item, self._full = item, True
            self._cond.notify()
            return replaced

    def get(self, timeout: float | None = None) -> T | None:
        """Take the item, waiting up to ``timeout`` seconds; None on timeout or once closed."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._full or self._closed, timeout):
                return None
            if self._closed:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    def close(self) -> None:
        """Wake every waiting ``get`` (returns None); later ``put`` raises."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
