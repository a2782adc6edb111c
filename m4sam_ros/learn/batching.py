"""Loaded clips -> model tensors, prepared by the tracker's own ``model_inputs``.

Train/test skew is the quiet killer of a tracker: the encoder must see in training what
the node feeds it. So frames go through ``m4sam_ros.preprocess.model_inputs`` (the function
``SaliencyTracker.step`` uses), with depth already through ``normalize_depth`` (done in
``datasets.load_frame``, at the RGB size, as the tracker does). Only the GT target is
prepared here: bilinear-resized to S x S, in [0, 1].
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from m4sam_ros.learn.datasets import Frame
from m4sam_ros.preprocess import model_inputs


@dataclass
class ClipBatch:
    """B clips of T frames at model size S."""

    rgb: torch.Tensor  # (B, T, 3, S, S) ImageNet-normalised
    depth: torch.Tensor  # (B, T, 3, S, S) ImageNet-normalised normalised depth (zeros where absent)
    present: torch.Tensor  # (B, T, 2) [rgb present, depth present]
    gt: torch.Tensor  # (B, T, 1, S, S) float in [0, 1] (bilinear-resized GT; zeros where absent)
    has_gt: torch.Tensor  # (B, T) bool

    def to(self, device: torch.device) -> "ClipBatch":
        return ClipBatch(*(t.to(device) for t in (self.rgb, self.depth, self.present, self.gt, self.has_gt)))


def frame_tensors(frame: Frame, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
    """One frame -> (rgb (3, S, S), depth (3, S, S), present (2,), gt (1, S, S), has_gt)."""
    rgb, depth, present = model_inputs(frame.rgb, frame.depth, size)
    if frame.gt is not None:
        gt = cv2.resize(frame.gt.astype(np.float32) * np.float32(1.0 / 255.0), (size, size),
                        interpolation=cv2.INTER_LINEAR)[None]
    else:
        gt = np.zeros((1, size, size), dtype=np.float32)
    return rgb[0], depth[0], present[0], gt, frame.gt is not None


def collate_clips(clips: Sequence[Sequence[Frame]], size: int) -> ClipBatch:
    """Stack B clips of equal length T into a ``ClipBatch``."""
    lengths = {len(c) for c in clips}
    if len(lengths) != 1:
        raise ValueError(f"clips of one batch must have equal length, got lengths {sorted(lengths)}")
    per_frame = [[frame_tensors(f, size) for f in clip] for clip in clips]

    def stack(i: int) -> torch.Tensor:  # (B, T, ...) of the i-th frame tensor
        return torch.from_numpy(np.stack([np.stack([f[i] for f in clip]) for clip in per_frame]))

    has_gt = torch.tensor([[f[4] for f in clip] for clip in per_frame], dtype=torch.bool)
    return ClipBatch(stack(0), stack(1), stack(2), stack(3), has_gt)
