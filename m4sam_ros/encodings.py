"""sensor_msgs/Image encodings <-> numpy, without cv_bridge (not pip-installable) and without rclpy.

Works on the raw message fields (encoding, height, width, step, is_bigendian, data) so
it can be tested and reused outside ROS. Decoding is zero-copy: the returned array is a
strided view over the message buffer, so row padding (``step`` larger than a packed row)
costs nothing. A copy happens only where the caller needs a different layout (channel
order for ``to_rgb``, byte order for big-endian depth in ``to_depth``).
"""
from __future__ import annotations

import array
from dataclasses import dataclass

import numpy as np

__all__ = [
    "COLOUR_ENCODINGS",
    "DEPTH_ENCODINGS",
    "SUPPORTED_ENCODINGS",
    "EncodedImage",
    "ImageLayoutError",
    "UnsupportedEncodingError",
    "check_layout",
    "decode_image",
    "encode_image",
    "to_depth",
    "to_rgb",
]


@dataclass(frozen=True)
class _Format:
    dtype: np.dtype    # one channel, native byte order
    channels: int


SUPPORTED_ENCODINGS: dict[str, _Format] = {
    "rgb8": _Format(np.dtype(np.uint8), 3),
    "bgr8": _Format(np.dtype(np.uint8), 3),
    "rgba8": _Format(np.dtype(np.uint8), 4),
    "bgra8": _Format(np.dtype(np.uint8), 4),
    "mono8": _Format(np.dtype(np.uint8), 1),
    "16UC1": _Format(np.dtype(np.uint16), 1),
    "32FC1": _Format(np.dtype(np.float32), 1),
}
COLOUR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
DEPTH_ENCODINGS = ("16UC1", "32FC1")


class UnsupportedEncodingError(ValueError):
    """The image's encoding is not one this package converts."""

    def __init__(self, encoding: str, expected: tuple[str, ...] | None = None, role: str = "image"):
        expected = tuple(SUPPORTED_ENCODINGS) if expected is None else expected
        self.encoding = encoding
        super().__init__(
            f"unsupported {role} encoding {encoding!r}; expected one of {', '.join(expected)}")


class ImageLayoutError(ValueError):
    """height/width/step/data of an image message do not describe a valid image."""


@dataclass(frozen=True)
class EncodedImage:
    """Fields of a sensor_msgs/Image ready to publish (header is the caller's)."""

    encoding: str
    height: int
    width: int
    step: int
    is_bigendian: bool
    data: bytes


def _format(encoding: str) -> _Format:
    try:
        return SUPPORTED_ENCODINGS[encoding]
    except KeyError:
        raise UnsupportedEncodingError(encoding) from None


def check_layout(encoding: str, height: int, width: int, step: int, data_length: int) -> None:
    """Raise if the fields cannot describe an image; cheap (no data access), safe in callbacks."""
    fmt = _format(encoding)
    if height <= 0 or width <= 0:
        raise ImageLayoutError(f"empty {encoding} image: {width}x{height} pixels")
    row_bytes = width * fmt.channels * fmt.dtype.itemsize
    if step < row_bytes:
        raise ImageLayoutError(
            f"{encoding} image {width}x{height}: step {step} is smaller than one packed row "
            f"({row_bytes} bytes)")
    if data_length != step * height:
        raise ImageLayoutError(
            f"{encoding} image {width}x{height}: data has {data_length} bytes, "
            f"expected step*height = {step}*{height} = {step * height}")


def decode_image(encoding: str, height: int, width: int, step: int, is_bigendian: bool,
                 data: bytes | bytearray | memoryview | array.array) -> np.ndarray:
    """Zero-copy view of an image buffer: (H, W) for one channel, (H, W, C) otherwise.

    Channel order is the encoding's (bgr8 stays BGR); multi-byte values keep the message's
    byte order (the dtype says which), use ``to_rgb``/``to_depth`` for a normalised array.
    """
    fmt = _format(encoding)
    buffer = np.frombuffer(data, dtype=np.uint8)  # no copy: bytes, array.array('B'), memoryview
    check_layout(encoding, height, width, step, buffer.size)
    dtype = fmt.dtype.newbyteorder(">" if is_bigendian else "<")
    item = dtype.itemsize
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    if fmt.channels == 1:
        shape, strides = (height, width), (step, item)
    else:
        shape, strides = (height, width, fmt.channels), (step, fmt.channels * item, item)
    return np.ndarray(shape=shape, dtype=dtype, buffer=buffer, strides=strides)


def to_rgb(image: np.ndarray, encoding: str) -> np.ndarray:
    """Decoded colour image -> (H, W, 3) uint8 in RGB order (a view for rgb8/rgba8)."""
    if encoding not in COLOUR_ENCODINGS:
        raise UnsupportedEncodingError(encoding, COLOUR_ENCODINGS, role="colour")
    if encoding in ("rgb8", "rgba8"):
        return image[..., :3]
    if encoding in ("bgr8", "bgra8"):
        return image[..., 2::-1]
    return np.repeat(image[..., None], 3, axis=2)  # mono8 -> grey RGB


def to_depth(image: np.ndarray, encoding: str) -> np.ndarray:
    """Decoded depth image -> (H, W) native-endian uint16 (mm, 16UC1) or float32 (m, 32FC1).

    A view when the message is little-endian (every common camera); a byte-swapped copy
    otherwise. NaN/inf/0 stay as they are: hole handling is ``m4sam_ros.depth``'s job.
    """
    if encoding not in DEPTH_ENCODINGS:
        raise UnsupportedEncodingError(encoding, DEPTH_ENCODINGS, role="depth")
    native = SUPPORTED_ENCODINGS[encoding].dtype
    if image.dtype == native:
        return image
    return image.astype(native)


def encode_image(array: np.ndarray, encoding: str) -> EncodedImage:
    """numpy -> message fields, packed rows, little-endian (the native order on ROS targets).

    ``array`` must already be in the encoding's layout: (H, W) for one channel,
    (H, W, C) otherwise, with the encoding's dtype.
    """
    fmt = _format(encoding)
    expected_ndim = 2 if fmt.channels == 1 else 3
    if array.ndim != expected_ndim or (fmt.channels > 1 and array.shape[2] != fmt.channels):
        raise ValueError(
            f"{encoding} needs an array of shape {'(H, W)' if fmt.channels == 1 else f'(H, W, {fmt.channels})'}, "
            f"got {array.shape}")
    if array.dtype.newbyteorder("=") != fmt.dtype.newbyteorder("="):
        raise TypeError(f"{encoding} needs dtype {fmt.dtype}, got {array.dtype}")
    height, width = array.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"cannot encode an empty {width}x{height} image")
    little = np.ascontiguousarray(array, dtype=fmt.dtype.newbyteorder("<"))
    return EncodedImage(encoding=encoding, height=height, width=width,
                        step=width * fmt.channels * fmt.dtype.itemsize,
                        is_bigendian=False, data=little.tobytes())
