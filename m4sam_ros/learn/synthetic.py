"""Procedural RGB-D video with a known salient object, for tests, demos and smoke training.

Benchmarks are large and licensed; tests need a video in milliseconds. Each video is a
static pinhole camera looking at a slanted textured wall (2-5 m) with salient objects
near the camera (0.6-1.5 m), distractors roaming at mid depth that may pass in front of
them, and occluders (thin bars, nearer still) that sweep across the first salient object
once per video, so partial occlusion is guaranteed rather than left to chance.
Geometry is metric and consistent with the returned intrinsics (an object's pixel size
is fx * radius / depth), depth is z-buffered, and the sensor adds RealSense-like faults:
noise growing with z², hole blobs, ragged holes along object edges and dropped frames.
Ground truth is the salient objects' *visible* pixels.

Random streams are split (background, one per shape, sensor, dropout) so that changing
e.g. the number of distractors or the noise leaves everything else identical.
"""
from __future__ import annotations

import colorsys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from m4sam_ros.postprocess import CameraIntrinsics

_KINDS = ("ellipse", "rectangle", "blob")


@dataclass
class SyntheticConfig:
    """What a synthetic video looks like; distances in metres.

    depth_noise: sigma of depth noise = depth_noise * z² (D4xx-like: ~2 cm at 2 m).
    hole_fraction: fraction of pixels zeroed in random blobs per depth frame.
    edge_hole_prob: probability that a pixel on an object boundary is zeroed.
    missing_depth_prob: probability that a frame has no depth at all (``depth_mm=None``).
    distractors: muted shapes roaming at ``distractor_depth_m``; never ground truth.
    occluders: thin bars sweeping across the first salient object, in front of it.
    object_radius_m: physical radius range of salient objects (distractors: 0.6-1x of it).
    speed: scale of the motion (1 = a few pixels per frame at 160 px width).
    """

    height: int = 120
    width: int = 160
    frames: int = 30
    num_objects: int = 1
    distractors: int = 2
    occluders: int = 1
    seed: int = 0
    depth_noise: float = 0.005
    hole_fraction: float = 0.02
    edge_hole_prob: float = 0.5
    missing_depth_prob: float = 0.0
    object_depth_m: tuple[float, float] = (0.6, 1.5)
    distractor_depth_m: tuple[float, float] = (1.0, 2.2)
    background_depth_m: tuple[float, float] = (2.0, 5.0)
    object_radius_m: tuple[float, float] = (0.1, 0.2)
    rgb_noise: float = 2.0
    speed: float = 1.0

    def __post_init__(self) -> None:
        if self.height < 16 or self.width < 16 or self.frames < 1:
            raise ValueError(f"SyntheticConfig needs height, width >= 16 and frames >= 1, "
                             f"got {self.height}x{self.width}, {self.frames} frames")
        if self.num_objects < 1 or self.distractors < 0 or self.occluders < 0:
            raise ValueError(f"SyntheticConfig needs num_objects >= 1, distractors >= 0 and occluders >= 0, "
                             f"got {self.num_objects}, {self.distractors}, {self.occluders}")
        for name in ("hole_fraction", "edge_hole_prob", "missing_depth_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"SyntheticConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("object_depth_m", "distractor_depth_m", "background_depth_m", "object_radius_m"):
            low, high = getattr(self, name)
            if not 0.0 < low <= high:
                raise ValueError(f"SyntheticConfig.{name} must be 0 < low <= high, got {(low, high)}")

    def intrinsics(self) -> CameraIntrinsics:
        """A ~60 degree horizontal field of view, principal point at the image centre."""
        f = 0.9 * self.width
        return CameraIntrinsics(fx=f, fy=f, cx=(self.width - 1) / 2, cy=(self.height - 1) / 2)


@dataclass
class SyntheticFrame:
    """One frame: rgb (H, W, 3) uint8 RGB; depth_mm (H, W) uint16 or None (dropped); gt (H, W) uint8 0/255."""

    rgb: np.ndarray
    depth_mm: np.ndarray | None
    gt: np.ndarray
    intrinsics: CameraIntrinsics
    index: int


@dataclass
class _Shape:
    """A moving textured shape; the motion is a smooth sinusoid plus a drift per coordinate."""

    kind: str
    radius_m: float
    aspect: float
    colour: np.ndarray  # (3,) float RGB 0..255
    stripes: tuple[float, float, float]  # cycles per radius, angle, phase
    harmonics: np.ndarray  # (2, 3) blob radius amplitudes and phases
    centre: np.ndarray  # (2, 3) rows u, v: (offset, amplitude, drift per frame) as fractions of the image size
    omega: np.ndarray  # (4,) rad/frame for u, v, z, rotation
    phase: np.ndarray  # (3,) for u, v, z
    depth: tuple[float, float]  # min, max over the motion
    angle0: float

    def pose(self, t: float) -> tuple[float, float, float, float]:
        """(u fraction, v fraction, z metres, rotation rad) at frame t."""
        u = self.centre[0, 0] + self.centre[0, 1] * np.sin(self.omega[0] * t + self.phase[0]) + self.centre[0, 2] * t
        v = self.centre[1, 0] + self.centre[1, 1] * np.sin(self.omega[1] * t + self.phase[1]) + self.centre[1, 2] * t
        low, high = self.depth
        z = low + (high - low) * 0.5 * (1.0 + np.sin(self.omega[2] * t + self.phase[2]))
        return float(u), float(v), float(z), self.angle0 + self.omega[3] * t


def _random_colour(rng: np.random.Generator, saturation: tuple[float, float], value: tuple[float, float]) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*saturation), rng.uniform(*value))
    return np.array(rgb, dtype=np.float32) * 255.0


