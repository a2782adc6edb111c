"""A video's camera intrinsics: ``<video>/camera.json`` = {"width", "height", "fx", "fy", "cx", "cy"}.

The benchmarks ship no intrinsics; generated scenes and users' own recordings do, and 3-D
centroids and extents are only right with the real ones. Pixels: fx, fy focal lengths,
cx, cy principal point (pixel centres at integer coordinates, as ROS/OpenCV), for an
image of width x height; an image of another size gets them scaled.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from m4sam_ros.learn.datasets import DatasetError
from m4sam_ros.postprocess import CameraIntrinsics

__all__ = ["CAMERA_FILE", "read_camera_file", "video_intrinsics"]

CAMERA_FILE = "camera.json"
FIELDS = ("width", "height", "fx", "fy", "cx", "cy")


def read_camera_file(path: Path) -> tuple[CameraIntrinsics, int, int]:
    """(intrinsics, width, height) from a camera.json; DatasetError naming the file and field."""
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read camera intrinsics: {exc}") from None
    if not isinstance(values, dict):
        raise DatasetError(f"{path}: expected a JSON object with {', '.join(FIELDS)}")
    missing = [name for name in FIELDS if name not in values]
    if missing:
        raise DatasetError(f"{path}: missing {', '.join(missing)} (needs {', '.join(FIELDS)})")
    for name in FIELDS:
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DatasetError(f"{path}: {name} must be a finite number, got {value!r}")
    width, height = values["width"], values["height"]
    if width != int(width) or height != int(height) or width < 1 or height < 1:
        raise DatasetError(f"{path}: width and height must be positive whole pixels, got {width}x{height}")
    try:
        intrinsics = CameraIntrinsics(fx=float(values["fx"]), fy=float(values["fy"]),
                                      cx=float(values["cx"]), cy=float(values["cy"]))
    except ValueError as exc:
        raise DatasetError(f"{path}: {exc}") from None
    return intrinsics, int(width), int(height)


def video_intrinsics(video: Path, width: int, height: int) -> CameraIntrinsics | None:
    """The intrinsics of ``video``'s frames of ``width`` x ``height``; None when it has no camera.json."""
    path = Path(video) / CAMERA_FILE
    if not path.is_file():
        return None
    intrinsics, file_width, file_height = read_camera_file(path)
    if (file_width, file_height) != (width, height):
        intrinsics = intrinsics.scaled(width / file_width, height / file_height)
    return intrinsics
