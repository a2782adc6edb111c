"""Training clips: T consecutive frames of one video, drawn deterministically from a seed.

A clip is a function of (seed, draw index) alone, so resuming training at step k draws the
same clips as an uninterrupted run without saving any sampler state. Every (video, start)
window that holds at least ``min_annotated`` GT frames is equally likely, so long videos
are drawn more often, in proportion to their usable windows.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from m4sam_ros.depth import DepthConfig
from m4sam_ros.learn.datasets import DatasetError, Frame, VideoRecord, load_frame


@dataclass(frozen=True)
class Clip:
    """Which frames to read: video index, first frame, frame step; flip = mirror horizontally."""

    video: int
    start: int
    stride: int
    length: int
    flip: bool

    @property
    def indices(self) -> range:
        return range(self.start, self.start + self.stride * self.length, self.stride)


class ClipSampler:
    """Draws clips of ``clip_length`` frames, ``stride`` apart, from ``videos``."""

    def __init__(self, videos: Sequence[VideoRecord], clip_length: int, seed: int = 0, stride: int = 1,
                 min_annotated: int = 1, flip_prob: float = 0.5):
        if clip_length < 1 or stride < 1 or min_annotated < 1:
            raise ValueError(f"clip_length, stride and min_annotated must be >= 1, got {clip_length}, {stride}, {min_annotated}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.videos = list(videos)
        self.clip_length, self.seed, self.stride, self.flip_prob = clip_length, seed, stride, flip_prob
        span = stride * (clip_length - 1) + 1
        starts: list[np.ndarray] = []
        for video in self.videos:
            candidates = np.arange(max(0, len(video.frames) - span + 1))
            # GT frames inside each window (strided): count directly, windows are short
            counts = np.array([sum(video.frames[s + k * stride].gt is not None for k in range(clip_length))
                               for s in candidates], dtype=np.int64)
            starts.append(candidates[counts >= min_annotated] if len(candidates) else candidates)
        self._starts = starts
        self._offsets = np.cumsum([0] + [len(s) for s in starts])
        if self._offsets[-1] == 0:
            lengths = {v.name: len(v.frames) for v in self.videos}
            raise DatasetError(f"no clip of {clip_length} frames (stride {stride}) with >= {min_annotated} GT frame(s) "
                               f"in any video; frames per video: {lengths}")

    @property
    def windows(self) -> int:
        """Number of distinct (video, start) windows."""
        return int(self._offsets[-1])

    def clip(self, index: int) -> Clip:
        """The ``index``-th draw, a pure function of (seed, index)."""
        rng = np.random.default_rng([self.seed, index])
        window = int(rng.integers(self.windows))
        video = int(np.searchsorted(self._offsets, window, side="right") - 1)
        start = int(self._starts[video][window - self._offsets[video]])
        return Clip(video, start, self.stride, self.clip_length, bool(rng.random() < self.flip_prob))

    def load(self, clip: Clip, depth_config: DepthConfig = DepthConfig()) -> list[Frame]:
        """Read a clip's frames (``load_frame``), mirrored if the clip says so."""
        video = self.videos[clip.video]
        frames = [load_frame(video.frames[i], depth_config) for i in clip.indices]
        return [_mirror(f) for f in frames] if clip.flip else frames


def _flip(image: np.ndarray | None) -> np.ndarray | None:
    return None if image is None else np.ascontiguousarray(image[:, ::-1])


def _mirror(frame: Frame) -> Frame:
    return Frame(frame.stem, _flip(frame.rgb), _flip(frame.depth_raw), _flip(frame.depth), _flip(frame.depth_valid),
                 _flip(frame.gt))
