"""The zero-shot conditioning mask: the most salient RGB-D candidate, SAM2-refined with real weights.

SAM2 faithfully tracks whatever it is given first, so the first mask decides the stream.
With metric depth the tracker proposes object candidates from the scene's geometry
(``proposals.py``) and conditions the memory on the best one; with a real SAM2 checkpoint
each candidate is also segmented by SAM2's own decoder, prompted at the candidate's most
interior point (all candidates in one batched call), so the mask snaps to the object's
boundaries, and SAM2's predicted IoU joins the score. When no candidate qualifies (no
metric depth, no support plane, nothing in the size band, a low score) the depth/centre
prior of ``prior.py`` is the fallback. ``Initialisation`` records what was chosen and why,
for the overlay, the ``saliency/candidates`` image and diagnostics.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import cv2
import numpy as np

from m4sam_ros.postprocess import CameraIntrinsics
from m4sam_ros.prior import PriorConfig, saliency_prior
from m4sam_ros.proposals import Candidate, ProposalConfig, Proposals, propose

__all__ = ["Initialisation", "Refiner", "SAM2_AGREEMENT", "SAM2_WEIGHT", "choose_initial_mask", "interior_point"]

# (candidate masks at the input size, interior points (N, 2) x, y in input pixels) ->
# (SAM2's masks (N, H, W) bool at the input size, predicted IoUs (N,))
Refiner = Callable[[list[np.ndarray], np.ndarray], tuple[np.ndarray, np.ndarray]]
SAM2_AGREEMENT = 0.5  # SAM2's mask replaces the geometric one when their IoU is at least this
SAM2_WEIGHT = 0.3  # share of SAM2's predicted IoU in a refined candidate's score


@dataclass
class Initialisation:
    """The conditioning mask of a zero-shot (re-)initialisation and how it was chosen."""

    mask: np.ndarray  # (H, W) bool at the input size
    rule: str  # "geometry: ...", "sam2: ...", or "prior: <why no candidate>"
    proposals: Proposals | None  # the candidates considered (None: no metric depth)


def interior_point(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) of the mask pixel farthest from its boundary: a point prompt surely inside it."""
    distance = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return float(x), float(y)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def _refined(proposals: Proposals, refine: Refiner, config: ProposalConfig) -> Proposals:
    """Candidates segmented again by SAM2 where it agrees with the geometry; re-scored with its IoU."""
    candidates = proposals.candidates
    points = np.array([interior_point(c.mask) for c in candidates], np.float32)
    masks, ious = refine([c.mask for c in candidates], points)
    refined = []
    for candidate, mask, iou in zip(candidates, masks, ious):
        scores = dict(candidate.scores, sam2_iou=float(iou))
        score = (1.0 - SAM2_WEIGHT) * candidate.score + SAM2_WEIGHT * float(iou)
        agrees = _iou(mask, candidate.mask) >= SAM2_AGREEMENT
        refined.append(Candidate(mask if agrees else candidate.mask, scores, score,
                                 "sam2" if agrees else candidate.origin))
    refined.sort(key=lambda c: -c.score)
    return replace(proposals, candidates=refined)


def choose_initial_mask(rgb: np.ndarray, depth_m: np.ndarray | None, depth_normalized: np.ndarray | None,
                        depth_valid: np.ndarray | None, intrinsics: CameraIntrinsics | None,
                        proposal_config: ProposalConfig, prior_config: PriorConfig, prior_threshold: float,
                        refine: Refiner | None = None) -> Initialisation:
    """The best qualifying candidate, else the prior thresholded (see the module docstring)."""
    height, width = rgb.shape[:2]
    proposals = None
    if depth_m is not None:
        proposals = propose(rgb, depth_m, intrinsics, proposal_config)
        if proposals.candidates and refine is not None:
            proposals = _refined(proposals, refine, proposal_config)
        best = proposals.best
        if best is not None and best.score >= proposal_config.min_score:
            source = "sam2" if best.origin == "sam2" else "geometry"
            return Initialisation(best.mask, f"{source}: best of {len(proposals.candidates)} candidates "
                                             f"({best.origin}, score {best.score:.2f})", proposals)
    why = proposals.rule if proposals is not None else "no metric depth"
    prior = saliency_prior(depth_normalized, depth_valid, (height, width), prior_config) >= prior_threshold
    return Initialisation(prior, f"prior: {why}", proposals)
