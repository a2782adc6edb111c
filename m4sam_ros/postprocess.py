"""Probability map -> binary mask -> salient objects with boxes, 3D position and stable IDs.

A robot acts on objects, not on pixels: each connected component of the thresholded
saliency map becomes an object with a 2D box, a score and, given metric depth and the
camera intrinsics, a 3D centroid and extent in the camera optical frame. IDs persist
across frames by mask overlap (Hungarian assignment), so a consumer can follow "object 3".

Depth must have the probability map's size: the caller knows whether a resize also needs
``CameraIntrinsics.scaled``, so a mismatch raises instead of guessing.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics in pixels of the image the depth is aligned to."""

    fx: float
    fy: float
    cx: float
    cy: float

    def __post_init__(self) -> None:
        if not all(np.isfinite([self.fx, self.fy, self.cx, self.cy])) or self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"CameraIntrinsics needs finite values and fx, fy > 0, got {self}")

    @classmethod
    def from_k(cls, k: Sequence[float]) -> "CameraIntrinsics":
        """From a 3x3 row-major K, as in sensor_msgs/CameraInfo.k."""
        values = [float(v) for v in k]
        if len(values) != 9:
            raise ValueError(f"K must have 9 values (3x3 row-major), got {len(values)}")
        return cls(fx=values[0], fy=values[4], cx=values[2], cy=values[5])

    def scaled(self, sx: float, sy: float) -> "CameraIntrinsics":
        """Intrinsics of the image resized by (sx, sy) = (new_w / old_w, new_h / old_h).

        Pixel centres sit at integer coordinates (ROS/OpenCV), and cv2.resize maps centres,
        so the principal point moves as (c + 0.5) * s - 0.5.
        """
        if sx <= 0 or sy <= 0:
            raise ValueError(f"scale factors must be > 0, got sx={sx}, sy={sy}")
        return CameraIntrinsics(fx=self.fx * sx, fy=self.fy * sy,
                                cx=(self.cx + 0.5) * sx - 0.5, cy=(self.cy + 0.5) * sy - 0.5)


@dataclass
class SalientObject:
    """One salient object of one frame; ``centroid is not None`` means it has 3D."""

    id: int
    score: float
    box: tuple[int, int, int, int]
    area: int
    age: int
    centroid: np.ndarray | None
    extent: np.ndarray | None


@dataclass(frozen=True)
class PostprocessConfig:
    """Settings of mask extraction, 3D estimation and ID matching.

    threshold: probability >= threshold is salient.
    min_area_fraction: components smaller than this fraction of the image are noise and dropped
        (from the objects and from the returned mask).
    max_objects: most objects reported, highest score first (the mask keeps all kept components).
    iou_match_threshold: least mask IoU for an object to keep a previous ID.
    max_missed_frames: frames an unmatched ID is remembered, so a one-frame dropout keeps its ID.
    depth_percentiles: robust range of back-projected points giving the extent.
    depth_bin_m / depth_gap_m: the object's own depth is the run of depth-histogram bins
        (``depth_bin_m`` wide) around the dominant one, crossing empty stretches no wider than
        ``depth_gap_m``: mask pixels at object edges that fall on a background further back
        (more of them than any percentile absorbs) are left out of centroid and extent.
    min_depth_pixels: fewer valid depth pixels in an object -> centroid/extent None.
    max_depth_points: valid pixels beyond this are subsampled evenly: a large object's
        median needs no more, and the cost stays bounded per object.
    """

    threshold: float = 0.5
    min_area_fraction: float = 0.001
    max_objects: int = 10
    iou_match_threshold: float = 0.3
    max_missed_frames: int = 2
    depth_percentiles: tuple[float, float] = (5.0, 95.0)
    depth_bin_m: float = 0.02
    depth_gap_m: float = 0.06
    min_depth_pixels: int = 10
    max_depth_points: int = 4096

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"PostprocessConfig.threshold must be in (0, 1), got {self.threshold}")
        if not 0.0 <= self.min_area_fraction < 1.0:
            raise ValueError(f"PostprocessConfig.min_area_fraction must be in [0, 1), got {self.min_area_fraction}")
        if self.max_objects < 1:
            raise ValueError(f"PostprocessConfig.max_objects must be >= 1, got {self.max_objects}")
        if not 0.0 < self.iou_match_threshold <= 1.0:
            raise ValueError(f"PostprocessConfig.iou_match_threshold must be in (0, 1], got {self.iou_match_threshold}")
        if self.max_missed_frames < 0:
            raise ValueError(f"PostprocessConfig.max_missed_frames must be >= 0, got {self.max_missed_frames}")
        low, high = self.depth_percentiles
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(f"PostprocessConfig.depth_percentiles must satisfy 0 <= low < high <= 100, "
                             f"got {self.depth_percentiles}")
        if not 0.0 < self.depth_bin_m <= self.depth_gap_m:
            raise ValueError(f"PostprocessConfig needs 0 < depth_bin_m <= depth_gap_m, got {self.depth_bin_m}, "
                             f"{self.depth_gap_m}")
        if self.min_depth_pixels < 1:
            raise ValueError(f"PostprocessConfig.min_depth_pixels must be >= 1, got {self.min_depth_pixels}")
        if self.max_depth_points < self.min_depth_pixels:
            raise ValueError(f"PostprocessConfig.max_depth_points must be >= min_depth_pixels ({self.min_depth_pixels}), "
                             f"got {self.max_depth_points}")


