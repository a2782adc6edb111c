"""Which depth and camera_info go with each colour frame of a recording (offline, no drops).

Live, ``m4sam_ros.pairing`` is latency-first: it pairs greedily as frames arrive and drops
what a slow model cannot take. Offline every stamp is known in advance, so the rule can be
the exact one, and every colour frame is kept:

- depth: the frame of nearest header stamp within ``slop`` (a tie goes to the earlier
  stamp, equal stamps to the first recorded); none within ``slop`` -> the colour frame
  runs RGB-only. A depth frame may serve more than one colour frame (a 15 Hz depth stream
  under 30 Hz colour with a wide slop); with ``slop`` below half the frame period, as the
  node's ``sync.slop`` asks, each serves at most one.
- camera_info: the latest by stamp at or before the colour stamp (equal stamps: the last
  recorded); none -> the frame has no intrinsics (no 3-D).

Stamps are integer nanoseconds, so equal stamps compare equal.
"""
from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["FramePlan", "plan_frames"]


@dataclass(frozen=True)
class FramePlan:
    """Partners of one colour frame: indices into the depth / camera_info sequences, or None."""

    depth: int | None
    info: int | None
    skew_ns: int | None  # depth stamp - colour stamp


def plan_frames(rgb_ns: Sequence[int], depth_ns: Sequence[int], info_ns: Sequence[int],
                slop_ns: int) -> list[FramePlan]:
    """One ``FramePlan`` per colour stamp, in the order given (see the module docstring)."""
    if slop_ns < 0:
        raise ValueError(f"slop must be >= 0 ns, got {slop_ns}")
    depth_order = np.argsort(np.asarray(depth_ns, dtype=np.int64), kind="stable")
    depth_sorted = [int(depth_ns[i]) for i in depth_order]
    info_order = np.argsort(np.asarray(info_ns, dtype=np.int64), kind="stable")
    info_sorted = [int(info_ns[i]) for i in info_order]
    plans = []
    for stamp in rgb_ns:
        stamp = int(stamp)
        depth = skew = None
        at = bisect.bisect_left(depth_sorted, stamp)  # first depth stamp >= colour stamp
        # the candidates: the last stamp below (first of its equal run) and the first at or above
        candidates = []
        if at > 0:
            before = depth_sorted[at - 1]
            candidates.append(bisect.bisect_left(depth_sorted, before))
        if at < len(depth_sorted):
            candidates.append(at)
        if candidates:
            best = min(candidates, key=lambda k: (abs(depth_sorted[k] - stamp), depth_sorted[k]))
            if abs(depth_sorted[best] - stamp) <= slop_ns:
                depth, skew = int(depth_order[best]), depth_sorted[best] - stamp
        info = None
        last = bisect.bisect_right(info_sorted, stamp)  # infos [0, last) are at or before the stamp
        if last > 0:
            info = int(info_order[last - 1])
        plans.append(FramePlan(depth=depth, info=info, skew_ns=skew))
    return plans
