"""Pinhole camera for PyBullet's renderer and the moving-camera trajectories robots produce.

Conventions: poses are camera-to-world with OpenCV axes (x right, y down, z forward);
intrinsics follow the pixel-centre-at-integer convention (pixel (u, v) is centred on
u, v; an image-centred principal point is ((W-1)/2, (H-1)/2)), as ``CameraIntrinsics``
elsewhere in the package. PyBullet wants OpenGL matrices; ``projection_matrix`` builds
them from the intrinsics, with the principal-point offset that TinyRenderer's raster
convention needs (measured: with a centred OpenGL frustum it puts the optical axis at
u = W/2, v = H/2 - 1), so the rendered pixels obey the intrinsics written to camera.json.

Trajectories (``camera_track``) are arrays over the video's frames, never closures, so a
scene is plain data: the camera fixates a per-frame point and moves by one of

* ``static``: a robot head holding still (only sensor shake),
* ``orbit``: circling the fixation point (a mobile base or arm-mounted camera inspecting),
* ``approach``: closing in on the target (reaching / docking),
* ``handheld``: a person holding the camera, strong shake,
* ``pan``: looking away from the target so that it leaves the view, and back.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from m4sam_ros.postprocess import CameraIntrinsics

MOTIONS = ("static", "orbit", "approach", "handheld", "pan")

__all__ = ["MOTIONS", "CameraTrack", "intrinsics_for", "projection_matrix", "view_matrix", "look_at",
           "camera_track", "smooth_wobble", "ease"]


def intrinsics_for(width: int, height: int, hfov_deg: float) -> CameraIntrinsics:
    """Square pixels, principal point at the image centre, the given horizontal field of view."""
    fx = (width / 2.0) / np.tan(np.radians(hfov_deg) / 2.0)
    return CameraIntrinsics(fx=float(fx), fy=float(fx), cx=(width - 1) / 2.0, cy=(height - 1) / 2.0)


def projection_matrix(intrinsics: CameraIntrinsics, width: int, height: int, near: float, far: float) -> list[float]:
    """Column-major OpenGL projection whose TinyRenderer image has exactly these intrinsics."""
    p = np.zeros((4, 4))
    p[0, 0] = 2.0 * intrinsics.fx / width
    p[1, 1] = 2.0 * intrinsics.fy / height
    # u = W/2 + (W/2)(x_ndc) and v = H/2 - 1 - (H/2)(y_ndc) in TinyRenderer; solve for the offsets
    p[0, 2] = 1.0 - 2.0 * intrinsics.cx / width
    p[1, 2] = 2.0 * (intrinsics.cy - height / 2.0 + 1.0) / height
    p[2, 2] = -(far + near) / (far - near)
    p[2, 3] = -2.0 * far * near / (far - near)
    p[3, 2] = -1.0
    return p.T.reshape(-1).tolist()


def view_matrix(rotation: np.ndarray, eye: np.ndarray) -> list[float]:
    """Column-major OpenGL view matrix of a camera-to-world pose in OpenCV axes."""
    r_gl = rotation @ np.diag([1.0, -1.0, -1.0])  # OpenGL camera: y up, looking down -z
    view = np.eye(4)
    view[:3, :3] = r_gl.T
    view[:3, 3] = -r_gl.T @ eye
    return view.T.reshape(-1).tolist()


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(3, 3) camera-to-world rotation (columns x right, y down, z forward) looking from eye to
    target, with no roll (image rows level with the world's horizontal, z up)."""
    up = np.array([0.0, 0.0, 1.0])
    forward = np.asarray(target, float) - np.asarray(eye, float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-6:  # looking straight up or down: any right vector will do
        right = np.cross(forward, np.array([0.0, 1.0, 0.0]))
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    return np.stack([right, down, forward], axis=1)


def _rotation_xyz(angles: np.ndarray) -> np.ndarray:
    """Rotation from small (pitch about x, yaw about y, roll about z) angles in camera axes."""
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def smooth_wobble(rng: np.random.Generator, frames: int, dims: int, amplitude: float,
                  periods: tuple[float, float] = (8.0, 40.0)) -> np.ndarray:
    """(frames, dims) smooth zero-mean wobble: three sinusoids per dimension with random
    periods (in frames) and phases, scaled so each dimension's RMS is about ``amplitude``."""
    t = np.arange(frames, dtype=np.float64)[:, None, None]
    period = rng.uniform(*periods, size=(1, dims, 3))
    phase = rng.uniform(0, 2 * np.pi, size=(1, dims, 3))
    weight = rng.uniform(0.5, 1.0, size=(1, dims, 3))
    waves = (weight * np.sin(2 * np.pi * t / period + phase)).sum(axis=2)
    return waves * (amplitude / np.sqrt(0.5 * (weight ** 2).sum(axis=2)))


@dataclass(frozen=True)
class CameraTrack:
    """Per-frame camera poses: eyes (T, 3) world positions, rotations (T, 3, 3) camera-to-world."""

    motion: str
    eyes: np.ndarray
    rotations: np.ndarray

    def pose(self, t: int) -> np.ndarray:
        """(4, 4) camera-to-world of frame t."""
        pose = np.eye(4)
        pose[:3, :3], pose[:3, 3] = self.rotations[t], self.eyes[t]
        return pose


def ease(s: np.ndarray) -> np.ndarray:
    """Smoothstep 0 -> 1 with zero velocity at both ends."""
    s = np.clip(s, 0.0, 1.0)
    return s * s * (3.0 - 2.0 * s)


def camera_track(rng: np.random.Generator, motion: str, fixation: np.ndarray, azimuth: float, elevation: float,
                 radius: float, hfov_deg: float) -> CameraTrack:
    """Poses for ``motion`` around the per-frame fixation points (T, 3).

    azimuth / elevation (radians) / radius (metres) place the camera at the start,
    relative to the first fixation point; each motion then varies them over the video.
    """
    if motion not in MOTIONS:
        raise ValueError(f"unknown camera motion {motion!r}; known: {MOTIONS}")
    frames = len(fixation)
    s = np.linspace(0.0, 1.0, frames)
    az = np.full(frames, azimuth)
    el = np.full(frames, elevation)
    rad = np.full(frames, radius)
    look = np.array(fixation, dtype=np.float64)
    shake_pos, shake_rot = 0.002, np.radians(0.2)  # a robot's camera is never perfectly still
    if motion == "orbit":
        az = azimuth + rng.choice([-1.0, 1.0]) * np.radians(rng.uniform(30, 90)) * (s - 0.5)
        el = elevation + np.radians(rng.uniform(-8, 8)) * np.sin(np.pi * s)
    elif motion == "approach":
        closest = max(0.2, radius * rng.uniform(0.35, 0.6))  # a grasp-camera's last look, still in range
        rad = radius + (closest - radius) * ease(s)
        az = azimuth + np.radians(rng.uniform(-15, 15)) * s
    elif motion == "handheld":
        shake_pos, shake_rot = rng.uniform(0.01, 0.03), np.radians(rng.uniform(1.0, 3.0))
        az = azimuth + np.radians(rng.uniform(-10, 10)) * s
    elif motion == "pan":
        # swing the gaze sideways far enough that the target leaves the view: away and back,
        # or starting away (the target enters), or ending away (it leaves)
        away = (np.tan(np.radians(hfov_deg) / 2.0) * radius) * rng.uniform(1.6, 2.4) * rng.choice([-1.0, 1.0])
        kind, length = rng.choice(["away_and_back", "enter", "leave"]), rng.uniform(0.3, 0.5)
        if kind == "away_and_back":
            start = rng.uniform(0.1, 0.9 - length)
            profile = np.sin(np.pi * np.clip((s - start) / length, 0.0, 1.0)) ** 2
        elif kind == "enter":
            profile = 1.0 - ease(s / length)
        else:
            profile = ease((s - (1.0 - length)) / length)
        side = np.array([np.sin(azimuth), -np.cos(azimuth), 0.0])  # horizontal, perpendicular to the view
        look = look + profile[:, None] * away * side[None, :]
    shake_pos_xyz = smooth_wobble(rng, frames, 3, shake_pos, (6.0, 30.0))
    shake_angles = smooth_wobble(rng, frames, 3, shake_rot, (6.0, 30.0))
    offsets = np.stack([rad * np.cos(el) * np.cos(az), rad * np.cos(el) * np.sin(az), rad * np.sin(el)], axis=1)
    eyes = np.asarray(fixation, dtype=np.float64) + offsets + shake_pos_xyz
    rotations = np.stack([look_at(eyes[t], look[t]) @ _rotation_xyz(shake_angles[t]) for t in range(frames)])
    return CameraTrack(motion, eyes, rotations)
