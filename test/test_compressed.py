"""Compressed images (image_transport 'compressed' and 'compressedDepth') decode, or fail clearly."""
import struct

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage
from std_msgs.msg import Header

from m4sam_ros.compressed import (MAX_PIXELS, CompressedImageError, UnsupportedFormatError, check_compressed,
                                  decode_colour, decode_depth, encode_colour, encode_depth)
from m4sam_ros.encodings import ImageLayoutError, UnsupportedEncodingError
from m4sam_ros.learn.synthetic import SyntheticConfig, generate_video
from m4sam_ros.ros.conversions import check_image, depth_from_msg, image_msg, rgb_from_msg
from m4sam_ros.ros.frames import prepare_frame


@pytest.fixture(scope="module")
def frame():
    return next(generate_video(SyntheticConfig(width=64, height=48, frames=1, seed=5)))


def compressed(fmt: str, data: bytes) -> CompressedImage:
    return CompressedImage(header=Header(frame_id="cam"), format=fmt, data=data)


def test_png_colour_round_trip_is_exact(frame) -> None:
    fmt, data = encode_colour(frame.rgb, "png")
    assert fmt == "rgb8; png compressed bgr8"
    decoded = rgb_from_msg(compressed(fmt, data))
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, frame.rgb)


def test_jpeg_colour_round_trip_is_close(frame) -> None:
    fmt, data = encode_colour(frame.rgb, "jpeg", quality=95)
    decoded = decode_colour(compressed(fmt, data))
    assert decoded.shape == frame.rgb.shape
    assert np.abs(decoded.astype(int) - frame.rgb).mean() < 4.0  # channel order right: a swap costs ~50


def test_old_plain_format_and_rgb_stored_files(frame) -> None:
    """'jpeg'/'png' alone (older publishers) means BGR in the file; 'compressed rgb8' means RGB."""
    bgr_file = cv2.imencode(".png", cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
    assert np.array_equal(decode_colour(compressed("png", bgr_file)), frame.rgb)
    rgb_file = cv2.imencode(".png", frame.rgb)[1].tobytes()
    assert np.array_equal(decode_colour(compressed("rgb8; png compressed rgb8", rgb_file)), frame.rgb)


def test_mono_jpeg_comes_out_grey_rgb() -> None:
    grey = np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1))
    decoded = decode_colour(compressed("mono8; jpeg compressed mono8", cv2.imencode(".jpg", grey)[1].tobytes()))
    assert decoded.shape == (48, 64, 3) and np.abs(decoded[..., 0].astype(int) - grey).max() < 8


def test_compressed_depth_16bit_png_round_trip(frame) -> None:
    fmt, data = encode_depth(frame.depth_mm)
    assert fmt == "16UC1; compressedDepth png" and len(data) > 12
    decoded = depth_from_msg(compressed(fmt, data))
    assert decoded.dtype == np.uint16 and np.array_equal(decoded, frame.depth_mm)
    # the older format string without the codec name is png too
    assert np.array_equal(decode_depth(compressed("16UC1; compressedDepth", data)), frame.depth_mm)


def test_compressed_depth_32fc1_is_quantised_inverse_depth(frame) -> None:
    metres = frame.depth_mm.astype(np.float32) / 1000.0
    metres[frame.depth_mm == 0] = np.nan
    fmt, data = encode_depth(metres)
    decoded = decode_depth(compressed(fmt, data))
    assert fmt == "32FC1; compressedDepth png" and decoded.dtype == np.float32
    holes = np.isnan(metres)
    assert np.array_equal(np.isnan(decoded), holes)
    assert np.max(np.abs(decoded[~holes] - metres[~holes]) / metres[~holes]) < 0.01


