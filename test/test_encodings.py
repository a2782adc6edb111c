"""sensor_msgs image encodings <-> numpy: every encoding, padding, byte order, refusals."""
import array

import numpy as np
import pytest

from m4sam_ros.encodings import (
    SUPPORTED_ENCODINGS,
    ImageLayoutError,
    UnsupportedEncodingError,
    check_layout,
    decode_image,
    encode_image,
    to_depth,
    to_rgb,
)

RNG = np.random.default_rng(0)
H, W = 5, 7


def _sample(encoding: str) -> np.ndarray:
    fmt = SUPPORTED_ENCODINGS[encoding]
    shape = (H, W) if fmt.channels == 1 else (H, W, fmt.channels)
    if fmt.dtype == np.float32:
        return RNG.uniform(0.1, 9.0, size=shape).astype(np.float32)
    return RNG.integers(0, np.iinfo(fmt.dtype).max, size=shape, dtype=fmt.dtype)


def _padded_buffer(array_: np.ndarray, pad: int, big_endian: bool = False) -> tuple[int, bytes]:
    """Pack rows with `pad` junk bytes after each, as a driver with an aligned step would."""
    order = ">" if big_endian else "<"
    rows = np.ascontiguousarray(array_, dtype=array_.dtype.newbyteorder(order)).reshape(array_.shape[0], -1)
    raw = rows.view(np.uint8)
    junk = np.full((raw.shape[0], pad), 0xAB, dtype=np.uint8)
    return raw.shape[1] + pad, np.concatenate([raw, junk], axis=1).tobytes()


@pytest.mark.parametrize("encoding", list(SUPPORTED_ENCODINGS))
@pytest.mark.parametrize("pad", [0, 3, 16])
def test_decode_every_encoding_with_row_padding(encoding, pad):
    original = _sample(encoding)
    step, data = _padded_buffer(original, pad)
    decoded = decode_image(encoding, H, W, step, False, data)
    np.testing.assert_array_equal(decoded, original)
    assert decoded.shape == original.shape


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
@pytest.mark.parametrize("pad", [0, 2])
def test_big_endian_depth_decodes_to_native_values(encoding, pad):
    original = _sample(encoding)
    step, data = _padded_buffer(original, pad, big_endian=True)
    decoded = decode_image(encoding, H, W, step, True, data)
    depth = to_depth(decoded, encoding)
    assert depth.dtype == SUPPORTED_ENCODINGS[encoding].dtype  # native order, ready for numpy maths
    np.testing.assert_array_equal(depth, original)
    # The same bytes read as little-endian would be different numbers: the flag matters.
    assert not np.array_equal(to_depth(decode_image(encoding, H, W, step, False, data), encoding), original)


def test_decode_is_zero_copy_over_ros_array_buffer():
    original = _sample("rgb8")
    step, data = _padded_buffer(original, 4)
    buffer = array.array("B", data)  # what rclpy hands a subscriber for uint8[]
    decoded = decode_image("rgb8", H, W, step, False, buffer)
    assert np.shares_memory(decoded, np.frombuffer(buffer, dtype=np.uint8))
    rgb = to_rgb(decoded, "rgb8")
    assert np.shares_memory(rgb, np.frombuffer(buffer, dtype=np.uint8))
    depth_raw = _sample("16UC1")
    step16, data16 = _padded_buffer(depth_raw, 0)
    buf16 = array.array("B", data16)
    depth = to_depth(decode_image("16UC1", H, W, step16, False, buf16), "16UC1")
    assert np.shares_memory(depth, np.frombuffer(buf16, dtype=np.uint8))


@pytest.mark.parametrize("encoding,order", [("rgb8", [0, 1, 2]), ("bgr8", [2, 1, 0]),
                                             ("rgba8", [0, 1, 2]), ("bgra8", [2, 1, 0])])
