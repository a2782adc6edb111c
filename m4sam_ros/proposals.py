"""Candidate object masks from RGB-D geometry, scored for saliency: the first mask worth tracking.

A table-top robot always has metric depth. Objects stand on a support (a table, a tray, a
pedestal), so:

1. the **support plane** is fit robustly (RANSAC over back-projected points) among the
   scene's big planes, preferring the one whose normal points up in the camera frame (a
   wall or the floor seen past the table's edge would otherwise win by size);
2. the points **above it** (between ``min_height_m`` and ``max_height_m``) whose foot lies on
   the support (inside the convex hull of its inliers, in the plane's own coordinates: walls
   rising behind the table project outside it) are the object points;
3. they are **split at depth discontinuities** into connected regions; a region holding a
   wide horizontal face (a pedestal's or a box's top, a tray's floor) with points above it
   adds those points as a candidate of their own: the object *on* the pedestal;
4. each candidate gets a **saliency score** (``score_candidate``): depth contrast to its
   surroundings, nearness to the image centre, a size band, compactness (solidity), and how
   little of it the image border cuts off; with real SAM2 weights the tracker adds SAM2's
   own mask and its predicted IoU (``M4SAM.masks_from_points``).

The work runs on a small grid (``work_size``) and the masks come back at the input size.
Intrinsics are optional: a pinhole with a wrong focal length maps planes to planes, so the
plane fit and the heights' signs hold with the default focal length too.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import cv2
import numpy as np

from m4sam_ros.postprocess import CameraIntrinsics

__all__ = ["Candidate", "Proposals", "ProposalConfig", "propose"]


@dataclass(frozen=True)
class ProposalConfig:
    """Settings of the geometric proposals (see the module docstring for what each step does).

    work_size: longer side of the grid the geometry runs on.
    plane_hypotheses / plane_points: RANSAC hypotheses and the points they are scored on.
    plane_tolerance_m / plane_tolerance_rel: inlier distance = this + rel x depth (noise grows with depth).
    planes: big planes detected (support candidates and walls).
    min_height_m / max_height_m: object points lie this far above the support.
    max_object_height_m: a big up-facing plane may be an object's top face when a parallel plane
        lies at most this far below it; that one is then the support.
    edge_jump_rel: neighbouring depths differing by more than this fraction are a discontinuity.
    min_area / max_area: candidate area as a fraction of the image.
    face_fraction: a horizontal face holding this share of a region's points may carry objects.
    wall_angle_deg: a big plane this close to perpendicular to the support is a wall: its points are background.
    min_rise_m / min_rise_ratio: what stands on a face rises at least this much (and this share of the
        face's own height) above it; smaller bumps are part of the object the face belongs to.
    same_colour: chromaticity distance (r, g of r+g+b: shading scales a surface's colour, the
        ratios stay) below which a standing part has the face's paint, so belongs to its object.
    weights: of the scores contrast, centre, size, compactness, inside (sum 1).
    size_target / size_spread: the size band, a Gaussian in log area around this fraction.
    centre_sigma: of the centre score, in half-diagonals.
    min_score: a best candidate below this does not qualify (the depth/centre prior is used).
    """

    work_size: int = 160
    plane_hypotheses: int = 256
    plane_points: int = 2500
    plane_tolerance_m: float = 0.008
    plane_tolerance_rel: float = 0.01
    planes: int = 3
    min_height_m: float = 0.012
    max_height_m: float = 0.5
    max_object_height_m: float = 0.3
    edge_jump_rel: float = 0.03
    min_area: float = 0.002
    max_area: float = 0.6
    face_fraction: float = 0.2
    weights: dict[str, float] = field(default_factory=lambda: {
        "contrast": 0.25, "centre": 0.35, "size": 0.15, "compactness": 0.15, "inside": 0.10})
    size_target: float = 0.04
    size_spread: float = 1.2
    centre_sigma: float = 0.45
    min_score: float = 0.35
    wall_angle_deg: float = 30.0
    min_rise_m: float = 0.03
    min_rise_ratio: float = 0.3
    same_colour: float = 0.04

    def __post_init__(self) -> None:
        if self.work_size < 16 or self.plane_hypotheses < 1 or self.plane_points < 3 or self.planes < 1:
            raise ValueError(f"ProposalConfig needs work_size >= 16, plane_hypotheses >= 1, plane_points >= 3, "
                             f"planes >= 1; got {self.work_size}, {self.plane_hypotheses}, {self.plane_points}, "
                             f"{self.planes}")
        if not 0.0 <= self.min_height_m < self.max_height_m:
            raise ValueError(f"need 0 <= min_height_m < max_height_m, got {self.min_height_m}, {self.max_height_m}")
        if not 0.0 < self.min_area < self.max_area <= 1.0:
            raise ValueError(f"need 0 < min_area < max_area <= 1, got {self.min_area}, {self.max_area}")
        if set(self.weights) != {"contrast", "centre", "size", "compactness", "inside"} or \
                abs(sum(self.weights.values()) - 1.0) > 1e-6:
            raise ValueError(f"weights must give contrast, centre, size, compactness, inside summing to 1, "
                             f"got {self.weights}")


@dataclass
class Candidate:
    """One candidate object at the input size: its mask, score parts and total."""

    mask: np.ndarray  # (H, W) bool
    scores: dict[str, float]  # contrast, centre, size, compactness, inside (and sam2_iou once refined)
    score: float
    origin: str  # "region" (split at discontinuities) or "on_face" (above a horizontal face) or "sam2"


@dataclass
class Proposals:
    """The candidates of one frame, best first, and what the support plane was."""

    candidates: list[Candidate]
    support: tuple[np.ndarray, float] | None  # (unit normal pointing up, offset): n.x + d = height
    rule: str  # why the choice is what it is, for logs and diagnostics

    @property
    def best(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None


def _work_shape(shape: tuple[int, int], size: int) -> tuple[int, int]:
    scale = min(1.0, size / max(shape))
    return max(8, round(shape[0] * scale)), max(8, round(shape[1] * scale))


def _points(depth: np.ndarray, intrinsics: CameraIntrinsics, scale: tuple[float, float]) -> np.ndarray:
    """(h, w, 3) back-projected points of the work grid (NaN where depth is a hole)."""
    h, w = depth.shape
    sx, sy = scale
    k = intrinsics.scaled(sx, sy)
    us, vs = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return np.stack([(us - k.cx) * depth / k.fx, (vs - k.cy) * depth / k.fy, depth], axis=-1)


def _fit_planes(points: np.ndarray, config: ProposalConfig, rng: np.random.Generator) -> list[tuple[np.ndarray, float, np.ndarray]]:
    """Up to ``config.planes`` planes by sequential RANSAC: (unit normal, offset, inlier mask (N,))."""
    remaining = np.ones(len(points), bool)
    tolerance = config.plane_tolerance_m + config.plane_tolerance_rel * points[:, 2]
    planes = []
    for _ in range(config.planes):
        pool = np.flatnonzero(remaining)
        if len(pool) < max(50, int(0.03 * len(points))):
            break
        sample = points[rng.choice(pool, size=min(config.plane_points, len(pool)), replace=False)]
        triples = sample[rng.integers(0, len(sample), size=(config.plane_hypotheses, 3))]  # (K, 3, 3)
        normals = np.cross(triples[:, 1] - triples[:, 0], triples[:, 2] - triples[:, 0])
        lengths = np.linalg.norm(normals, axis=1)
        good = lengths > 1e-9
        if not good.any():
            break
        normals = normals[good] / lengths[good, None]
        offsets = -np.einsum("kd,kd->k", normals, triples[good, 0])
        sample_tol = config.plane_tolerance_m + config.plane_tolerance_rel * sample[:, 2]
        counts = (np.abs(sample @ normals.T + offsets) < sample_tol[:, None]).sum(0)  # (K,)
        normal, offset = normals[np.argmax(counts)], offsets[np.argmax(counts)]
        inliers = remaining & (np.abs(points @ normal + offset) < tolerance)
        normal, offset = _refit(points[inliers], normal, offset)  # least squares on the inliers
        inliers = remaining & (np.abs(points @ normal + offset) < tolerance)
        if inliers.sum() < 0.03 * len(points):
            break
        planes.append((normal, offset, inliers))
        remaining &= ~inliers
    return planes


def _refit(points: np.ndarray, normal: np.ndarray, offset: float) -> tuple[np.ndarray, float]:
    if len(points) < 3:
        return normal, offset
    centre = points.mean(0)
    refined = np.linalg.svd(points - centre, full_matrices=False)[2][-1]
    refined = refined if refined @ normal >= 0 else -refined
    return refined, float(-refined @ centre)


def _walls(planes: list, normal: np.ndarray, heights: np.ndarray, supported: np.ndarray,
           config: ProposalConfig) -> np.ndarray | None:
    """Inliers (N,) of the big planes that are walls: (nearly) perpendicular to the support and
    reaching beyond it - much of it higher than any object stands or with its foot off the
    support. A wall right behind the table's edge passes the footprint test; a big object's
    front face is upright too, but it stands on the support, below ``max_height_m``."""
    limit = np.sin(np.radians(config.wall_angle_deg))
    walls = [inliers for other, _, inliers in planes if abs(float(other @ normal)) < limit
             and np.mean((heights[inliers] > config.max_height_m) | ~supported[inliers]) > 0.3]
    return np.logical_or.reduce(walls) if walls else None


def _support(planes: list, config: ProposalConfig) -> tuple[np.ndarray, float, np.ndarray] | None:
    """The support among the planes. The lead is the plane with most inliers, weighted by how
    much its normal points up (camera optical frame: y down) and by nearness (a floor seen past
    a table's edge is further away than the table). From the lead, the support steps down to a
    parallel plane at most ``max_object_height_m`` lower, as long as there is one: the lead may
    be a big object's top face, standing on the table. The normal is oriented toward the camera."""
    up = np.array([0.0, -1.0, 0.0])
    oriented = [(n, d, inliers) if d >= 0 else (-n, -d, inliers) for n, d, inliers in planes]
    if not oriented:
        return None
    support = max(oriented, key=lambda p: p[2].sum() * (0.5 + max(0.0, float(p[0] @ up))) / (p[1] + 0.5))
    while True:
        lower = [p for p in oriented if float(p[0] @ support[0]) > np.cos(np.radians(15.0))
                 and support[1] < p[1] <= support[1] + config.max_object_height_m]
        if not lower:
            return support
        support = max(lower, key=lambda p: p[1])


def _plane_axes(normal: np.ndarray) -> np.ndarray:
    """(2, 3) orthonormal axes spanning the plane."""
    helper = np.array([1.0, 0.0, 0.0]) if abs(normal[0]) < 0.9 else np.array([0.0, 0.0, 1.0])
    first = np.cross(normal, helper)
    first /= np.linalg.norm(first)
    return np.stack([first, np.cross(normal, first)])


def _on_support(points: np.ndarray, normal: np.ndarray, inliers: np.ndarray) -> np.ndarray:
    """Which points' feet (projection onto the plane) fall inside the convex hull of the inliers."""
    flat = points @ _plane_axes(normal).T  # (N, 2)
    hull = cv2.convexHull(flat[inliers].astype(np.float32))[:, 0].astype(np.float64)  # (M, 2), a closed polygon
    edges = np.roll(hull, -1, axis=0) - hull
    cross = edges[:, 0] * (flat[:, None, 1] - hull[:, 1]) - edges[:, 1] * (flat[:, None, 0] - hull[:, 0])  # (N, M)
    orientation = np.sign(np.sum(hull[:, 0] * np.roll(hull[:, 1], -1) - np.roll(hull[:, 0], -1) * hull[:, 1]))
    return np.all(cross * orientation >= -1e-9, axis=1)


def _neighbourhood_median(depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(3 x 3 median over the valid neighbours, how many were valid) per pixel."""
    padded = np.pad(depth, 1, constant_values=np.nan)
    h, w = depth.shape
    stack = np.stack([padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)])
    stack = np.where(np.isfinite(stack) & (stack > 0), stack, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-hole neighbourhood stays a hole
        return np.nanmedian(stack, axis=0), np.isfinite(stack).sum(0)


def _clean_depth(depth: np.ndarray) -> np.ndarray:
    """Isolated outliers (speckle) removed by a 3 x 3 median, and holes inside surfaces filled
    from their neighbours, three times: dark and shiny surfaces lose much of their depth, and
    both would otherwise cut an object into fragments."""
    valid = np.isfinite(depth) & (depth > 0)
    median, _ = _neighbourhood_median(depth)
    depth = np.where(valid, median, np.nan).astype(np.float32)
    for _ in range(3):
        median, count = _neighbourhood_median(depth)
        # half the neighbours valid: inside a surface, not beside a straight outline (3 of 8)
        depth = np.where(np.isfinite(depth), depth, np.where(count >= 4, median, np.nan)).astype(np.float32)
    return depth


def _discontinuities(depth: np.ndarray, jump: float) -> np.ndarray:
    """Pixels next to a neighbour whose depth differs by more than ``jump`` of their own."""
    edges = np.zeros(depth.shape, bool)
    for axis in (0, 1):
        a = depth.take(np.arange(depth.shape[axis] - 1), axis=axis)
        b = depth.take(np.arange(1, depth.shape[axis]), axis=axis)
        with np.errstate(invalid="ignore"):
            cut = np.abs(a - b) > jump * np.minimum(a, b)
        pad = [(0, 0), (0, 0)]
        pad[axis] = (0, 1)
        edges |= np.pad(cut, pad)
        pad[axis] = (1, 0)
        edges |= np.pad(cut, pad)
    return edges


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with the holes it encloses filled: depth sensors lose dark and shiny surfaces,
    which would otherwise punch holes in (or split) an object."""
    padded = np.pad(mask.astype(np.uint8), 1)
    outside = padded.copy()
    cv2.floodFill(outside, None, (0, 0), 1)
    return (mask | (outside[1:-1, 1:-1] == 0))


def _regions(above: np.ndarray, edges: np.ndarray) -> list[np.ndarray]:
    """Connected regions of ``above`` split at ``edges``, each grown back over its own edge pixels
    and with its enclosed holes filled."""
    count, labels = cv2.connectedComponents((above & ~edges).astype(np.uint8), connectivity=4)
    kernel = np.ones((3, 3), np.uint8)
    regions = []
    for label in range(1, count):
        region = labels == label
        grown = cv2.dilate(region.astype(np.uint8), kernel) > 0
        regions.append(_fill_holes(region | (grown & above & edges)))
    return regions


def _standing_on_faces(region: np.ndarray, height: np.ndarray, chroma: np.ndarray,
                       config: ProposalConfig) -> list[np.ndarray]:
    """The parts of ``region`` standing on a wide horizontal face inside it - an object on a
    pedestal, a box or a tray's floor - each a connected part; [] when the region holds no
    such face with something on it (then the region is itself the object). What rises less
    than ``min_rise_*`` above the face, or has the face's own colour, is part of the face's
    object (studs on a brick, a fin on a toy), not something standing on it."""
    heights = height[region & np.isfinite(height)]
    if len(heights) < 20:
        return []
    bins = np.arange(heights.min(), heights.max() + 0.02, 0.01)
    counts, edges = np.histogram(heights, bins)
    face = int(np.argmax(counts))
    if face == len(counts) - 1 or counts[face] < config.face_fraction * len(heights):
        return []  # no face, or the face is the region's top: nothing stands on it
    face_height = float(edges[face + 1])
    face_colour = np.median(chroma[region & (height >= edges[face]) & (height <= face_height)], axis=0)
    standing = region & (height > face_height + config.min_height_m)
    count, labels = cv2.connectedComponents(standing.astype(np.uint8), connectivity=8)
    rise = max(config.min_rise_m, config.min_rise_ratio * face_height)  # studs on a brick are part of it
    parts = []
    for label in range(1, count):
        part = labels == label
        if part.sum() < 10 or np.nanmax(height[part]) - face_height < rise:
            continue
        if np.linalg.norm(np.median(chroma[part], axis=0) - face_colour) < config.same_colour:
            continue
        parts.append(_fill_holes(part))
    return parts


def score_candidate(mask: np.ndarray, depth: np.ndarray, height: np.ndarray, config: ProposalConfig) -> dict[str, float]:
    """The saliency score parts of a (h, w) candidate on the work grid, each in [0, 1]:

    contrast: how much nearer it is than the ring around it, relative to its depth (x 0.15);
    centre: Gaussian of its centroid's distance to the image centre (in half-diagonals);
    size: Gaussian of log(area fraction) around ``size_target``;
    compactness: solidity, area over convex-hull area (an arm or a shelf edge is not compact);
    inside: 1 minus the larger of the share of its outline on the image border and the share
        of its points near the height ceiling: cut off by the view or part of something taller
        than objects stand (a robot arm, a shelf), likely not the subject.
    """
    h, w = mask.shape
    area = float(mask.sum())
    ring = (cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0) & ~mask & np.isfinite(depth)
    own = np.nanmedian(depth[mask]) if np.isfinite(depth[mask]).any() else np.nan
    around = np.median(depth[ring]) if ring.any() else own
    contrast = float(np.clip((around - own) / (0.15 * own), 0.0, 1.0)) if np.isfinite(own) else 0.0
    ys, xs = np.nonzero(mask)
    distance = np.hypot((xs.mean() + 0.5) / w - 0.5, (ys.mean() + 0.5) / h - 0.5) / np.hypot(0.5, 0.5)
    centre = float(np.exp(-0.5 * (distance / config.centre_sigma) ** 2))
    size = float(np.exp(-0.5 * (np.log(area / (h * w) / config.size_target) / config.size_spread) ** 2))
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    outline = np.concatenate(contours)[:, 0] if contours else np.zeros((0, 2), int)
    hull_area = cv2.contourArea(cv2.convexHull(outline)) if len(outline) >= 3 else area
    compactness = float(np.clip(area / max(hull_area, 1.0), 0.0, 1.0))
    on_border = ((outline[:, 0] == 0) | (outline[:, 0] == w - 1) | (outline[:, 1] == 0) | (outline[:, 1] == h - 1))
    tall = float(np.mean(height[mask] > 0.8 * config.max_height_m))
    inside = 1.0 - max(float(on_border.mean()) if len(outline) else 1.0, tall)
    return {"contrast": contrast, "centre": centre, "size": size, "compactness": compactness, "inside": inside}


def _total(scores: dict[str, float], config: ProposalConfig) -> float:
    return float(sum(config.weights[k] * scores[k] for k in config.weights))


def propose(rgb: np.ndarray, depth_m: np.ndarray, intrinsics: CameraIntrinsics | None = None,
            config: ProposalConfig = ProposalConfig(), seed: int = 0) -> Proposals:
    """Candidate masks at the size of the frame, best first: rgb (H, W, 3) uint8 and depth_m
    (H, W) metres with NaN holes, aligned.

    ``intrinsics`` of that image (None: a 58 degree horizontal field of view); ``seed`` makes
    the plane fit deterministic (the same frame always gives the same candidates)."""
    full_h, full_w = depth_m.shape
    h, w = _work_shape((full_h, full_w), config.work_size)
    colour = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
    chroma = colour[..., :2] / np.maximum(colour.sum(-1, keepdims=True), 1.0)  # (h, w, 2) r, g chromaticity
    depth = _clean_depth(cv2.resize(depth_m.astype(np.float32), (w, h), interpolation=cv2.INTER_NEAREST))
    if intrinsics is None:
        intrinsics = CameraIntrinsics(fx=0.9 * full_w, fy=0.9 * full_w, cx=(full_w - 1) / 2, cy=(full_h - 1) / 2)
    grid = _points(depth, intrinsics, (w / full_w, h / full_h))  # (h, w, 3)
    valid = np.isfinite(depth) & (depth > 0)
    if valid.sum() < 0.05 * h * w:
        return Proposals([], None, "no candidate: too little valid depth")
    points = grid[valid]
    planes = _fit_planes(points, config, np.random.default_rng(seed))
    support = _support(planes, config)
    if support is None:
        return Proposals([], None, "no candidate: no support plane in the depth")
    normal, offset, inliers = support
    height = np.full((h, w), np.nan, np.float32)
    height[valid] = points @ normal + offset
    above = np.zeros((h, w), bool)
    lifted = (height[valid] > config.min_height_m) & (height[valid] < config.max_height_m)
    supported = _on_support(points, normal, inliers)
    walls = _walls(planes, normal, height[valid], supported, config)
    above[valid] = lifted & supported & (True if walls is None else ~walls)
    edges = _discontinuities(depth, config.edge_jump_rel)
    masks: list[tuple[np.ndarray, str]] = []
    for region in _regions(above, edges):
        standing = _standing_on_faces(region, height, chroma, config)  # a support in turn: what stands on it counts
        masks += [(part, "on_face") for part in standing] if standing else [(region, "region")]
    candidates = []
    for mask, origin in masks:
        fraction = mask.sum() / (h * w)
        if not config.min_area <= fraction <= config.max_area:
            continue
        scores = score_candidate(mask, depth, height, config)
        full = cv2.resize(mask.astype(np.uint8), (full_w, full_h), interpolation=cv2.INTER_NEAREST) > 0
        candidates.append(Candidate(full, scores, _total(scores, config), origin))
    candidates.sort(key=lambda c: -c.score)
    if not candidates:
        return Proposals([], (normal, offset), "no candidate: nothing stands on the support plane in the size band")
    best = candidates[0]
    if best.score < config.min_score:
        return Proposals(candidates, (normal, offset), f"no candidate qualifies (best score {best.score:.2f} < "
                                                       f"{config.min_score:.2f})")
    return Proposals(candidates, (normal, offset), f"geometry: best of {len(candidates)} candidates "
                                                   f"({best.origin}, score {best.score:.2f})")
