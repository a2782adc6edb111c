"""The zero-shot depth x centre prior finds the near object and degrades to centre bias."""
import numpy as np
import pytest

from m4sam_ros.depth import DepthConfig, normalize_depth
from m4sam_ros.prior import PriorConfig, saliency_prior


def _scene(off_centre: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A 1 m disc in front of a slanted 3-4 m wall, off the image centre; depth uint16 mm."""
    h, w = 96, 128
    ys, xs = np.mgrid[0:h, 0:w]
    depth = (3000 + 1000 * xs / w).astype(np.uint16)
    cx, cy = (80, 40) if off_centre else (64, 48)
    gt = (xs - cx) ** 2 + (ys - cy) ** 2 <= 14**2
    depth[gt] = 1000
    depth[np.random.default_rng(0).random((h, w)) < 0.05] = 0  # sensor holes
    return depth, gt


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_prior_peaks_on_the_near_object():
    depth, gt = _scene()
    normalised, valid = normalize_depth(depth)
    prior = saliency_prior(normalised, valid, gt.shape)
    assert prior.shape == gt.shape and prior.dtype == np.float32
    assert np.isfinite(prior).all() and prior.min() >= 0.0 and prior.max() == pytest.approx(1.0)
    peak = np.unravel_index(np.argmax(prior), prior.shape)
    assert gt[peak]
    chance = gt.mean()
    assert _iou(prior > 0.5, gt) > max(0.4, 5 * chance)


def test_prior_handles_reversed_polarity_when_told():
    depth, gt = _scene()
    normalised, valid = normalize_depth(depth, DepthConfig(near_is_bright=False))
    prior = saliency_prior(normalised, valid, gt.shape, PriorConfig(near_is_bright=False))
    assert gt[np.unravel_index(np.argmax(prior), prior.shape)]


def test_depth_of_another_size_gives_prior_of_requested_shape():
    depth, gt = _scene()
    normalised, valid = normalize_depth(depth[::2, ::2])  # depth at half resolution
    prior = saliency_prior(normalised, valid, gt.shape)
    assert prior.shape == gt.shape
    assert _iou(prior > 0.5, gt) > 0.4


def _is_centre_only(prior: np.ndarray) -> bool:
    h, w = prior.shape
    peak = np.unravel_index(np.argmax(prior), prior.shape)
    symmetric = np.allclose(prior, prior[::-1, ::-1], atol=1e-3)
    return abs(peak[0] - (h - 1) / 2) <= 1 and abs(peak[1] - (w - 1) / 2) <= 1 and symmetric


def test_missing_depth_gives_centre_bias():
    prior = saliency_prior(None, None, (60, 80))
    assert prior.shape == (60, 80) and np.isfinite(prior).all()
    assert _is_centre_only(prior)
    assert prior[0, 0] < 0.2 and prior.max() == pytest.approx(1.0)


def test_mostly_invalid_depth_falls_back_to_centre_bias():
    depth, _ = _scene()
    depth[:, 20:] = 0  # 85 % holes
    normalised, valid = normalize_depth(depth)
    assert valid.mean() < PriorConfig().min_valid_fraction
    assert _is_centre_only(saliency_prior(normalised, valid, depth.shape))


def test_flat_depth_carries_no_cue():
    flat = np.full((60, 80), 2000, np.uint16)
    normalised, valid = normalize_depth(flat)
    assert _is_centre_only(saliency_prior(normalised, valid, flat.shape))


def test_zero_depth_weight_is_centre_only():
    depth, gt = _scene()
    normalised, valid = normalize_depth(depth)
    assert _is_centre_only(saliency_prior(normalised, valid, gt.shape, PriorConfig(depth_weight=0.0)))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="depth_weight"):
        PriorConfig(depth_weight=2.0)
    with pytest.raises(ValueError, match="same shape"):
        saliency_prior(np.zeros((4, 4), np.float32), np.ones((3, 3), bool), (4, 4))
    with pytest.raises(ValueError, match="shape"):
        saliency_prior(None, None, (0, 4))
