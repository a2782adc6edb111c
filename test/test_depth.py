"""The shared depth normalisation: ranges, polarity, holes, dtypes."""
import numpy as np
import pytest

from m4sam_ros.depth import DepthConfig, depth_to_metres, normalize_depth


def test_uint16_millimetres_to_metres_with_holes_as_nan():
    depth = np.array([[0, 1000], [2500, 65535]], dtype=np.uint16)
    metres = depth_to_metres(depth)
    assert metres.dtype == np.float32 and metres.shape == (2, 2)
    assert np.isnan(metres[0, 0])
    np.testing.assert_allclose(metres[[0, 1, 1], [1, 0, 1]], [1.0, 2.5, 65.535], rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_metres_holes_become_nan(dtype):
    depth = np.array([[0.0, np.nan, np.inf, -1.0, -np.inf, 1.5]], dtype=dtype)
    metres = depth_to_metres(depth)
    assert metres.dtype == np.float32
    assert np.isnan(metres[0, :5]).all()
    assert metres[0, 5] == pytest.approx(1.5)


def test_metric_range_maps_linearly_near_bright():
    config = DepthConfig(min_m=1.0, max_m=5.0)
    depth = np.array([[1.0, 3.0, 5.0]], dtype=np.float32)
    normalised, valid = normalize_depth(depth, config)
    np.testing.assert_allclose(normalised, [[1.0, 0.5, 0.0]], atol=1e-6)
    assert valid.all()


def test_polarity_flips_and_holes_fill_with_far_value():
    depth = np.array([[0, 1000, 5000, np.iinfo(np.uint16).max]], dtype=np.uint16)  # hole, near, far, out of range
    bright, valid = normalize_depth(depth, DepthConfig(min_m=1.0, max_m=5.0, near_is_bright=True))
    dark, valid_dark = normalize_depth(depth, DepthConfig(min_m=1.0, max_m=5.0, near_is_bright=False))
    assert valid.tolist() == [[False, True, True, False]] and (valid == valid_dark).all()
    np.testing.assert_allclose(bright, [[0.0, 1.0, 0.0, 0.0]], atol=1e-6)  # holes = far = 0
    np.testing.assert_allclose(dark, [[1.0, 0.0, 1.0, 1.0]], atol=1e-6)  # holes = far = 1


def test_all_hole_kinds_never_nan_and_stay_in_unit_range():
    rng = np.random.default_rng(0)
    depth = rng.uniform(-2.0, 20.0, size=(48, 64)).astype(np.float32)
    depth[rng.random(depth.shape) < 0.2] = np.nan
    depth[rng.random(depth.shape) < 0.1] = np.inf
    depth[rng.random(depth.shape) < 0.1] = 0.0
    config = DepthConfig()
    normalised, valid = normalize_depth(depth, config)
    assert normalised.dtype == np.float32 and valid.dtype == bool
    assert np.isfinite(normalised).all()
    assert normalised.min() >= 0.0 and normalised.max() <= 1.0
    with np.errstate(invalid="ignore"):
        expected_valid = np.isfinite(depth) & (depth >= config.min_m) & (depth <= config.max_m)
    assert (valid == expected_valid).all()
    assert (normalised[~valid] == 0.0).all()


def test_uint8_benchmark_png_passes_through_with_polarity():
    depth = np.array([[0, 51, 255]], dtype=np.uint8)
    bright, valid = normalize_depth(depth)
    np.testing.assert_allclose(bright, [[0.0, 0.2, 1.0]], atol=1e-6)
    assert valid.tolist() == [[False, True, True]]
    dark, _ = normalize_depth(depth, DepthConfig(near_is_bright=False))
    np.testing.assert_allclose(dark, [[1.0, 0.8, 0.0]], atol=1e-6)  # hole still far


def test_single_channel_third_axis_is_accepted():
    depth = np.full((4, 5, 1), 2000, dtype=np.uint16)
    normalised, valid = normalize_depth(depth)
    assert normalised.shape == (4, 5) and valid.all()


@pytest.mark.parametrize("depth", [np.zeros((4, 4), np.int32), np.zeros((4, 4), np.float16), np.zeros((4, 4), bool)])
def test_unsupported_dtype_is_refused_with_names(depth):
    with pytest.raises(ValueError, match=rf"{depth.dtype}.*uint16"):
        normalize_depth(depth)


@pytest.mark.parametrize("shape", [(4,), (4, 4, 3), (1, 4, 4, 1)])
def test_wrong_ndim_is_refused(shape):
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        normalize_depth(np.zeros(shape, np.uint16))


def test_uint8_has_no_metres():
    with pytest.raises(ValueError, match="uint8"):
        depth_to_metres(np.zeros((2, 2), np.uint8))


def test_bad_range_config_is_refused():
    with pytest.raises(ValueError, match="min_m"):
        DepthConfig(min_m=3.0, max_m=2.0)


def test_log_scale_gives_every_distance_ratio_the_same_contrast():
    """Log depth: the ends map to 1 and 0, and a 10 % step reads the same near and far (linear
    over 0.1-10 m squeezes a table-top's 0.2-0.7 m into a few hundredths)."""
    config = DepthConfig(min_m=0.1, max_m=10.0, scale="log")
    depth = np.array([[0.1, 0.25, 0.275, 2.5, 2.75, 10.0]], dtype=np.float32)
    normalised, valid = normalize_depth(depth, config)
    assert valid.all()
    assert normalised[0, 0] == pytest.approx(1.0) and normalised[0, 5] == pytest.approx(0.0, abs=1e-6)
    near_step, far_step = normalised[0, 1] - normalised[0, 2], normalised[0, 3] - normalised[0, 4]
    assert near_step == pytest.approx(far_step, rel=1e-4) and near_step == pytest.approx(np.log(1.1) / np.log(100))
    linear, _ = normalize_depth(depth, DepthConfig(min_m=0.1, max_m=10.0))
    assert near_step > 2 * (linear[0, 1] - linear[0, 2])


@pytest.mark.parametrize("scale", ["linear", "log"])
def test_metres_inverts_nearness(scale):
    config = DepthConfig(min_m=0.2, max_m=6.0, scale=scale)
    metres = np.array([0.2, 0.7, 3.0, 6.0], dtype=np.float32)
    np.testing.assert_allclose(config.metres(config.nearness(metres)), metres, rtol=1e-5)


def test_bad_scale_config_is_refused():
    with pytest.raises(ValueError, match="scale"):
        DepthConfig(scale="sqrt")
    with pytest.raises(ValueError, match="min_m > 0"):
        DepthConfig(min_m=0.0, scale="log")
