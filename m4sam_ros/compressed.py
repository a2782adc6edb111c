"""sensor_msgs/CompressedImage -> numpy with OpenCV, without cv_bridge and without rclpy.

Recordings and robots often carry image_transport's ``compressed`` colour and
``compressedDepth`` depth instead of raw images. The player, the offline runner and the
node all decode them here, so a compressed frame means the same everywhere. Functions
take any message-like object with ``format`` and ``data`` (an rclpy message, a rosbags
one, a test's stand-in) and return the arrays the tracker takes.

Wire formats (image_transport_plugins):

- ``compressed`` colour: ``format`` is ``"<encoding>; <jpeg|png> compressed <bgr8|rgb8|mono8>"``
  (older publishers write just ``"jpeg"`` or ``"png"``); ``data`` is a JPEG or PNG file.
  The codec is read from the file's magic bytes; the format only tells the channel order
  of the pixels in the file (``compressed rgb...`` = stored as RGB, otherwise BGR).
- ``compressedDepth``: ``format`` is ``"<16UC1|32FC1>; compressedDepth [png]"``; ``data`` is a
  12-byte little-endian header (int32 kind, float32 A, float32 B) and a 16-bit PNG:
  millimetres for 16UC1, quantised inverse depth for 32FC1 (metres = A / (v - B), v = 0:
  no depth). ``compressedDepth rvl`` is refused. A plain single-channel 16-bit PNG on the
  ``compressed`` transport is read as 16UC1 millimetres.

Bad input raises, never crashes: an unsupported format is an ``UnsupportedFormatError`` (an
``UnsupportedEncodingError``), undecodable data a ``CompressedImageError`` (an
``ImageLayoutError``), so code that handles bad raw images handles these too. Image sizes
are read from the file header before decoding and refused above ``MAX_PIXELS``, so a
corrupt message cannot make the decoder allocate gigabytes.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np

from m4sam_ros.encodings import ImageLayoutError, UnsupportedEncodingError

__all__ = [
    "COLOUR_FORMATS",
    "DEPTH_FORMATS",
    "MAX_PIXELS",
    "CompressedImageError",
    "CompressedInfo",
    "CompressedMessage",
    "UnsupportedFormatError",
    "check_compressed",
    "decode_colour",
    "decode_depth",
    "encode_colour",
    "encode_depth",
]

COLOUR_FORMATS = ("<encoding>; jpeg compressed bgr8", "<encoding>; png compressed bgr8", "jpeg", "png")
DEPTH_FORMATS = ("16UC1; compressedDepth png", "32FC1; compressedDepth png", "png (16-bit, one channel)")
MAX_PIXELS = 1 << 26  # 67 Mpx (8K x 8K); cameras send 0.3-8 Mpx
DEPTH_HEADER = struct.Struct("<iff")  # compressed_depth_image_transport's ConfigHeader
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8"
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic); C4, C8, CC are not frames
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


class CompressedMessage(Protocol):
    """What is read from a sensor_msgs/CompressedImage (its header is the caller's business)."""

    format: str
    data: Any  # bytes-like: bytes, array.array('B'), numpy uint8, memoryview


class CompressedImageError(ImageLayoutError):
    """The data of a compressed image cannot be decoded, or does not hold what its format says."""


class UnsupportedFormatError(UnsupportedEncodingError):
    """A CompressedImage ``format`` this package does not decode; ``encoding`` holds the format."""

    def __init__(self, fmt: str, role: str, hint: str = "") -> None:
        expected = COLOUR_FORMATS if role == "colour" else DEPTH_FORMATS
        super().__init__(fmt, expected, role=f"compressed {role}")
        self.args = (f"unsupported compressed {role} format {fmt!r}{hint}; expected "
                     + " or ".join(f"'{e}'" for e in expected),)


@dataclass(frozen=True)
class CompressedInfo:
    """What ``check_compressed`` learns from the format and the file header, without decoding."""

    codec: str                    # "jpeg" | "png"
    width: int
    height: int
    offset: int                   # where the image file starts in ``data`` (12 for compressedDepth)
    rgb_order: bool               # colour: pixels stored in RGB order (format "... compressed rgb8")
    depth_encoding: str | None    # depth: "16UC1" | "32FC1"; None for colour
    depth_params: tuple[float, float] | None = None  # 32FC1 compressedDepth: quantisation (A, B)


def _buffer(msg: CompressedMessage) -> np.ndarray:
    return np.frombuffer(msg.data, dtype=np.uint8)  # no copy for bytes, array.array, ndarray


def _probe_file(data: np.ndarray, offset: int, what: str) -> tuple[str, int, int, int | None, int | None]:
    """(codec, width, height, png bit depth, png colour type) from the file header at ``offset``."""
    head = data[offset:offset + 32].tobytes()
    if not head:
        raise CompressedImageError(f"{what}: no image data ({data.size} bytes)")
    if head.startswith(_PNG_MAGIC):
        if len(head) < 26 or head[12:16] != b"IHDR":
            raise CompressedImageError(f"{what}: PNG data is truncated before its IHDR header ({data.size} bytes)")
        width, height = struct.unpack(">II", head[16:24])
        return "png", width, height, head[24], head[25]
    if head.startswith(_JPEG_MAGIC):
        width, height = _jpeg_size(data[offset:].tobytes(), what)
        return "jpeg", width, height, None, None
    raise CompressedImageError(f"{what}: data is neither PNG nor JPEG (starts with {head[:8].hex(' ')})")


def _jpeg_size(data: bytes, what: str) -> tuple[int, int]:
    """Walk the JPEG marker segments up to the frame header, which holds the size."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise CompressedImageError(f"{what}: JPEG marker expected at byte {pos}: corrupt data")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # segments without a length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            break
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker in _JPEG_SOF:
            if pos + 9 > len(data):
                break
            height = int.from_bytes(data[pos + 5:pos + 7], "big")
            width = int.from_bytes(data[pos + 7:pos + 9], "big")
            return width, height
        pos += 2 + length
    raise CompressedImageError(f"{what}: JPEG data has no frame header (truncated or corrupt, {len(data)} bytes)")


def _check_size(width: int, height: int, what: str) -> None:
    if width <= 0 or height <= 0:
        raise CompressedImageError(f"{what}: file header says {width}x{height} pixels")
    if width * height > MAX_PIXELS:
        raise CompressedImageError(f"{what}: file header says {width}x{height} pixels, more than "
                                   f"{MAX_PIXELS} (corrupt data?); refused")


def _colour_info(msg: CompressedMessage) -> CompressedInfo:
    fmt = str(msg.format).strip()
    lowered = fmt.lower()
    if "compresseddepth" in lowered:
        raise UnsupportedFormatError(fmt, "colour", " (a compressedDepth stream: is this the depth topic?)")
    if ";" in lowered:
        codec_word = lowered.split(";", 1)[1].split()
        codec_word = codec_word[0] if codec_word else ""
        rgb_order = "compressed rgb" in lowered
    else:
        codec_word, rgb_order = lowered, False
    if codec_word not in ("", "jpeg", "jpg", "png"):
        raise UnsupportedFormatError(fmt, "colour")
    data = _buffer(msg)
    what = f"compressed colour ({fmt or 'no format'})"
    codec, width, height, _, _ = _probe_file(data, 0, what)
    _check_size(width, height, what)
    return CompressedInfo(codec=codec, width=width, height=height, offset=0, rgb_order=rgb_order,
                          depth_encoding=None)


def _depth_info(msg: CompressedMessage) -> CompressedInfo:
    fmt = str(msg.format).strip()
    data = _buffer(msg)
    what = f"compressed depth ({fmt or 'no format'})"
    if "compresseddepth" not in fmt.lower():  # the plain 'compressed' transport: only a 16-bit PNG is depth
        if ";" in fmt and fmt.split(";", 1)[0].strip().upper() not in ("16UC1", "MONO16"):
            raise UnsupportedFormatError(fmt, "depth", " (a colour image: is this the colour topic?)")
        codec, width, height, bits, colour_type = _probe_file(data, 0, what)
        if codec != "png":
            raise UnsupportedFormatError(fmt, "depth", " (JPEG cannot carry metric depth)")
        if bits != 16 or colour_type != 0:
            raise CompressedImageError(f"{what}: PNG is {bits}-bit colour type {colour_type}; depth needs a "
                                       "16-bit one-channel PNG (millimetres) or the compressedDepth transport")
        _check_size(width, height, what)
        return CompressedInfo(codec=codec, width=width, height=height, offset=0, rgb_order=False,
                              depth_encoding="16UC1")
    encoding, _, transport = fmt.partition(";")
    encoding = encoding.strip().upper()
    method = transport.strip().split()[1:] if transport.strip() else []
    if method == ["rvl"]:
        raise UnsupportedFormatError(fmt, "depth", " (RVL is not decoded here: set the publisher's "
                                     "compressedDepth format to png)")
    if encoding not in ("16UC1", "32FC1") or method not in ([], ["png"]):
        raise UnsupportedFormatError(fmt, "depth")
    if data.size <= DEPTH_HEADER.size:
        raise CompressedImageError(f"{what}: {data.size} bytes, not even the {DEPTH_HEADER.size}-byte "
                                   "compressedDepth header and an image")
    _, quant_a, quant_b = DEPTH_HEADER.unpack(data[:DEPTH_HEADER.size].tobytes())
    codec, width, height, bits, colour_type = _probe_file(data, DEPTH_HEADER.size, what)
    if codec != "png" or bits != 16 or colour_type != 0:
        raise CompressedImageError(f"{what}: compressedDepth needs a 16-bit one-channel PNG after its header, "
                                   f"got {codec} ({bits}-bit, colour type {colour_type})")
    _check_size(width, height, what)
    params = None
    if encoding == "32FC1":
        if not (np.isfinite(quant_a) and np.isfinite(quant_b) and quant_a != 0.0):
            raise CompressedImageError(f"{what}: quantisation parameters A={quant_a}, B={quant_b} are unusable")
        params = (quant_a, quant_b)
    return CompressedInfo(codec=codec, width=width, height=height, offset=DEPTH_HEADER.size, rgb_order=False,
                          depth_encoding=encoding, depth_params=params)


def check_compressed(msg: CompressedMessage, role: str) -> CompressedInfo:
    """Cheap validity check for a callback (format and file header, no decoding).

    ``role`` is "colour" or "depth". Raises UnsupportedEncodingError or CompressedImageError
    naming what is wrong; decoding can still fail later on corrupt pixel data.
    """
    if role not in ("colour", "depth"):
        raise ValueError(f"role must be 'colour' or 'depth', got {role!r}")
    return _colour_info(msg) if role == "colour" else _depth_info(msg)


def _imdecode(data: np.ndarray, info: CompressedInfo, flags: int, what: str) -> np.ndarray:
    try:
        image = cv2.imdecode(data[info.offset:], flags | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error as exc:
        raise CompressedImageError(f"{what}: OpenCV cannot decode it: {exc}") from None
    if image is None:
        raise CompressedImageError(f"{what}: {info.codec.upper()} data is corrupt or truncated "
                                   f"({data.size} bytes); frame dropped")
    if image.shape[:2] != (info.height, info.width):
        raise CompressedImageError(f"{what}: decoded {image.shape[1]}x{image.shape[0]}, header said "
                                   f"{info.width}x{info.height}")
    return image


def decode_colour(msg: CompressedMessage) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a ``compressed`` colour message (mono comes out grey RGB)."""
    info = _colour_info(msg)
    image = _imdecode(_buffer(msg), info, cv2.IMREAD_COLOR, f"compressed colour ({msg.format})")
    return image if info.rgb_order else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_depth(msg: CompressedMessage) -> np.ndarray:
    """(H, W) uint16 millimetres (16UC1) or float32 metres with NaN holes (32FC1)."""
    info = _depth_info(msg)
    what = f"compressed depth ({msg.format})"
    image = _imdecode(_buffer(msg), info, cv2.IMREAD_UNCHANGED, what)
    if image.dtype != np.uint16 or image.ndim != 2:
        raise CompressedImageError(f"{what}: decoded {image.dtype} of shape {image.shape}, expected one 16-bit channel")
    if info.depth_params is None:
        return image
    quant_a, quant_b = info.depth_params
    with np.errstate(divide="ignore", invalid="ignore"):
        metres = np.float32(quant_a) / (image.astype(np.float32) - np.float32(quant_b))
    metres[image == 0] = np.nan
    return metres


def encode_colour(rgb: np.ndarray, codec: str = "jpeg", quality: int = 95) -> tuple[str, bytes]:
    """(format, data) of a ``compressed`` colour message, as image_transport writes them."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"encode_colour needs (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
    if codec not in ("jpeg", "png"):
        raise ValueError(f"codec must be 'jpeg' or 'png', got {codec!r}")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if codec == "jpeg" else []
    ok, encoded = cv2.imencode(".jpg" if codec == "jpeg" else ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {rgb.shape[1]}x{rgb.shape[0]} image as {codec}")
    return f"rgb8; {codec} compressed bgr8", encoded.tobytes()


def encode_depth(depth: np.ndarray, depth_max: float = 10.0, quantization: float = 100.0) -> tuple[str, bytes]:
    """(format, data) of a ``compressedDepth`` PNG message.

    uint16 millimetres are stored losslessly; float32 metres as quantised inverse depth
    (the transport's defaults: ``depth_max`` 10 m, ``quantization`` 100), with non-finite,
    non-positive and >= ``depth_max`` values as holes.
    """
    if depth.ndim != 2 or depth.dtype not in (np.uint16, np.float32):
        raise ValueError(f"encode_depth needs (H, W) uint16 mm or float32 m, got {depth.shape} {depth.dtype}")
    if depth.dtype == np.uint16:
        encoding, header, stored = "16UC1", DEPTH_HEADER.pack(0, 0.0, 0.0), depth
    else:
        quant_a = np.float32(quantization * (quantization + 1.0))
        quant_b = np.float32(1.0 - quant_a / depth_max)
        valid = np.isfinite(depth) & (depth > 0) & (depth < depth_max)
        with np.errstate(divide="ignore", invalid="ignore"):
            inverse = np.where(valid, quant_a / depth + quant_b, 0.0)
        stored = np.clip(inverse, 0, 65535).astype(np.uint16)
        encoding, header = "32FC1", DEPTH_HEADER.pack(0, float(quant_a), float(quant_b))
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(stored))
    if not ok:
        raise ValueError(f"OpenCV could not encode a {depth.shape[1]}x{depth.shape[0]} depth image as PNG")
    return f"{encoding}; compressedDepth png", header + encoded.tobytes()
