"""What an active-stereo RGB-D camera (Intel RealSense D400-like) does to a perfect render.

Rendered depth is exact; a robot's depth is not, and a model trained on exact depth trusts
it too much. These functions turn a metric z-buffer and a clean colour image into what a
D4xx-class camera delivers, as pure numpy so each artefact is testable on its own. Every
random draw comes from the ``numpy.random.Generator`` passed in (same seed -> same noise).

Depth (``apply_depth_sensor``), in the order a stereo pipeline produces it:

* **Stereo shadow** (``stereo_shadow``): depth is referenced to the *left* imager and the
  second imager sits ``baseline_m`` to its right (+x of the camera), so background just to
  the **left of a near object's left edge** is hidden from the right imager and has no
  match: an invalid band ``fx * baseline * (1/z_near - 1/z_far)`` pixels wide. The same
  geometry leaves the image's left-most columns invalid (the D400 "invalid depth band",
  ``fx * baseline / z`` wide). Sources: Intel RealSense D400 Series Datasheet (doc. 337029,
  section on the invalid depth band: left imager is the depth origin); Intel white paper
  "Projection, Texture-Mapping and Occlusion with Intel RealSense Depth Cameras".
* **Holes at depth discontinuities** (``discontinuities``): correlation windows straddling
  an edge match neither side; with the default post-processing such pixels are dropped,
  leaving ragged holes along object outlines (Intel white paper "Depth Post-Processing for
  Intel RealSense D400 Depth Cameras"; Nguyen, Izadi & Lovell, "Modeling Kinect Sensor
  Noise for Improved 3D Reconstruction and Tracking", 3DIMPVT 2012, on depth error growing
  at object boundaries and with z²).
* **Holes on dark and shiny surfaces**: too little reflected IR (black, dark surfaces) or a
  saturated specular highlight gives no stereo match; also random speckle holes. The
  ``shiny`` mask (surfaces the scene marks reflective) loses patches of depth.
* **Axial noise growing with z²** (``depth_noise_sigma``): Intel's "Depth RMS error" of a
  stereo camera, RMS = z² · subpixel / (f · baseline), f the focal length in pixels of the
  *depth imager* at its own resolution (Grunnet-Jepsen, Sweetser & Woodfill, "Tuning
  depth cameras for best performance", Intel white paper; D435: baseline 50 mm, subpixel
  ~0.08 on good texture and worse elsewhere; at 848x480, f ~ 425 px).
* **Range limits**: nearer than ``min_range_m`` the disparity exceeds the matcher's search
  range (D435: ~0.11 m at its lowest resolution, more at higher ones); beyond
  ``max_range_m`` a return is too noisy to keep. Both become holes.
* Output is 16UC1 millimetres (the D400 default depth unit of 1 mm), holes = 0.

Frames: ``depth_frame_dropped`` drops a depth frame with ``drop_prob`` (USB hiccups, frame
sync misses); the writer then writes no depth file, which the generic dataset reader reads
as an RGB-only frame.

Colour (``apply_rgb_sensor``): per-video white balance, an auto-exposure gain that jumps
(a light switched on, the camera turning to a window) and settles back over a few frames
(``exposure_gains``), then shot + read noise, clipped to 8 bits.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["SensorConfig", "depth_noise_sigma", "stereo_shadow", "discontinuities", "apply_depth_sensor",
           "depth_frame_dropped", "exposure_gains", "apply_rgb_sensor", "luminance"]


@dataclass(frozen=True)
class SensorConfig:
    """Parameters of the simulated camera; the defaults are a D435 at 848x480.

    baseline_m: distance between the two imagers (D435: 50 mm).
    depth_focal_px: focal length in pixels of the depth imager at its own resolution (sets
        the noise; the band geometry uses the render's fx, since it is measured in our pixels).
    subpixel: RMS disparity error in pixels.
    min_range_m / max_range_m: depth outside becomes a hole.
    edge_hole_prob: chance that a pixel beside a depth discontinuity is a hole.
    edge_jump: relative depth step between neighbours that counts as a discontinuity.
    dark_luminance / dark_hole_prob: pixels darker than this (0-255) lose depth with this chance.
    saturated_luminance: pixels at least this bright (specular highlights) lose depth.
    shiny_hole_fraction: fraction of a shiny surface's pixels that lose depth, in patches.
    speckle_fraction: fraction of all pixels lost in small random holes.
    drop_prob: chance that a whole depth frame is missing.
    rgb_read_noise / rgb_shot_noise: colour noise sigma² = read² + shot · intensity (8-bit units).
    exposure_jump_prob: chance per frame of a sudden exposure change.
    exposure_jump: largest factor of such a change (a jump is a factor in [1/x, x]).
    exposure_settle: fraction of the remaining error auto-exposure removes per frame.
    """

    baseline_m: float = 0.050
    depth_focal_px: float = 425.0
    subpixel: float = 0.1
    min_range_m: float = 0.17
    max_range_m: float = 6.0
    edge_hole_prob: float = 0.5
    edge_jump: float = 0.05
    dark_luminance: float = 20.0
    dark_hole_prob: float = 0.6
    saturated_luminance: float = 250.0
    shiny_hole_fraction: float = 0.3
    speckle_fraction: float = 0.005
    drop_prob: float = 0.02
    rgb_read_noise: float = 2.0
    rgb_shot_noise: float = 0.05
    exposure_jump_prob: float = 0.03
    exposure_jump: float = 1.6
    exposure_settle: float = 0.25

    def __post_init__(self) -> None:
        positive = ("baseline_m", "depth_focal_px", "min_range_m", "edge_jump", "exposure_jump")
        if any(not getattr(self, name) > 0 for name in positive) or self.subpixel < 0:
            raise ValueError(f"SensorConfig needs {', '.join(positive)} > 0 and subpixel >= 0, got {self}")
        if not self.min_range_m < self.max_range_m:
            raise ValueError(f"SensorConfig needs min_range_m < max_range_m, "
                             f"got {self.min_range_m}, {self.max_range_m}")
        for name in ("edge_hole_prob", "dark_hole_prob", "shiny_hole_fraction", "speckle_fraction", "drop_prob",
                     "exposure_jump_prob", "exposure_settle"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"SensorConfig.{name} must be in [0, 1], got {getattr(self, name)}")


def luminance(rgb: np.ndarray) -> np.ndarray:
    """(H, W) float32 Rec. 601 luma of an (H, W, 3) RGB image, 0-255."""
    rgb = rgb.astype(np.float32)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def depth_noise_sigma(z_m: np.ndarray, config: SensorConfig) -> np.ndarray:
    """Axial noise sigma in metres: z² · subpixel / (f · baseline)."""
    return np.square(z_m) * (config.subpixel / (config.depth_focal_px * config.baseline_m))


def stereo_shadow(z_m: np.ndarray, fx: float, baseline_m: float) -> np.ndarray:
    """(H, W) bool: pixels the right imager cannot see, so stereo finds no depth there.

    A left-image pixel u at depth z lands at x_R = u - fx·B/z in the right image. It is hidden
    there when some pixel to its right lands at or left of x_R (a nearer surface covers it),
    i.e. x_R >= the running minimum of x_R over the pixels to its right; or off the right
    image (x_R < 0). Pixels without depth (non-finite or <= 0) never occlude.
    """
    h, w = z_m.shape
    valid = np.isfinite(z_m) & (z_m > 0)
    disparity = np.zeros(z_m.shape, dtype=np.float64)
    disparity[valid] = fx * baseline_m / z_m[valid]
    x_right = np.arange(w, dtype=np.float64)[None, :] - disparity
    x_right[~valid] = np.inf  # no surface: covers nothing
    # minimum of x_R over the pixels strictly to the right of each pixel
    right_min = np.minimum.accumulate(x_right[:, ::-1], axis=1)[:, ::-1]
    covering = np.concatenate([right_min[:, 1:], np.full((h, 1), np.inf)], axis=1)
    return valid & ((x_right >= covering) | (x_right < 0))


def discontinuities(z_m: np.ndarray, relative_jump: float) -> np.ndarray:
    """(H, W) bool: pixels whose 4-neighbour differs in depth by more than ``relative_jump`` · z."""
    z = np.where(np.isfinite(z_m) & (z_m > 0), z_m, 0.0).astype(np.float32)
    edges = np.zeros(z.shape, dtype=bool)
    rows = np.abs(z[1:] - z[:-1]) > relative_jump * np.minimum(z[1:], z[:-1])
    cols = np.abs(z[:, 1:] - z[:, :-1]) > relative_jump * np.minimum(z[:, 1:], z[:, :-1])
    edges[1:] |= rows
    edges[:-1] |= rows
    edges[:, 1:] |= cols
    edges[:, :-1] |= cols
    return edges


def _patches(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """(H, W) float32 smooth noise: thresholding it gives blobby patches about ``cell`` pixels wide."""
    h, w = shape
    coarse = rng.random((h // cell + 2, w // cell + 2)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)


def apply_depth_sensor(z_m: np.ndarray, rgb_clean: np.ndarray, fx: float, rng: np.random.Generator,
                       config: SensorConfig = SensorConfig(), shiny: np.ndarray | None = None) -> np.ndarray:
    """Exact metric depth (H, W) -> sensor depth (H, W) uint16 millimetres, 0 = no depth.

    z_m: z along the optical axis in metres (non-finite or <= 0 where nothing was hit).
    rgb_clean: the render's colour image (H, W, 3) uint8, before exposure and noise: the
    imagers see the surface's brightness, which decides the dark/saturated holes.
    fx: the render's focal length in pixels (shadow widths are measured in these pixels).
    shiny: (H, W) bool of reflective surfaces, or None.
    """
    if z_m.ndim != 2 or rgb_clean.shape[:2] != z_m.shape:
        raise ValueError(f"apply_depth_sensor needs (H, W) depth and (H, W, 3) colour, "
                         f"got {z_m.shape}, {rgb_clean.shape}")
    shape = z_m.shape
    z = np.where(np.isfinite(z_m) & (z_m > 0), z_m, 0.0).astype(np.float32)
    holes = z <= 0
    holes |= stereo_shadow(z_m, fx, config.baseline_m)
    holes |= discontinuities(z_m, config.edge_jump) & (rng.random(shape) < config.edge_hole_prob)
    luma = luminance(rgb_clean)
    holes |= (luma < config.dark_luminance) & (rng.random(shape) < config.dark_hole_prob)
    holes |= luma >= config.saturated_luminance
    if shiny is not None and config.shiny_hole_fraction > 0 and shiny.any():
        patches = _patches(rng, shape, 6)
        holes |= shiny & (patches <= np.quantile(patches[shiny], config.shiny_hole_fraction))
    holes |= rng.random(shape) < config.speckle_fraction
    noisy = z + rng.standard_normal(shape, dtype=np.float32) * depth_noise_sigma(z, config).astype(np.float32)
    holes |= (noisy < config.min_range_m) | (noisy > config.max_range_m)
    depth_mm = np.clip(np.rint(noisy * 1000.0), 1, 65535).astype(np.uint16)
    depth_mm[holes] = 0
    return depth_mm


def depth_frame_dropped(rng: np.random.Generator, config: SensorConfig = SensorConfig()) -> bool:
    """True when this frame's depth never arrives (one draw per frame, always taken)."""
    return bool(rng.random() < config.drop_prob)


def exposure_gains(rng: np.random.Generator, frames: int, config: SensorConfig = SensorConfig()) -> np.ndarray:
    """(frames,) auto-exposure gain per frame: 1 at rest, sudden jumps that settle back.

    A jump multiplies the current gain by a factor in [1/exposure_jump, exposure_jump]
    (log-uniform); each frame auto-exposure removes ``exposure_settle`` of the remaining
    error, and a small flicker (1 %) rides on top.
    """
    gains = np.empty(frames, dtype=np.float64)
    gain = 1.0
    for t in range(frames):
        jump, factor, flicker = rng.random(), rng.uniform(-1.0, 1.0), rng.standard_normal()
        if jump < config.exposure_jump_prob:
            gain *= float(config.exposure_jump) ** factor
        gains[t] = gain * (1.0 + 0.01 * flicker)
        gain += config.exposure_settle * (1.0 - gain)
    return gains


def apply_rgb_sensor(rgb_clean: np.ndarray, gain: float, white_balance: np.ndarray, rng: np.random.Generator,
                     config: SensorConfig = SensorConfig()) -> np.ndarray:
    """Clean (H, W, 3) uint8 colour -> exposed, white-balanced, noisy (H, W, 3) uint8."""
    signal = rgb_clean.astype(np.float32) * (np.float32(gain) * np.asarray(white_balance, dtype=np.float32))
    sigma = np.sqrt(config.rgb_read_noise ** 2 + config.rgb_shot_noise * np.clip(signal, 0.0, 255.0))
    noisy = signal + rng.standard_normal(signal.shape, dtype=np.float32) * sigma
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