@dataclass
class _Region:
    """A mask cropped to its box: keeps per-object work proportional to the object, not the image."""

    box: tuple[int, int, int, int]  # x, y, width, height
    mask: np.ndarray  # (height, width) bool
    area: int

    def iou(self, other: "_Region") -> float:
        ax, ay, aw, ah = self.box
        bx, by, bw, bh = other.box
        x0, y0, x1, y1 = max(ax, bx), max(ay, by), min(ax + aw, bx + bw), min(ay + ah, by + bh)
        if x0 >= x1 or y0 >= y1:
            return 0.0
        mine = self.mask[y0 - ay:y1 - ay, x0 - ax:x1 - ax]  # the boxes' overlap, in each crop
        theirs = other.mask[y0 - by:y1 - by, x0 - bx:x1 - bx]
        inter = np.count_nonzero(mine & theirs)
        return inter / (self.area + other.area - inter)


@dataclass
class _Track:
    """What ID matching remembers of an object: its last region and when it was first seen."""

    id: int
    first_frame: int
    region: _Region
    missed: int = 0


def dominant_depth_range(z: np.ndarray, bin_m: float, gap_m: float) -> tuple[float, float]:
    """(near, far) metres of the depth run holding the most points: the histogram bin with most
    points, grown both ways across empty stretches up to ``gap_m``. An object's surface is a
    contiguous run; a background seen past its edges lies beyond a gap."""
    low = float(z.min())
    bins = np.floor((z - low) / bin_m).astype(np.int64)
    counts = np.bincount(bins)
    occupied = np.flatnonzero(counts)
    mode = int(np.argmax(counts))
    max_gap = int(np.floor(gap_m / bin_m))
    position = int(np.searchsorted(occupied, mode))
    first = last = position
    while first > 0 and occupied[first] - occupied[first - 1] - 1 <= max_gap:
        first -= 1
    while last < len(occupied) - 1 and occupied[last + 1] - occupied[last] - 1 <= max_gap:
        last += 1
    return low + occupied[first] * bin_m, low + (occupied[last] + 1) * bin_m


