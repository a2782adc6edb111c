"""The field's saliency metrics, from ``pysodmetrics`` (py_sod_metrics), never hand-written.

S-measure (structure), E-measure (enhanced alignment; max and mean over the 256
thresholds), F-measure (beta^2 = 0.3; max over thresholds and adaptive threshold) and MAE.
Predictions are scored the way the benchmark toolboxes score saved maps: quantised to
uint8 PNG levels, then min-max stretched per frame by ``py_sod_metrics``; GT is binarised
at 128. Frames without any GT file are not scored (the caller skips them).

One correction to the library: S-measure's region term splits a frame into four quadrants at
the GT's centroid (+1, as the original MATLAB code does), so an object on the last column or
row leaves a quadrant with no pixels. That quadrant's weight is 0, but pysodmetrics 1.6 takes
the SSIM of the empty region as the mean of nothing (NaN), and one such frame made a whole
dataset's S NaN (objects leaving the view do this). ``_Smeasure`` scores an empty quadrant 0,
which its zero weight then drops: the value the definition gives.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import py_sod_metrics

METRIC_KEYS = ("s_measure", "e_measure_max", "e_measure_mean", "f_measure_max", "f_measure_adaptive", "mae")


def to_uint8_map(image: np.ndarray, name: str) -> np.ndarray:
    """A saliency map or GT as (H, W) uint8 0..255: float in [0, 1] -> x255 rounded,
    bool -> 0/255, uint8 unchanged."""
    if not isinstance(image, np.ndarray) or image.ndim != 2:
        raise ValueError(f"{name} must be an (H, W) numpy array, got "
                         f"{getattr(image, 'shape', type(image).__name__)}")
    if image.dtype == np.uint8:
        return image
    if image.dtype == bool:
        return image.astype(np.uint8) * 255
    if np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all() or image.min() < 0.0 or image.max() > 1.0:
            raise ValueError(f"{name} as float must be finite and in [0, 1], got range "
                             f"[{np.nanmin(image)}, {np.nanmax(image)}]")
        return np.rint(image * 255.0).astype(np.uint8)
    raise ValueError(f"{name} must be uint8 (0..255), bool or float in [0, 1], got dtype {image.dtype}")


class _Smeasure(py_sod_metrics.Smeasure):
    """pysodmetrics' S-measure with empty quadrants contributing nothing (module docstring)."""

    def ssim(self, pred: np.ndarray, gt: np.ndarray) -> float:
        return 0.0 if pred.size == 0 else super().ssim(pred, gt)


class SaliencyScorer:
    """Accumulates frames and gives the dataset-level metrics (averaged over frames)."""

    def __init__(self) -> None:
        self._s, self._e = _Smeasure(), py_sod_metrics.Emeasure()
        self._mae = py_sod_metrics.MAE()
        # FmeasureV2 is the maintained F-measure (the old class warns it will be removed)
        self._f = py_sod_metrics.FmeasureV2({"fm": py_sod_metrics.FmeasureHandler(
            with_dynamic=True, with_adaptive=True, beta=0.3)})
        self.frames = 0

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """pred: (H, W) probability (float [0, 1]) or uint8 map; gt: (H, W) uint8 0/255 or bool."""
        pred8, gt8 = to_uint8_map(pred, "prediction"), to_uint8_map(gt, "ground truth")
        if pred8.shape != gt8.shape:
            raise ValueError(f"prediction {pred8.shape} and ground truth {gt8.shape} must have the same (H, W)")
        for metric in (self._s, self._e, self._f, self._mae):
            metric.step(pred=pred8, gt=gt8)
        self.frames += 1

    def results(self) -> dict[str, float]:
        """{metric: value} for ``METRIC_KEYS`` plus ``frames``; raises if nothing was added."""
        if self.frames == 0:
            raise ValueError("no frames were scored (no prediction had a ground truth)")
        em = self._e.get_results()["em"]
        fm = self._f.get_results()["fm"]  # dynamic: (256,) curve over thresholds
        values = {
            "s_measure": self._s.get_results()["sm"],
            "e_measure_max": np.max(em["curve"]),
            "e_measure_mean": np.mean(em["curve"]),
            "f_measure_max": np.max(fm["dynamic"]),
            "f_measure_adaptive": fm["adaptive"],
            "mae": self._mae.get_results()["mae"],
        }
        return {**{k: float(v) for k, v in values.items()}, "frames": self.frames}


def score_frames(preds: Iterable[np.ndarray], gts: Iterable[np.ndarray]) -> dict[str, float]:
    """Score paired frames: {s_measure, e_measure_max, e_measure_mean, f_measure_max,
    f_measure_adaptive, mae, frames}. preds: (H, W) float [0, 1] or uint8; gts: uint8 0/255 or bool."""
    scorer = SaliencyScorer()
    preds, gts = list(preds), list(gts)
    if len(preds) != len(gts):
        raise ValueError(f"got {len(preds)} predictions but {len(gts)} ground truths")
    for pred, gt in zip(preds, gts):
        scorer.add(pred, gt)
    return scorer.results()
