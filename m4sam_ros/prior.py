"""Zero-shot pseudo-prior: a coarse saliency mask from depth nearness and a centre bias.

Without trained adapters the tracker still needs a first mask to seed SAM2's memory (the
conditioning frame). Two cues that hold for most RGB-D salient-object footage give one
for free: the salient object is nearer than its surroundings, and it sits near the image
centre (photographer's bias). Nearness is stretched per frame between robust percentiles
of the valid depth, so a 1 m object in front of a 3 m wall stands out whatever the
sensor range. The work runs on a small grid (the prior is coarse by design) and is
resized to the requested shape, so it costs well under a millisecond per frame.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class PriorConfig:
    """Settings of the depth x centre prior.

    center_sigma: Gaussian centre-bias sigma as a fraction of the image height / width.
    depth_weight: 0 = centre only, 1 = nearness fully gates the centre bias.
    near_percentiles: valid-nearness percentiles stretched to 0..1: the low one is the
        background reference (the median: salient objects rarely fill half the view), the
        high one the nearest surface, robust to flying pixels.
    depth_gamma: exponent on nearness; > 1 favours the nearest surface.
    smooth_sigma: Gaussian smoothing sigma as a fraction of the work grid's longer side.
    min_valid_fraction: below this fraction of valid depth pixels the prior is centre only.
    work_size: longer side of the grid the prior is computed on.
    near_is_bright: polarity of the normalised depth given; keep equal to DepthConfig's.
    """

    center_sigma: float = 0.3
    depth_weight: float = 0.8
    near_percentiles: tuple[float, float] = (50.0, 99.0)
    depth_gamma: float = 2.0
    smooth_sigma: float = 0.03
    min_valid_fraction: float = 0.2
    work_size: int = 64
    near_is_bright: bool = True

    def __post_init__(self) -> None:
        if self.center_sigma <= 0:
            raise ValueError(f"PriorConfig.center_sigma must be > 0, got {self.center_sigma}")
        if not 0.0 <= self.depth_weight <= 1.0:
            raise ValueError(f"PriorConfig.depth_weight must be in [0, 1], got {self.depth_weight}")
        low, high = self.near_percentiles
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(f"PriorConfig.near_percentiles must satisfy 0 <= low < high <= 100, "
                             f"got {self.near_percentiles}")
        if self.work_size < 8:
            raise ValueError(f"PriorConfig.work_size must be >= 8, got {self.work_size}")


def _work_shape(shape: tuple[int, int], size: int) -> tuple[int, int]:
    scale = min(1.0, size / max(shape))
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def _center_bias(shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Separable Gaussian peaking at the image centre, (h, w) float32, max 1."""
    h, w = shape
    ys = (np.arange(h, dtype=np.float32) + 0.5) / h - 0.5
    xs = (np.arange(w, dtype=np.float32) + 0.5) / w - 0.5
    gy = np.exp(-0.5 * (ys / sigma) ** 2)
    gx = np.exp(-0.5 * (xs / sigma) ** 2)
    return np.outer(gy, gx).astype(np.float32)


def _nearness(depth_normalized: np.ndarray, valid: np.ndarray, config: PriorConfig) -> np.ndarray | None:
    """Per-frame stretched nearness in [0, 1], holes 0 (never salient by themselves);
    None when the valid depth is flat and so says nothing about saliency."""
    near = depth_normalized if config.near_is_bright else 1.0 - depth_normalized
    low, high = np.percentile(near[valid], config.near_percentiles)
    if high - low < 1e-3:
        return None
    stretched = np.clip((near - low) / (high - low), 0.0, 1.0) ** config.depth_gamma
    stretched[~valid] = 0.0
    return stretched.astype(np.float32)


def saliency_prior(depth_normalized: np.ndarray | None, valid: np.ndarray | None,
                   shape: tuple[int, int], config: PriorConfig = PriorConfig()) -> np.ndarray:
    """Coarse pseudo-mask probability (H, W) float32 [0,1] from depth nearness x centre bias;
    centre-only when depth is None or has too few valid pixels.

    depth_normalized / valid come from ``normalize_depth`` and may have another size than
    ``shape`` (H, W), the size of the returned prior.
    """
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be (H, W) with positive sizes, got {shape}")
    work = _work_shape((int(shape[0]), int(shape[1])), config.work_size)
    prior = _center_bias(work, config.center_sigma)  # (h, w)
    if depth_normalized is not None:
        if valid is None:
            valid = np.isfinite(depth_normalized)
        if depth_normalized.ndim != 2 or valid.shape != depth_normalized.shape:
            raise ValueError(f"depth_normalized must be (H, W) with valid of the same shape, got "
                             f"{depth_normalized.shape} and {valid.shape}")
        if valid.mean() >= config.min_valid_fraction:
            size = (work[1], work[0])  # cv2 takes (width, height)
            small = cv2.resize(np.nan_to_num(depth_normalized.astype(np.float32)), size, interpolation=cv2.INTER_AREA)
            small_valid = cv2.resize(valid.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.5
            near = _nearness(small, small_valid, config) if small_valid.any() else None
            if near is not None:
                prior = prior * ((1.0 - config.depth_weight) + config.depth_weight * near)
    sigma = config.smooth_sigma * max(work)
    if sigma > 0:
        prior = cv2.GaussianBlur(prior, (0, 0), sigmaX=sigma)
    out = cv2.resize(prior, (int(shape[1]), int(shape[0])), interpolation=cv2.INTER_LINEAR)
    peak = float(out.max())
    if peak > 0:  # 0 only if a tiny centre sigma underflows away from the nearest surface
        out = out / peak
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)
