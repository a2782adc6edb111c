"""Camera frame -> model input: the one preprocessing of the tracker, training, evaluation and export parity.

Train/test skew is the quiet killer of a tracker: the encoder must see in training what
the node feeds it, so every path prepares frames with ``model_inputs``.
"""
from __future__ import annotations

import cv2
import numpy as np

from m4sam_ros.model.m4sam import IMAGENET_MEAN, IMAGENET_STD

_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32)


def _normalised(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] -> (3, S, S) float32: bilinear resize, ImageNet-normalised."""
    if image.shape[:2] != (size, size):
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    return ((image - _MEAN) / _STD).transpose(2, 0, 1)


def model_inputs(rgb: np.ndarray, depth_normalized: np.ndarray | None,
                 image_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """rgb (H, W, 3) uint8 RGB; depth_normalized (H, W) float32 [0, 1] from ``normalize_depth``
    (aligned to rgb) or None. Returns float32 arrays rgb (1, 3, S, S), depth (1, 3, S, S)
    (zeros when absent) and modality_present (1, 2) = [1, depth given].
    """
    rgb_in = _normalised(rgb.astype(np.float32) * np.float32(1.0 / 255.0), image_size)
    if depth_normalized is None:
        depth_in = np.zeros_like(rgb_in)
    else:
        depth_in = _normalised(np.repeat(depth_normalized[:, :, None].astype(np.float32), 3, axis=2), image_size)
    present = np.array([[1.0, 0.0 if depth_normalized is None else 1.0]], dtype=np.float32)
    return np.ascontiguousarray(rgb_in[None]), np.ascontiguousarray(depth_in[None]), present