def test_plain_16bit_png_on_the_compressed_transport_is_depth(frame) -> None:
    data = cv2.imencode(".png", frame.depth_mm)[1].tobytes()
    assert np.array_equal(decode_depth(compressed("16UC1; png compressed mono16", data)), frame.depth_mm)
    eight_bit = cv2.imencode(".png", (frame.depth_mm // 256).astype(np.uint8))[1].tobytes()
    with pytest.raises(CompressedImageError, match="16-bit one-channel PNG"):
        decode_depth(compressed("png", eight_bit))


def test_check_reads_the_size_without_decoding(frame) -> None:
    for codec in ("jpeg", "png"):
        info = check_compressed(compressed(*encode_colour(frame.rgb, codec)), "colour")
        assert (info.codec, info.width, info.height) == (codec, 64, 48)
    info = check_compressed(compressed(*encode_depth(frame.depth_mm)), "depth")
    assert (info.codec, info.width, info.height, info.depth_encoding, info.offset) == ("png", 64, 48, "16UC1", 12)


@pytest.mark.parametrize("role", ["colour", "depth"])
def test_malformed_data_gives_clear_errors(frame, role) -> None:
    fmt, data = encode_colour(frame.rgb, "jpeg") if role == "colour" else encode_depth(frame.depth_mm)
    decode = decode_colour if role == "colour" else decode_depth
    body = 0 if role == "colour" else 12
    cases = {
        "empty": b"",
        "garbage": b"not an image at all" * 8,
        "truncated": data[:len(data) // 2],
        "corrupt pixels": data[:body + 40] + bytes(len(data) - body - 40),
        "header only": data[:body + 8],
    }
    for name, bad in cases.items():
        msg = compressed(fmt, bad)
        with pytest.raises(ImageLayoutError) as caught:  # CompressedImageError is one
            decode(msg)
        assert isinstance(caught.value, CompressedImageError), name
        assert fmt in str(caught.value) or "compressed" in str(caught.value), name


def test_unsupported_formats_name_what_is_expected(frame) -> None:
    _, depth_data = encode_depth(frame.depth_mm)
    with pytest.raises(UnsupportedEncodingError, match="RVL is not decoded here"):
        decode_depth(compressed("16UC1; compressedDepth rvl", depth_data))
    with pytest.raises(UnsupportedFormatError, match="is this the depth topic"):
        decode_colour(compressed("16UC1; compressedDepth png", depth_data))
    jpeg = encode_colour(frame.rgb, "jpeg")
    with pytest.raises(UnsupportedFormatError, match="is this the colour topic"):
        decode_depth(compressed(*jpeg))
    with pytest.raises(UnsupportedFormatError, match="JPEG cannot carry metric depth"):
        decode_depth(compressed("jpeg", jpeg[1]))
    with pytest.raises(UnsupportedFormatError, match="'jpeg' or 'png'"):
        decode_colour(compressed("rgb8; tiff compressed bgr8", b"II*\x00"))
    with pytest.raises(UnsupportedFormatError, match="expected '16UC1; compressedDepth png'"):
        decode_depth(compressed("8UC1; compressedDepth png", depth_data))


def test_a_decompression_bomb_is_refused_before_decoding() -> None:
    """A PNG header claiming 100k x 100k pixels must not reach the decoder (30 GB of RGB)."""
    ihdr = struct.pack(">II5B", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\x00" * 4
    with pytest.raises(CompressedImageError, match=f"more than {MAX_PIXELS}"):
        check_compressed(compressed("png", bomb), "colour")


def test_size_mismatch_between_header_and_pixels_is_an_error(frame) -> None:
    _, data = encode_colour(frame.rgb, "png")
    lying = bytearray(data)
    lying[16:24] = struct.pack(">II", 65, 48)  # IHDR width 65 (its CRC no longer matches either)
    with pytest.raises(CompressedImageError):
        decode_colour(compressed("png", bytes(lying)))


def test_check_image_and_prepare_frame_take_compressed_messages(frame) -> None:
    """The node's own path: the callback check and the worker's decoding accept either kind."""
    rgb = compressed(*encode_colour(frame.rgb, "png"))
    depth = compressed(*encode_depth(frame.depth_mm))
    check_image(rgb, "colour")
    check_image(depth, "depth")
    with pytest.raises(UnsupportedEncodingError):
        check_image(rgb, "depth")
    prepared = prepare_frame(rgb, depth, None)
    assert np.array_equal(prepared.rgb, frame.rgb) and np.array_equal(prepared.depth, frame.depth_mm)
    assert prepared.notes == []
    raw = prepare_frame(image_msg(Header(), frame.rgb, "rgb8"), image_msg(Header(), frame.depth_mm, "16UC1"), None)
    assert np.array_equal(raw.rgb, prepared.rgb) and np.array_equal(raw.depth, prepared.depth)


def test_corrupt_compressed_depth_makes_the_frame_rgb_only(frame) -> None:
    rgb = compressed(*encode_colour(frame.rgb, "png"))
    fmt, data = encode_depth(frame.depth_mm)
    broken = compressed(fmt, data[:12 + 40] + bytes(len(data) - 52))
    check_image(broken, "depth")  # the header is intact: only decoding can tell
    prepared = prepare_frame(rgb, broken, None)
    assert prepared.depth is None and [n.kind for n in prepared.notes] == ["depth_decode"]
    assert "RGB-only" in prepared.notes[0].message