def test_to_rgb_channel_order(encoding, order):
    original = _sample(encoding)
    step, data = _padded_buffer(original, 0)
    rgb = to_rgb(decode_image(encoding, H, W, step, False, data), encoding)
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, original[..., order])


def test_mono8_becomes_grey_rgb():
    original = _sample("mono8")
    rgb = to_rgb(decode_image("mono8", H, W, W, False, original.tobytes()), "mono8")
    assert rgb.shape == (H, W, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], original)


@pytest.mark.parametrize("encoding", list(SUPPORTED_ENCODINGS))
def test_encode_decode_round_trip(encoding):
    original = _sample(encoding)
    msg = encode_image(original, encoding)
    fmt = SUPPORTED_ENCODINGS[encoding]
    assert (msg.height, msg.width, msg.encoding, msg.is_bigendian) == (H, W, encoding, False)
    assert msg.step == W * fmt.channels * fmt.dtype.itemsize
    assert len(msg.data) == msg.step * msg.height
    decoded = decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian, msg.data)
    np.testing.assert_array_equal(decoded, original)


def test_encode_packs_non_contiguous_input():
    original = _sample("rgb8")
    view = original[:, ::2, ::-1]  # strided, reversed channels
    msg = encode_image(view, "bgr8")
    decoded = decode_image("bgr8", msg.height, msg.width, msg.step, False, msg.data)
    np.testing.assert_array_equal(decoded, view)


@pytest.mark.parametrize("encoding", ["yuv422", "bayer_rggb8", "16UC3", "mono16", "", "RGB8"])
def test_unsupported_encoding_is_refused_by_name(encoding):
    with pytest.raises(UnsupportedEncodingError) as err:
        decode_image(encoding, H, W, W * 3, False, bytes(H * W * 3))
    assert repr(encoding) in str(err.value) and "rgb8" in str(err.value)
    assert err.value.encoding == encoding


def test_role_specific_refusals():
    depth = decode_image("16UC1", H, W, W * 2, False, bytes(H * W * 2))
    with pytest.raises(UnsupportedEncodingError, match="colour encoding '16UC1'"):
        to_rgb(depth, "16UC1")
    rgb = decode_image("rgb8", H, W, W * 3, False, bytes(H * W * 3))
    with pytest.raises(UnsupportedEncodingError, match="depth encoding 'rgb8'.*16UC1, 32FC1"):
        to_depth(rgb, "rgb8")


@pytest.mark.parametrize("height,width,step,length,message", [
    (0, W, W * 3, 0, "empty"),
    (H, 0, 0, 0, "empty"),
    (H, W, W * 3 - 1, (W * 3 - 1) * H, "smaller than one packed row"),
    (H, W, W * 3, W * 3 * H - 1, "expected step\\*height"),
    (H, W, W * 3, W * 3 * H + 5, "expected step\\*height"),
])
def test_inconsistent_layouts_are_refused(height, width, step, length, message):
    with pytest.raises(ImageLayoutError, match=message):
        check_layout("rgb8", height, width, step, length)
    with pytest.raises(ImageLayoutError, match=message):
        decode_image("rgb8", height, width, step, False, bytes(length))


def test_encode_refuses_wrong_shape_and_dtype():
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        encode_image(np.zeros((H, W), np.uint8), "rgb8")
    with pytest.raises(TypeError, match="float32"):
        encode_image(np.zeros((H, W), np.float64), "32FC1")
    with pytest.raises(ValueError, match="empty"):
        encode_image(np.zeros((0, W), np.uint8), "mono8")


def test_nan_and_inf_depth_pass_through_unchanged():
    depth = np.array([[np.nan, np.inf], [-np.inf, 1.5]], dtype=np.float32)
    msg = encode_image(depth, "32FC1")
    out = to_depth(decode_image("32FC1", 2, 2, msg.step, False, msg.data), "32FC1")
    assert np.isnan(out[0, 0]) and np.isposinf(out[0, 1]) and np.isneginf(out[1, 0]) and out[1, 1] == 1.5
