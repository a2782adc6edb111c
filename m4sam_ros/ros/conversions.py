"""ROS messages <-> the numpy/dataclass world of the tracker (no cv_bridge: not pip-installable).

Images may be raw (sensor_msgs/Image) or compressed (sensor_msgs/CompressedImage, decoded by
``m4sam_ros.compressed``); both kinds give the same arrays and raise the same error types.
"""
from __future__ import annotations

import array
from collections.abc import Sequence

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Vector3
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, RegionOfInterest
from std_msgs.msg import Header

from m4sam_ros.compressed import check_compressed, decode_colour, decode_depth
from m4sam_ros.encodings import (
    COLOUR_ENCODINGS,
    DEPTH_ENCODINGS,
    UnsupportedEncodingError,
    check_layout,
    decode_image,
    encode_image,
    to_depth,
    to_rgb,
)
from m4sam_ros.msg import SalientObject as SalientObjectMsg
from m4sam_ros.msg import SalientObjectArray
from m4sam_ros.postprocess import CameraIntrinsics, SalientObject

__all__ = ["check_image", "depth_from_msg", "image_msg", "intrinsics_from_info", "objects_msg",
           "rgb_from_msg", "stamp_seconds"]


def stamp_seconds(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def check_image(msg: Image | CompressedImage, role: str) -> None:
    """Cheap validity check for a callback: encoding allowed for ``role`` ('colour'/'depth') and layout
    (for a compressed image: its format and file header).

    Raises UnsupportedEncodingError or ImageLayoutError naming what is wrong.
    """
    if isinstance(msg, CompressedImage):
        check_compressed(msg, role)
        return
    allowed = COLOUR_ENCODINGS if role == "colour" else DEPTH_ENCODINGS
    if msg.encoding not in allowed:
        raise UnsupportedEncodingError(msg.encoding, allowed, role=role)
    check_layout(msg.encoding, msg.height, msg.width, msg.step, len(msg.data))


def rgb_from_msg(msg: Image | CompressedImage) -> np.ndarray:
    """(H, W, 3) uint8 RGB; a view of the message buffer for rgb8/rgba8."""
    if isinstance(msg, CompressedImage):
        return decode_colour(msg)
    return to_rgb(decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian, msg.data),
                  msg.encoding)


def depth_from_msg(msg: Image | CompressedImage) -> np.ndarray:
    """(H, W) uint16 millimetres (16UC1) or float32 metres (32FC1), native byte order."""
    if isinstance(msg, CompressedImage):
        return decode_depth(msg)
    if msg.encoding not in DEPTH_ENCODINGS:
        raise UnsupportedEncodingError(msg.encoding, DEPTH_ENCODINGS, role="depth")
    return to_depth(decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian, msg.data),
                    msg.encoding)


def intrinsics_from_info(info: CameraInfo, width: int, height: int) -> CameraIntrinsics | None:
    """Pinhole intrinsics for an image of ``width`` x ``height``; None if K is unset (all zero,
    an uncalibrated camera); ValueError naming the problem for a K no pinhole camera has
    (NaN, a focal length <= 0).

    camera_info may describe another resolution than the image (a driver publishing a
    binned stream): K is then scaled by the size ratio.
    """
    k = info.k
    if not any(k):
        return None
    intrinsics = CameraIntrinsics.from_k(k)
    if info.width > 0 and info.height > 0 and (info.width, info.height) != (width, height):
        intrinsics = intrinsics.scaled(width / info.width, height / info.height)
    return intrinsics


def image_msg(header: Header, image: np.ndarray, encoding: str) -> Image:
    encoded = encode_image(image, encoding)
    msg = Image(header=header, height=encoded.height, width=encoded.width, encoding=encoded.encoding,
                is_bigendian=encoded.is_bigendian, step=encoded.step)
    msg.data = array.array("B", encoded.data)  # one memcpy; a list would be a Python loop
    return msg


def _vector(values: np.ndarray, kind: type) -> Point | Vector3:
    return kind(x=float(values[0]), y=float(values[1]), z=float(values[2]))


def objects_msg(header: Header, objects: Sequence[SalientObject]) -> SalientObjectArray:
    out = SalientObjectArray(header=header)
    for obj in objects:
        x, y, w, h = obj.box
        item = SalientObjectMsg(id=int(obj.id), score=float(obj.score), age=int(obj.age), area=int(obj.area),
                                roi=RegionOfInterest(x_offset=int(x), y_offset=int(y), width=int(w), height=int(h)),
                                has_3d=obj.centroid is not None)
        if obj.centroid is not None:
            item.centroid = _vector(obj.centroid, Point)
            if obj.extent is not None:
                item.extent = _vector(obj.extent, Vector3)
        out.objects.append(item)
    return out
