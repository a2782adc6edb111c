"""Rendered RGB-D scenes (real PyBullet, tiny images): sensor model, metric depth, GT, files, splits."""
import json
from dataclasses import replace

import numpy as np
import pybullet
import pytest

from m4sam_ros import cli
from m4sam_ros.learn.datasets import load_frame, open_dataset
from m4sam_ros.learn.scenes.assets import NAMED, object_pool
from m4sam_ros.learn.scenes.camera import CameraTrack, intrinsics_for, look_at, projection_matrix, view_matrix
from m4sam_ros.learn.scenes.generate import SceneConfig, SceneVideo, write_dataset
from m4sam_ros.learn.scenes.layout import FAMILIES, sample_scene
from m4sam_ros.learn.scenes.spec import SceneOptions, Surface
from m4sam_ros.learn.scenes.world import FAR_M, NEAR_M, SceneWorld, metric_depth
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


# ---- renderer -----------------------------------------------------------------------------------
def test_metric_depth_and_intrinsics_on_a_known_plane():
    """A camera facing a wall 1.5 m away with a board 1.0 m away covering x > 0.1 m: depth
    equals the distances, and the board's edge lands where the intrinsics say."""
    width, height = 80, 60
    intrinsics = intrinsics_for(width, height, 60.0)
    client = pybullet.connect(pybullet.DIRECT)
    try:
        wall = pybullet.createVisualShape(pybullet.GEOM_BOX, halfExtents=[5, 0.01, 5], physicsClientId=client)
        pybullet.createMultiBody(0, -1, wall, basePosition=[0, 1.51, 1.0], physicsClientId=client)
        board = pybullet.createVisualShape(pybullet.GEOM_BOX, halfExtents=[1, 0.01, 1], physicsClientId=client)
        board_id = pybullet.createMultiBody(0, -1, board, basePosition=[1.1, 1.01, 1.0], physicsClientId=client)
        eye = np.array([0.0, 0.0, 1.0])
        _, _, _, zbuffer, seg = pybullet.getCameraImage(
            width, height, view_matrix(look_at(eye, eye + [0.0, 1.0, 0.0]), eye),
            projection_matrix(intrinsics, width, height, NEAR_M, FAR_M), renderer=pybullet.ER_TINY_RENDERER,
            physicsClientId=client)
    finally:
        pybullet.disconnect(client)
    depth = metric_depth(np.asarray(zbuffer).reshape(height, width), NEAR_M, FAR_M)
    seg = np.asarray(seg).reshape(height, width)
    on_board = seg == board_id
    assert np.allclose(depth[on_board], 1.0, atol=1e-3) and np.allclose(depth[~on_board], 1.5, atol=1e-3)
    edge_u = intrinsics.cx + intrinsics.fx * 0.1 / 1.0  # the board starts at x = 0.1 m, 1 m away
    assert np.flatnonzero(on_board.any(axis=0))[0] == int(np.ceil(edge_u))


def _scene(split="train", frames=4, seed=0, **options):
    options = {"arm_prob": 0.0, "occluder_prob": 0.0, "shadow_prob": 0.0, **options}
    return sample_scene(np.random.default_rng(seed), split, frames, SceneOptions(**options))


def test_scene_world_depth_on_a_wall_at_known_distance():
    spec = _scene()
    eye = np.array([0.0, -1.0, 1.2])
    wall = Surface("wall", (0.0, 1.0, 1.2), (3.0, 0.01, 2.0), "plaster", 0)  # front face at y = 0.99
    track = CameraTrack("static", np.repeat(eye[None], 4, 0), np.repeat(look_at(eye, eye + [0, 1, 0])[None], 4, 0))
    spec = replace(spec, surfaces=(wall,), clutter=(), props=(), camera=track,
                   salient=replace(spec.salient, x=0.0, y=0.0, support_z=-10.0))  # out of view
    with SceneWorld(spec, 64, 48) as world:
        frame = world.render(0)
    assert np.allclose(frame.depth_m, 1.99, atol=1e-3)
    assert frame.rgb.shape == (48, 64, 3) and frame.rgb.dtype == np.uint8
    assert not (frame.segmentation == world.salient_id).any()