def object_geometry(region_mask: np.ndarray, depth_m: np.ndarray, intrinsics: CameraIntrinsics,
                    origin: tuple[int, int], config: PostprocessConfig) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Median 3D point and robust percentile extent of a mask's own depth, camera optical frame.

    region_mask and depth_m are the same crop, whose top-left pixel is ``origin`` = (x, y) in
    the image. Only the object's own depth counts (``dominant_depth_range``: edge pixels on the
    background are left out), and the median and percentiles shrug off flying pixels, where
    depth sensors mix foreground and background. Returns (None, None) below
    ``min_depth_pixels``; beyond ``max_depth_points`` valid pixels that many are taken evenly
    spaced in raster order. (A spatial grid would not do: sparse depth - aligned from a
    lower-resolution sensor, or projected lidar - can have its valid pixels exactly between
    the grid's points.)
    """
    valid = region_mask & np.isfinite(depth_m) & (depth_m > 0)
    count = int(np.count_nonzero(valid))
    if count < config.min_depth_pixels:
        return None, None
    vs, us = np.nonzero(valid)
    if count > config.max_depth_points:
        keep = np.linspace(0, count - 1, config.max_depth_points).astype(np.int64)
        vs, us = vs[keep], us[keep]
    z = depth_m[vs, us].astype(np.float64)
    near, far = dominant_depth_range(z, config.depth_bin_m, config.depth_gap_m)
    own = (z >= near) & (z < far)
    if int(np.count_nonzero(own)) < config.min_depth_pixels:
        return None, None
    vs, us, z = vs[own], us[own], z[own]
    x = (us + origin[0] - intrinsics.cx) * z / intrinsics.fx
    y = (vs + origin[1] - intrinsics.cy) * z / intrinsics.fy
    points = np.stack([x, y, z], axis=1)  # (N, 3)
    percentiles = config.depth_percentiles
    low, median, high = np.percentile(points, (percentiles[0], 50.0, percentiles[1]), axis=0)  # 3 x (3,)
    return median, high - low


def salient_points(mask: np.ndarray, depth_m: np.ndarray, rgb: np.ndarray, intrinsics: CameraIntrinsics,
                   decimation: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The salient pixels with valid depth, back-projected: (N, 3) float32 xyz metres in the
    camera optical frame and their (N, 3) uint8 RGB. Every ``decimation``-th pixel in each
    direction, so a grasp planner's cloud stays small."""
    if decimation < 1:
        raise ValueError(f"decimation must be >= 1, got {decimation}")
    if not mask.shape == depth_m.shape == rgb.shape[:2]:
        raise ValueError(f"mask {mask.shape}, depth {depth_m.shape} and rgb {rgb.shape} must share (H, W)")
    step = slice(None, None, decimation)
    sub_mask, sub_depth = mask[step, step], depth_m[step, step]
    vs, us = np.nonzero((sub_mask > 0) & np.isfinite(sub_depth) & (sub_depth > 0))
    z = sub_depth[vs, us].astype(np.float32)
    vs, us = vs * decimation, us * decimation
    x = (us - np.float32(intrinsics.cx)) * z / np.float32(intrinsics.fx)
    y = (vs - np.float32(intrinsics.cy)) * z / np.float32(intrinsics.fy)
    return np.stack([x, y, z], axis=1).astype(np.float32), rgb[vs, us]


class ObjectExtractor:
    """Turns per-frame probability maps into objects and keeps their IDs (owns that state)."""

    def __init__(self, config: PostprocessConfig = PostprocessConfig()):
        self.config = config
        self.reset()

    def reset(self) -> None:
        """Forget all tracks; the next ID starts again at 1."""
        self._tracks: list[_Track] = []
        self._next_id = 1
        self._frame = 0
        self._shape: tuple[int, int] | None = None

    def __call__(self, probability: np.ndarray, depth_m: np.ndarray | None,
                 intrinsics: CameraIntrinsics | None) -> tuple[np.ndarray, list[SalientObject]]:
        """probability (H, W) float32 in [0,1] -> (mask (H, W) uint8 0/1, objects).

        NaN probability counts as not salient. depth_m: (H, W) metres with NaN holes
        (``depth_to_metres``), or None for 2D only; 3D also needs ``intrinsics``.
        """
        self._check(probability, depth_m)
        cfg = self.config
        if probability.shape != self._shape:
            self._tracks = []  # resolution changed: old masks cannot be compared; IDs keep counting up
            self._shape = probability.shape
        count, labels, stats, _ = cv2.connectedComponentsWithStats((probability >= cfg.threshold).astype(np.uint8),
                                                                   connectivity=8)
        min_area = max(1, int(np.ceil(cfg.min_area_fraction * probability.size)))
        keep = stats[:, cv2.CC_STAT_AREA] >= min_area  # (count,)
        keep[0] = False  # background
        mask = keep[labels].astype(np.uint8)

        candidates = []  # (score, label, region)
        for label in np.flatnonzero(keep):
            x, y, w, h, area = (int(v) for v in stats[label])
            region = _Region((x, y, w, h), labels[y:y + h, x:x + w] == label, area)
            score = float(probability[y:y + h, x:x + w][region.mask].mean())
            candidates.append((score, int(label), region))
        candidates.sort(key=lambda c: (-c[0], c[1]))
        candidates = candidates[: cfg.max_objects]
        tracks = self._assign_ids([region for _, _, region in candidates])

        objects = []
        for (score, _, region), track in zip(candidates, tracks):
            centroid = extent = None
            if depth_m is not None and intrinsics is not None:
                x, y, w, h = region.box
                centroid, extent = object_geometry(region.mask, depth_m[y:y + h, x:x + w], intrinsics, (x, y), cfg)
            objects.append(SalientObject(id=track.id, score=score, box=region.box, area=region.area,
                                         age=self._frame - track.first_frame, centroid=centroid, extent=extent))
        self._frame += 1
        return mask, objects

    @staticmethod
    def _check(probability: np.ndarray, depth_m: np.ndarray | None) -> None:
        if not isinstance(probability, np.ndarray) or probability.ndim != 2:
            raise ValueError(f"probability must be an (H, W) numpy array, got "
                             f"{getattr(probability, 'shape', type(probability).__name__)}")
        if not np.issubdtype(probability.dtype, np.floating):
            raise ValueError(f"probability must be float in [0, 1], got dtype {probability.dtype}")
        if depth_m is not None and not np.issubdtype(depth_m.dtype, np.floating):
            raise ValueError(f"depth_m must be float metres with NaN holes (see depth.depth_to_metres), "
                             f"got dtype {depth_m.dtype}")
        if depth_m is not None and depth_m.shape != probability.shape:
            raise ValueError(f"depth_m shape {depth_m.shape} differs from probability shape {probability.shape}; "
                             "resize depth (nearest) and scale the intrinsics with CameraIntrinsics.scaled first")

    def _assign_ids(self, regions: list[_Region]) -> list[_Track]:
        """Match regions to tracks by mask IoU (Hungarian); unmatched regions start new tracks.

        Tracks unmatched for more than ``max_missed_frames`` frames are forgotten.
        """
        iou = np.array([[track.region.iou(region) for region in regions] for track in self._tracks])
        matched: dict[int, _Track] = {}  # region index -> track
        if iou.size:
            for t, r in zip(*linear_sum_assignment(iou, maximize=True)):
                if iou[t, r] >= self.config.iou_match_threshold:
                    matched[int(r)] = self._tracks[t]
        seen = {id(track) for track in matched.values()}
        survivors = []
        for track in self._tracks:
            if id(track) not in seen:
                track.missed += 1
                if track.missed <= self.config.max_missed_frames:
                    survivors.append(track)
        result = []
        for index, region in enumerate(regions):
            track = matched.get(index)
            if track is None:
                track = _Track(id=self._next_id, first_frame=self._frame, region=region)
                self._next_id += 1
            track.region, track.missed = region, 0
            survivors.append(track)
            result.append(track)
        self._tracks = survivors
        return result
