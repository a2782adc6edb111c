"""Rendered RGB-D scenes (real PyBullet, tiny images): sensor model, metric depth, GT, files, splits."""
from dataclasses import replace

import numpy as np
import pytest

from m4sam_ros.learn.sensor_model import (SensorConfig, apply_depth_sensor, depth_frame_dropped, depth_noise_sigma,
                                          exposure_gains, stereo_shadow)

# only the artefact under test: no random holes anywhere
QUIET = SensorConfig(edge_hole_prob=0.0, dark_hole_prob=0.0, saturated_luminance=256.0, speckle_fraction=0.0,
                     shiny_hole_fraction=0.0)
GREY = np.full((120, 160, 3), 128, np.uint8)


def _plane(z: float, shape=(120, 160)) -> np.ndarray:
    return np.full(shape, z, np.float32)


# ---- sensor model ---------------------------------------------------------------------------------
def test_depth_noise_grows_with_distance_squared():
    stds = {}
    for z in (1.0, 2.0):
        depth = apply_depth_sensor(_plane(z, (200, 200)), np.full((200, 200, 3), 128, np.uint8), 150.0,
                                   np.random.default_rng(0), QUIET)
        valid = depth > 0
        assert valid.mean() > 0.9  # only the left border band is lost on a plane
        stds[z] = float(depth[valid].std()) / 1000.0
    assert stds[2.0] / stds[1.0] == pytest.approx(4.0, rel=0.15)
    assert stds[1.0] == pytest.approx(float(depth_noise_sigma(np.float32(1.0), QUIET)), rel=0.1)


def test_min_and_max_range_become_holes():
    rng = np.random.default_rng(1)
    assert not apply_depth_sensor(_plane(0.1), GREY, 130.0, rng, QUIET).any()  # closer than min_range_m
    assert not apply_depth_sensor(_plane(QUIET.max_range_m + 1.0), GREY, 130.0, rng, QUIET).any()
    assert (apply_depth_sensor(_plane(1.0), GREY, 130.0, rng, QUIET) > 0).mean() > 0.9


def test_stereo_shadow_is_left_of_a_near_object():
    fx, near, far = 200.0, 0.5, 2.0
    depth = _plane(far)
    depth[40:80, 80:110] = near
    band = fx * QUIET.baseline_m * (1 / near - 1 / far)  # 15 px
    border = fx * QUIET.baseline_m / far  # 5 px: the image's left-most columns
    shadow = stereo_shadow(depth, fx, QUIET.baseline_m)
    rows = slice(40, 80)
    assert shadow[rows, 80 - int(band) + 1:80].all()  # the band beside the near edge, on the left
    assert not shadow[rows, 110:].any()  # nothing on the right side
    assert not shadow[rows, 80:110].any()  # the near object itself is seen by both imagers
    assert not shadow[rows, int(border) + 1:80 - int(band) - 1].any()
    assert shadow[:, :int(border)].all() and not shadow[:40, int(border) + 1:].any()
    sensed = apply_depth_sensor(depth, GREY, fx, np.random.default_rng(0), QUIET)
    assert not sensed[rows, 80 - int(band) + 1:80].any() and sensed[rows, 110:].all()


def test_dark_and_saturated_surfaces_lose_depth():
    config = replace(QUIET, dark_hole_prob=0.6, saturated_luminance=250.0)
    rgb = GREY.copy()
    rgb[:, 40:80] = 5  # black object
    rgb[:, 100:140] = 255  # specular highlight
    depth = apply_depth_sensor(_plane(1.0), rgb, 130.0, np.random.default_rng(2), config)
    assert (depth[:, 40:80] == 0).mean() == pytest.approx(0.6, abs=0.05)
    assert not depth[:, 100:140].any()
    assert depth[:, 10:40].all() and depth[:, 80:100].all()


def test_discontinuities_leave_holes_and_shiny_surfaces_lose_patches():
    depth = _plane(2.0)
    depth[30:90, 60:100] = 1.0
    edges_only = replace(QUIET, edge_hole_prob=1.0)
    sensed = apply_depth_sensor(depth, GREY, 130.0, np.random.default_rng(0), edges_only)
    assert not sensed[60, 99:101].any()  # both sides of the right-hand edge
    assert sensed[60, 70:90].all()
    shiny = np.zeros(depth.shape, bool)
    shiny[30:90, 60:100] = True
    sensed = apply_depth_sensor(depth, GREY, 130.0, np.random.default_rng(0), replace(QUIET, shiny_hole_fraction=0.3),
                                shiny)
    assert (sensed[shiny] == 0).mean() == pytest.approx(0.3, abs=0.1) and sensed[:, 10:50].all()


def test_same_seed_same_noise_and_dropped_frames():
    run = [apply_depth_sensor(_plane(1.5), GREY, 130.0, np.random.default_rng(seed), SensorConfig())
           for seed in (7, 7, 8)]
    assert np.array_equal(run[0], run[1]) and not np.array_equal(run[0], run[2])
    rng = np.random.default_rng(0)
    assert depth_frame_dropped(rng, replace(QUIET, drop_prob=1.0))
    assert not depth_frame_dropped(rng, replace(QUIET, drop_prob=0.0))
    drops = np.mean([depth_frame_dropped(rng, replace(QUIET, drop_prob=0.2)) for _ in range(2000)])
    assert drops == pytest.approx(0.2, abs=0.03)


def test_exposure_jumps_and_settles_back():
    steady = exposure_gains(np.random.default_rng(0), 200, replace(QUIET, exposure_jump_prob=0.0))
    assert np.allclose(steady, 1.0, atol=0.05)
    jumpy = exposure_gains(np.random.default_rng(0), 200, replace(QUIET, exposure_jump_prob=0.1, exposure_jump=1.6))
    assert np.abs(np.diff(jumpy)).max() > 0.1 and np.median(np.abs(jumpy - 1.0)) < 0.1