def test_gt_is_exactly_the_visible_pixels_of_the_salient_object():
    """GT is the segmentation of the named object, and it equals the pixels that change when
    that object is taken out of the scene (an independent check of what is visible)."""
    config = SceneConfig(out="unused", frames=3, width=96, height=72, arm_prob=0.0, occluder_prob=0.0, shadow_prob=0.0)
    video = SceneVideo(config, 0)
    frames = list(video.frames())
    with SceneWorld(video.spec, 96, 72) as world:
        assert world.intrinsics == video.intrinsics
        segmentation = world.render(1).segmentation
        salient = world.salient_id
    gt = frames[1].gt > 0
    assert gt.any() and np.array_equal(gt, segmentation == salient)
    assert np.array_equal(frames[1].gt, np.where(frames[1].segmentation == salient, 255, 0))
    hidden = replace(video.spec, salient=replace(video.spec.salient, support_z=-10.0))
    with SceneWorld(hidden, 96, 72) as world:
        without = world.render(1)
    assert np.array_equal(frames[1].depth_m != without.depth_m, gt)
    assert video.camera_info()["salient"]["object"] == video.spec.salient.asset.name


def test_written_dataset_is_deterministic_and_reads_back_as_generic(tmp_path):
    args = ["scenes", "--videos", "2", "--frames", "4", "--width", "48", "--height", "36", "--seed", "3",
            "--depth-drop-prob", "0.4", "--no-progress"]
    assert cli.main(args + ["--out", str(tmp_path / "a")]) == 0
    assert cli.main(args + ["--out", str(tmp_path / "b")]) == 0
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) >= 2 * (4 * 2 + 1)
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files_a)

    dataset = open_dataset(tmp_path / "a", layout="generic")
    assert not dataset.errors and [v.name for v in dataset.videos] == ["train_00000", "train_00001"]
    for video in dataset.videos:
        info = json.loads((video.path / "camera.json").read_text())
        assert (info["width"], info["height"], info["frames"]) == (48, 36, 4) and info["depth_unit_m"] == 0.001
        assert info["salient"]["rule"] in ("manipulated", "fixated") and len(info["camera_to_world"]) == 4
        missing = [i for i, f in enumerate(video.frames) if f.depth is None]
        assert missing == info["dropped_depth_frames"]  # a dropped frame has no depth file: read as RGB-only
        empty = [i for i, f in enumerate(video.frames) if not load_frame(f).gt.any()]
        assert empty == info["gt_empty_frames"]
        for record in video.frames:
            frame = load_frame(record)
            assert frame.rgb.shape == (36, 48, 3) and frame.gt.shape == (36, 48)
            assert frame.depth_raw is None or frame.depth_raw.dtype == np.uint16
    assert sum(len(json.loads((v.path / "camera.json").read_text())["dropped_depth_frames"]) for v in dataset.videos)

    assert cli.main(args[:-3] + ["--seed", "4", "--out", str(tmp_path / "c"), "--no-progress"]) == 0
    first = "train_00000/rgb/00000.png"
    assert (tmp_path / "c" / first).read_bytes() != (tmp_path / "a" / first).read_bytes()


def test_train_and_val_never_share_objects_layouts_or_seeds():
    train, val = ({a.name for a in object_pool(s)} for s in ("train", "val"))
    assert not train & val and len(val) >= 100 and len(train) >= 4 * len(val) - 50
    assert {a.name for a in NAMED} <= train | val and "duck" in train and "mug" in val
    assert not set(FAMILIES["train"]) & set(FAMILIES["val"])
    for seed in range(4):
        spec = _scene("val", seed=seed, arm_prob=0.5, occluder_prob=1.0)
        assert spec.family in FAMILIES["val"]
        assert {p.asset.name for p in (spec.salient, *spec.clutter)} <= val
    config = SceneConfig(out="unused", frames=2)
    assert SceneVideo(config, 0).spawn_key != SceneVideo(replace(config, split="val"), 0).spawn_key


def test_arm_occluder_and_shadows_render_together(tmp_path):
    """Every hard case at once at 160x120: the arm's object is the salient one, it moves, and
    the set writes at a usable speed."""
    config = SceneConfig(out=str(tmp_path), videos=2, frames=12, width=160, height=120, arm_prob=1.0,
                         occluder_prob=1.0, shadow_prob=1.0, progress=False)
    folders, fps = write_dataset(config)
    assert len(folders) == 2 and fps > 1.0
    for folder in folders:
        info = json.loads((folder / "camera.json").read_text())
        assert info["salient"]["rule"] == "manipulated" and info["scene"]["arm"] and info["scene"]["occluder"]
    path = SceneVideo(config, 0).spec.arm.object_path
    assert np.linalg.norm(path[-1] - path[0]) > 0.1  # picked up here, put down there
