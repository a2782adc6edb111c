"""The human view: the RGB frame with salient pixels tinted and each object boxed and labelled."""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from m4sam_ros.initialisation import Initialisation
from m4sam_ros.postprocess import SalientObject

__all__ = ["render_candidates", "render_overlay"]

TINT_BGR = np.array([0, 200, 255], dtype=np.float32)  # amber: readable over most scenes


def render_overlay(rgb: np.ndarray, mask: np.ndarray, objects: Sequence[SalientObject],
                   alpha: float = 0.5) -> np.ndarray:
    """rgb (H, W, 3) uint8 RGB, mask (H, W) 0/1 -> (H, W, 3) uint8 BGR (bgr8)."""
    if rgb.shape[:2] != mask.shape:
        raise ValueError(f"overlay needs mask of the RGB size {rgb.shape[:2]}, got {mask.shape}")
    # always a copy: for bgr8 input rgb[..., ::-1] is a contiguous view of the received message,
    # which ascontiguousarray would return as is and the drawing below would overwrite
    bgr = np.array(rgb[..., ::-1], order="C", copy=True)
    salient = mask.astype(bool)
    if alpha > 0 and salient.any():
        blended = bgr[salient].astype(np.float32) * (1.0 - alpha) + TINT_BGR * alpha  # (N, 3)
        bgr[salient] = blended.astype(np.uint8)
    for obj in objects:
        x, y, w, h = obj.box
        cv2.rectangle(bgr, (x, y), (x + w - 1, y + h - 1), (0, 255, 0), 1)
        cv2.putText(bgr, f"#{obj.id} {obj.score:.2f}", (x, max(y - 3, 8)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.35, (0, 255, 0), 1, cv2.LINE_AA)
    return bgr


def draw_candidates(bgr: np.ndarray, initialisation: Initialisation, limit: int = 8) -> np.ndarray:
    """Outline the initialisation's candidates (thin, best first) and the chosen mask (thick)
    on ``bgr`` in place, with the rule that chose it; returns ``bgr``."""
    proposals = initialisation.proposals
    for candidate in (proposals.candidates[:limit] if proposals is not None else []):
        contours, _ = cv2.findContours(candidate.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(bgr, contours, -1, (255, 160, 0), 1)
    contours, _ = cv2.findContours(initialisation.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(bgr, contours, -1, (0, 0, 255), 2)
    cv2.putText(bgr, initialisation.rule[:60], (3, bgr.shape[0] - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 255), 1,
                cv2.LINE_AA)
    return bgr


def render_candidates(rgb: np.ndarray, initialisation: Initialisation) -> np.ndarray:
    """The ``saliency/candidates`` view: rgb (H, W, 3) uint8 RGB -> (H, W, 3) uint8 BGR with the
    candidates, the chosen mask and the rule."""
    return draw_candidates(np.array(rgb[..., ::-1], order="C", copy=True), initialisation)
