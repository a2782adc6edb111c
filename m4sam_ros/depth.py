"""The one depth normalisation shared by the tracker, training, evaluation and the node.

The model must see depth the way it saw it in training. Benchmarks (RDVS, ViDSOD-100,
DViSal and the RGB-D SOD sets before them) ship 8-bit depth PNGs where *near is bright*
(255 = nearest, 0 = farthest or unknown); cameras publish 16UC1 millimetres or 32FC1
metres with 0/NaN holes. Metric depth is mapped linearly over a fixed range
``[min_m, max_m]`` (not per-frame min-max, which would flicker in video) so that both
sources land in the same [0, 1] picture.

Holes are filled with the *far* value (0 when near is bright): a hole then never looks
salient and costs nothing per frame, and it matches the benchmarks, whose PNGs store
unknown depth as black. Depth outside ``[min_m, max_m]`` counts as a hole too (below the
minimum is a sensor artefact; beyond the maximum is background either way).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

SCALES = ("linear", "log")
_ACCEPTED = "uint16 (millimetres, 16UC1), float32/float64 (metres, 32FC1) or uint8 (8-bit benchmark PNG)"


@dataclass(frozen=True)
class DepthConfig:
    """Valid metric range, scale and polarity of normalised depth.

    min_m / max_m: metres mapped to the near / far ends of [0, 1]; outside is a hole.
    scale: "linear" or "log" in metres between them (log needs min_m > 0).
    near_is_bright: True -> near = 1, far = 0 (the benchmarks' convention).
    """

    min_m: float = 0.1
    max_m: float = 10.0
    near_is_bright: bool = True
    scale: str = "linear"

    def __post_init__(self) -> None:
        if not (np.isfinite(self.min_m) and np.isfinite(self.max_m) and 0.0 <= self.min_m < self.max_m):
            raise ValueError(f"DepthConfig needs finite 0 <= min_m < max_m, "
                             f"got min_m={self.min_m}, max_m={self.max_m}")
        if self.scale not in SCALES:
            raise ValueError(f"DepthConfig.scale must be one of {SCALES}, got {self.scale!r}")
        if self.scale == "log" and self.min_m <= 0.0:
            raise ValueError(f"DepthConfig with scale 'log' needs min_m > 0, got {self.min_m}")

    @property
    def far_value(self) -> float:
        """Normalised value of the far end, used to fill holes."""
        return 0.0 if self.near_is_bright else 1.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "DepthConfig":
        return cls(**values)

    def nearness(self, metres: np.ndarray) -> np.ndarray:
        """Metres -> [0, 1] with 1 at ``min_m`` (before clipping and polarity)."""
        if self.scale == "log":
            return np.log(np.float32(self.max_m) / metres) * np.float32(1.0 / np.log(self.max_m / self.min_m))
        return (np.float32(self.max_m) - metres) * np.float32(1.0 / (self.max_m - self.min_m))

    def metres(self, nearness: np.ndarray) -> np.ndarray:
        """The inverse of ``nearness``: what an 8-bit benchmark level stands for in metres (kept
        inside the range, which rounding would leave at the ends)."""
        if self.scale == "log":
            metres = np.float32(self.max_m) * np.power(np.float32(self.min_m / self.max_m), nearness)
        else:
            metres = np.float32(self.max_m) - nearness * np.float32(self.max_m - self.min_m)
        return np.clip(metres, np.float32(self.min_m), np.float32(self.max_m))


def _as_2d(depth: np.ndarray) -> np.ndarray:
    """Accept (H, W) or (H, W, 1); anything else is a caller error."""
    if not isinstance(depth, np.ndarray):
        raise ValueError(f"depth must be a numpy array, got {type(depth).__name__}")
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[:, :, 0]
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W) or (H, W, 1), got shape {depth.shape}")
    return depth


def depth_to_metres(depth: np.ndarray) -> np.ndarray:
    """uint16 -> millimetres/1000; float32/64 -> metres; holes (0, NaN, inf, <0) -> NaN. (H, W) float32.

    uint8 is refused: an 8-bit benchmark depth PNG carries no metric scale.
    """
    depth = _as_2d(depth)
    if depth.dtype == np.uint16:
        metres = depth.astype(np.float32) * np.float32(1e-3)
        metres[depth == 0] = np.nan
        return metres
    if depth.dtype in (np.float32, np.float64):
        metres = depth.astype(np.float32, copy=True)
        metres[~(np.isfinite(metres) & (metres > 0))] = np.nan
        return metres
    raise ValueError(f"depth_to_metres got dtype {depth.dtype}; "
                     "accepted: uint16 (millimetres) or float32/float64 (metres)")


def normalize_depth(depth: np.ndarray, config: DepthConfig = DepthConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Any supported depth -> (normalised (H, W) float32 in [0, 1], valid (H, W) bool).

    uint16 / float: valid = finite depth in [min_m, max_m], mapped by ``config.scale`` (near -> 1
    when ``near_is_bright``). uint8: a benchmark PNG, already normalised with 255 = near; only the
    polarity applies, and 0 is counted invalid (hole or farthest: both equal the fill value).
    Holes are filled with ``config.far_value``, so the output is never NaN.
    """
    depth = _as_2d(depth)
    if depth.dtype == np.uint8:
        valid = depth > 0
        normalised = depth.astype(np.float32) * np.float32(1.0 / 255.0)  # 1 = near
    elif depth.dtype in (np.uint16, np.float32, np.float64):
        metres = depth_to_metres(depth)
        with np.errstate(invalid="ignore"):  # NaN comparisons are False: holes stay invalid
            valid = (metres >= config.min_m) & (metres <= config.max_m)
            normalised = config.nearness(metres)
    else:
        raise ValueError(f"normalize_depth got dtype {depth.dtype}; accepted: {_ACCEPTED}")
    if not config.near_is_bright:
        normalised = 1.0 - normalised
    normalised[~valid] = config.far_value
    np.clip(normalised, 0.0, 1.0, out=normalised)
    return normalised.astype(np.float32, copy=False), valid


def fit_depth(depth: np.ndarray, height: int, width: int) -> np.ndarray:
    """Aligned depth of another resolution at (height, width): nearest neighbour sampling pixel
    centres (interpolating depth would invent surfaces between objects, and corner sampling
    shifts the map by half a pixel per scale step). The one depth resize of the package."""
    if depth.shape[:2] == (height, width):
        return depth
    rows = ((np.arange(height) + 0.5) * depth.shape[0] / height).astype(np.intp)
    cols = ((np.arange(width) + 0.5) * depth.shape[1] / width).astype(np.intp)
    return depth[rows[:, None], cols[None, :]]