def _make_shape(rng: np.random.Generator, salient: bool, config: SyntheticConfig) -> _Shape:
    """Salient objects: vivid, near, around the centre; distractors: muted, mid depth, roam widely."""
    low_r, high_r = config.object_radius_m
    radius = rng.uniform(low_r, high_r) * (1.0 if salient else rng.uniform(0.6, 1.0))
    depth_range = config.object_depth_m if salient else config.distractor_depth_m
    a, b = np.sort(rng.uniform(*depth_range, size=2))
    spread = (0.15, 0.3) if salient else (0.3, 0.5)
    centre = np.stack([rng.uniform(0.4, 0.6, size=2), rng.uniform(*spread, size=2), np.zeros(2)], axis=1)  # (2, 3)
    return _Shape(
        kind=_KINDS[rng.integers(len(_KINDS))],
        radius_m=radius,
        aspect=rng.uniform(0.7, 1.4),
        colour=_random_colour(rng, (0.6, 1.0), (0.6, 1.0)) if salient else _random_colour(rng, (0.1, 0.5), (0.3, 0.8)),
        stripes=(rng.uniform(0.5, 2.0), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)),
        harmonics=np.stack([rng.uniform(0.05, 0.2, size=3), rng.uniform(0, 2 * np.pi, size=3)]),
        centre=centre,
        omega=rng.uniform(0.03, 0.12, size=4) * config.speed * rng.choice([-1.0, 1.0], size=4),
        phase=rng.uniform(0, 2 * np.pi, size=3),
        depth=(float(a), float(b)),
        angle0=rng.uniform(0, np.pi),
    )


