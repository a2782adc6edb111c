"""Turn a paired RGB/depth message couple into tracker input, handling camera quirks.

Sizes are checked, never trusted: aligned depth sometimes arrives unaligned or at another
resolution (realsense-ros PR #2793). Depth with the RGB aspect ratio is fitted to the RGB
size (``depth.fit_depth``, the one depth resize of the package); depth with
another aspect ratio cannot be aligned here, so that frame runs RGB-only. Every such
decision comes back as a ``FrameNote`` for the log and diagnostics, as does a depth image
that cannot be decoded (corrupt compressed data): that frame runs RGB-only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from m4sam_ros.depth import fit_depth
from m4sam_ros.encodings import ImageLayoutError, UnsupportedEncodingError
from m4sam_ros.postprocess import CameraIntrinsics
from m4sam_ros.ros.conversions import depth_from_msg, intrinsics_from_info, rgb_from_msg, stamp_seconds

__all__ = ["FrameNote", "PreparedFrame", "fit_depth_to_rgb", "prepare_frame"]

ASPECT_TOLERANCE = 0.02


@dataclass(frozen=True)
class FrameNote:
    """Something about the input worth a (throttled) log line and a diagnostics entry."""

    kind: str          # stable key: "depth_size", "depth_nonfinite", "depth_empty", "depth_decode", "camera_info"
    message: str
    warning: bool = True


@dataclass
class PreparedFrame:
    rgb: np.ndarray                     # (H, W, 3) uint8 RGB
    depth: np.ndarray | None            # (H, W) uint16 mm | float32 m, RGB-sized; None = RGB-only
    stamp: float                        # seconds, the RGB frame's
    intrinsics: CameraIntrinsics | None
    notes: list[FrameNote] = field(default_factory=list)


def fit_depth_to_rgb(depth: np.ndarray, height: int, width: int) -> tuple[np.ndarray | None, FrameNote | None]:
    """Depth at the RGB size, or None when it cannot correspond pixel for pixel."""
    dh, dw = depth.shape
    if (dh, dw) == (height, width):
        return depth, None
    if abs((dw / dh) / (width / height) - 1.0) <= ASPECT_TOLERANCE:
        return fit_depth(depth, height, width), FrameNote(
            "depth_size", f"depth {dw}x{dh} differs from RGB {width}x{height}: depth resized (nearest neighbour)",
            warning=False)
    return None, FrameNote(
        "depth_size", f"depth {dw}x{dh} has another aspect ratio than RGB {width}x{height} "
        "(not aligned to colour?): depth dropped, frame runs RGB-only")


def prepare_frame(rgb_msg: Image | CompressedImage, depth_msg: Image | CompressedImage | None,
                  info: CameraInfo | None) -> PreparedFrame:
    """Decode one pair whose messages passed ``check_image``; problems come back as notes.

    Raw images that passed the check always decode; compressed ones can still be corrupt:
    bad colour raises (the frame cannot run), bad depth becomes a note and RGB-only.
    """
    rgb = rgb_from_msg(rgb_msg)
    height, width = rgb.shape[:2]
    frame = PreparedFrame(rgb=rgb, depth=None, stamp=stamp_seconds(rgb_msg.header.stamp), intrinsics=None)
    if info is not None:
        try:
            frame.intrinsics = intrinsics_from_info(info, width, height)
        except ValueError as exc:
            frame.notes.append(FrameNote("camera_info", f"camera_info unusable ({exc}): objects have no 3D"))
        else:
            if frame.intrinsics is None:
                frame.notes.append(FrameNote("camera_info", "camera_info K is all zero (camera not calibrated?): "
                                                            "objects have no 3D"))
    if depth_msg is None:
        return frame
    try:
        decoded = depth_from_msg(depth_msg)
    except (ImageLayoutError, UnsupportedEncodingError) as exc:
        frame.notes.append(FrameNote("depth_decode", f"depth unusable ({exc}): frame runs RGB-only"))
        return frame
    depth, note = fit_depth_to_rgb(decoded, height, width)
    if note is not None:
        frame.notes.append(note)
    if depth is not None and depth.dtype == np.float32:
        nonfinite = int(np.count_nonzero(~np.isfinite(depth)))
        if nonfinite:
            frame.notes.append(FrameNote(
                "depth_nonfinite", f"depth has {nonfinite} NaN/inf pixels ({100.0 * nonfinite / depth.size:.1f}%): "
                "treated as holes", warning=False))
    if depth is not None and not _has_valid_pixel(depth):
        frame.notes.append(FrameNote("depth_empty", "depth frame has no valid pixel (all 0/NaN/inf): frame runs RGB-only"))
        depth = None
    frame.depth = depth
    return frame


def _has_valid_pixel(depth: np.ndarray) -> bool:
    if depth.dtype == np.uint16:
        return bool(depth.any())
    return bool(np.any(np.isfinite(depth) & (depth > 0)))