def _make_occluder(rng: np.random.Generator, target: _Shape, config: SyntheticConfig) -> _Shape:
    """A thin near bar drifting across the image so that it crosses ``target`` at a random frame."""
    shape = _make_shape(rng, False, config)
    t_cross = rng.uniform(0.2, 0.8) * (config.frames - 1)
    u_target, v_target, z_target, _ = target.pose(t_cross)
    drift = rng.choice([-1.0, 1.0]) * min(0.08, rng.uniform(1.0, 1.5) / config.frames)  # image widths per frame
    shape.kind, shape.aspect, shape.angle0 = "rectangle", rng.uniform(0.1, 0.2), rng.uniform(-0.3, 0.3)
    shape.centre = np.array([[u_target - drift * t_cross, 0.0, drift],
                             [v_target + rng.uniform(-0.1, 0.1), 0.0, 0.0]])
    shape.omega = shape.omega * np.array([0.0, 0.0, 0.0, 0.2])  # a slight turn, no wobble
    near = z_target * rng.uniform(0.5, 0.8)
    shape.depth = (near, near)
    return shape


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int, channels: int = 1) -> np.ndarray:
    """Zero-mean, unit-ish smooth noise (H, W[, C]) float32 from an upsampled coarse grid."""
    h, w = shape
    coarse = rng.standard_normal((h // cell + 2, w // cell + 2, channels)).astype(np.float32)
    fine = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return fine if channels > 1 else fine.reshape(h, w)


def _background(rng: np.random.Generator, config: SyntheticConfig,
                rays: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Textured slanted wall: colour (H, W, 3) float32 and depth (H, W) float32 metres.

    The wall is the plane z = z0 / (1 + a x' + b y') in normalised camera coordinates
    (x', y'), tilted so the lower image is nearer, like a wall meeting a floor.
    """
    shape = (config.height, config.width)
    low, high = config.background_depth_m
    z0 = rng.uniform(low + 0.3 * (high - low), low + 0.6 * (high - low))
    a, b = rng.uniform(-0.3, 0.3), rng.uniform(0.2, 0.6)
    xn, yn = rays
    depth = np.clip(z0 / np.maximum(1.0 + a * xn + b * yn, 1e-3), low, high).astype(np.float32)
    base = _random_colour(rng, (0.05, 0.3), (0.35, 0.7))
    ramp = np.linspace(-20.0, 20.0, config.height, dtype=np.float32)[:, None, None]
    shading = 25.0 * _smooth_noise(rng, shape, 16)[:, :, None]  # mostly brightness, a little tint
    colour = base + ramp + shading + 8.0 * _smooth_noise(rng, shape, 16, 3) + 6.0 * _smooth_noise(rng, shape, 3, 3)
    return colour.astype(np.float32), depth


def _render_shape(shape: _Shape, t: int, config: SyntheticConfig, fx: float, grid: tuple[np.ndarray, np.ndarray],
                  colour: np.ndarray, zbuf: np.ndarray, labels: np.ndarray, label: int) -> None:
    """Z-buffer one shape into colour/zbuf/labels, in place, on its bounding crop only."""
    h, w = zbuf.shape
    uf, vf, z, angle = shape.pose(t)
    u, v = uf * w, vf * h
    radius = fx * shape.radius_m / z  # pixels
    ax, ay = radius * np.sqrt(shape.aspect), radius / np.sqrt(shape.aspect)
    reach = 1.5 * max(ax, ay)
    x0, x1 = max(0, int(u - reach)), min(w, int(u + reach) + 1)
    y0, y1 = max(0, int(v - reach)), min(h, int(v + reach) + 1)
    if x0 >= x1 or y0 >= y1:
        return
    xs, ys = grid
    dx, dy = xs[y0:y1, x0:x1] - u, ys[y0:y1, x0:x1] - v
    c, s = np.cos(angle), np.sin(angle)
    lx, ly = (c * dx + s * dy) / ax, (-s * dx + c * dy) / ay  # unit-radius local coordinates
    if shape.kind == "rectangle":
        rho = np.maximum(np.abs(lx), np.abs(ly))
    else:
        rho = np.hypot(lx, ly)
        if shape.kind == "blob":
            theta = np.arctan2(ly, lx)
            k = np.arange(2, 5)[:, None, None]
            wobble = (shape.harmonics[0][:, None, None] * np.sin(k * theta + shape.harmonics[1][:, None, None])).sum(0)
            rho = rho / (1.0 + wobble)
    inside = rho <= 1.0
    bulge = 0.0 if shape.kind == "rectangle" else 0.5 * shape.radius_m
    surface = z - bulge * np.sqrt(np.clip(1.0 - rho**2, 0.0, 1.0))
    front = inside & (surface < zbuf[y0:y1, x0:x1])
    freq, stripe_angle, stripe_phase = shape.stripes
    stripes = np.sin(2 * np.pi * freq * (lx * np.cos(stripe_angle) + ly * np.sin(stripe_angle)) + stripe_phase)
    shade = (0.8 + 0.15 * stripes) * (1.0 - 0.25 * np.clip(rho, 0, 1) ** 2)
    zbuf[y0:y1, x0:x1][front] = surface[front]
    colour[y0:y1, x0:x1][front] = shade[front][:, None] * shape.colour
    labels[y0:y1, x0:x1][front] = label


def _sense_depth(rng: np.random.Generator, zbuf: np.ndarray, labels: np.ndarray, config: SyntheticConfig) -> np.ndarray:
    """True depth -> RealSense-like 16UC1 millimetres: z² noise, hole blobs, ragged edge holes."""
    depth = zbuf + rng.standard_normal(zbuf.shape, dtype=np.float32) * (config.depth_noise * zbuf**2)
    holes = np.zeros(zbuf.shape, dtype=bool)
    blobs = _smooth_noise(rng, zbuf.shape, 8)
    if config.hole_fraction > 0:
        holes |= blobs > np.quantile(blobs, 1.0 - config.hole_fraction)
    edges = cv2.morphologyEx(labels.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    holes |= edges & (rng.random(zbuf.shape) < config.edge_hole_prob)
    depth_mm = np.clip(np.rint(depth * 1000.0), 1, 65535).astype(np.uint16)
    depth_mm[holes] = 0
    return depth_mm


def generate_video(config: SyntheticConfig) -> Iterator[SyntheticFrame]:
    """Stream the frames of one synthetic RGB-D video, deterministic by ``config.seed``."""
    background_seq, shapes_seq, sensor_seq, dropout_seq = np.random.SeedSequence(config.seed).spawn(4)
    sensor_rng, dropout_rng = np.random.default_rng(sensor_seq), np.random.default_rng(dropout_seq)
    intrinsics = config.intrinsics()
    ys, xs = np.mgrid[0:config.height, 0:config.width].astype(np.float32)
    rays = ((xs - intrinsics.cx) / intrinsics.fx, (ys - intrinsics.cy) / intrinsics.fy)
    bg_colour, bg_depth = _background(np.random.default_rng(background_seq), config, rays)
    # child i depends only on i: salient object i looks the same whatever the distractor count
    children = shapes_seq.spawn(config.num_objects + config.distractors + config.occluders)
    roaming = config.num_objects + config.distractors
    shapes = [_make_shape(np.random.default_rng(seq), i < config.num_objects, config)
              for i, seq in enumerate(children[:roaming])]
    shapes += [_make_occluder(np.random.default_rng(seq), shapes[0], config) for seq in children[roaming:]]

    for t in range(config.frames):
        colour, zbuf = bg_colour.copy(), bg_depth.copy()
        labels = np.zeros(zbuf.shape, dtype=np.int32)  # 0 background, i + 1 shape i
        for i, shape in enumerate(shapes):
            _render_shape(shape, t, config, intrinsics.fx, (xs, ys), colour, zbuf, labels, i + 1)
        colour += sensor_rng.standard_normal(colour.shape, dtype=np.float32) * config.rgb_noise
        rgb = np.clip(np.rint(colour), 0, 255).astype(np.uint8)
        depth_mm = _sense_depth(sensor_rng, zbuf, labels, config)
        if dropout_rng.random() < config.missing_depth_prob:
            depth_mm = None
        gt = ((labels >= 1) & (labels <= config.num_objects)).astype(np.uint8) * 255
        yield SyntheticFrame(rgb=rgb, depth_mm=depth_mm, gt=gt, intrinsics=intrinsics, index=t)


def write_video(root: Path, name: str, config: SyntheticConfig) -> Path:
    """Write ``<root>/<name>/{rgb,depth,gt}/<frame:05d>.png`` and return the video folder.

    rgb: colour PNG; depth: 16-bit PNG in millimetres (no file for a dropped frame);
    gt: 8-bit 0/255. Frames of an earlier write of the same video are removed first, so a
    rewrite never leaves stale depth for a frame that is now dropped.
    """
    video = Path(root) / name
    for sub in ("rgb", "depth", "gt"):
        (video / sub).mkdir(parents=True, exist_ok=True)
        for stale in (video / sub).glob("[0-9][0-9][0-9][0-9][0-9].png"):
            stale.unlink()
    for frame in generate_video(config):
        stem = f"{frame.index:05d}.png"
        _imwrite(video / "rgb" / stem, cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR))
        _imwrite(video / "gt" / stem, frame.gt)
        if frame.depth_mm is not None:
            _imwrite(video / "depth" / stem, frame.depth_mm)
    return video


def write_dataset(root: Path, videos: int, config: SyntheticConfig, split_seed: int = 0) -> list[Path]:
    """Write ``videos`` videos named ``synthetic_<i:03d>``, each with its own seed drawn from ``split_seed``."""
    if videos < 1:
        raise ValueError(f"videos must be >= 1, got {videos}")
    seeds = np.random.SeedSequence(split_seed).generate_state(videos)
    return [write_video(root, f"synthetic_{i:03d}", replace(config, seed=int(seed))) for i, seed in enumerate(seeds)]


def _imwrite(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cv2.imwrite could not write {path}")
