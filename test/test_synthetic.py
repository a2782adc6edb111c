"""The procedural RGB-D video generator: determinism, geometry, sensor faults, files."""
import time

import cv2
import numpy as np
import pytest

from m4sam_ros.depth import depth_to_metres
from m4sam_ros.learn.synthetic import SyntheticConfig, generate_video, write_dataset, write_video


def _video(**kwargs):
    return list(generate_video(SyntheticConfig(**kwargs)))


def test_frames_have_documented_types_and_intrinsics():
    config = SyntheticConfig(height=60, width=80, frames=3)
    frames = list(generate_video(config))
    assert [f.index for f in frames] == [0, 1, 2]
    for f in frames:
        assert f.rgb.shape == (60, 80, 3) and f.rgb.dtype == np.uint8
        assert f.depth_mm.shape == (60, 80) and f.depth_mm.dtype == np.uint16
        assert f.gt.dtype == np.uint8 and set(np.unique(f.gt)) <= {0, 255}
        assert f.intrinsics.fx == pytest.approx(0.9 * 80) and f.intrinsics.fy == f.intrinsics.fx
        assert (f.intrinsics.cx, f.intrinsics.cy) == (39.5, 29.5)


def test_deterministic_by_seed_and_seeds_differ():
    a, b, c = _video(seed=3, frames=5), _video(seed=3, frames=5), _video(seed=4, frames=5)
    for fa, fb in zip(a, b):
        assert np.array_equal(fa.rgb, fb.rgb) and np.array_equal(fa.depth_mm, fb.depth_mm)
        assert np.array_equal(fa.gt, fb.gt)
    assert not np.array_equal(a[0].rgb, c[0].rgb)
    assert not np.array_equal(a[0].gt, c[0].gt)


def test_salient_object_is_visible_and_nearer_than_background():
    for f in _video(seed=1):
        salient = f.gt > 0
        assert salient.any()
        metres = depth_to_metres(f.depth_mm)
        object_z = np.nanmedian(metres[salient])
        background_z = np.nanmedian(metres[~salient])
        assert 0.5 < object_z < 1.7 and 1.9 < background_z < 5.2
        assert object_z < background_z


def test_object_moves_smoothly():
    frames = _video(seed=2, distractors=0, occluders=0, hole_fraction=0.0)
    centres = np.array([np.argwhere(f.gt > 0).mean(axis=0) for f in frames])  # (T, 2)
    steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    assert steps.max() < 10.0  # pixels per frame at 160 px width
    assert np.linalg.norm(centres[-1] - centres[0]) > 2.0  # it does move


def test_distractors_and_occluders_hide_object_but_never_add_ground_truth():
    for seed in range(3):
        clear = _video(seed=seed, distractors=0, occluders=0)
        crowded = _video(seed=seed, distractors=4, occluders=2)
        hidden = 0
        for c, d in zip(clear, crowded):
            assert not ((d.gt > 0) & (c.gt == 0)).any()  # distractors are never ground truth
            hidden += int(((c.gt > 0) & (d.gt == 0)).sum())
        assert hidden > 0  # an occluder passed in front of the object
        assert all(d.gt.any() for d in crowded)  # occlusion is partial


def test_hole_fraction_roughly_as_configured():
    for fraction in (0.0, 0.05, 0.2):
        frames = _video(seed=0, frames=4, hole_fraction=fraction, edge_hole_prob=0.0)
        measured = np.mean([(f.depth_mm == 0).mean() for f in frames])
        assert measured == pytest.approx(fraction, abs=0.01)
    with_edges = _video(seed=0, frames=4, hole_fraction=0.0, edge_hole_prob=1.0)
    assert all((f.depth_mm == 0).any() for f in with_edges)


def test_noise_grows_with_depth():
    frames = _video(seed=0, frames=1, hole_fraction=0.0, edge_hole_prob=0.0, depth_noise=0.0)
    noisy = _video(seed=0, frames=1, hole_fraction=0.0, edge_hole_prob=0.0, depth_noise=0.01)
    error = np.abs(noisy[0].depth_mm.astype(float) - frames[0].depth_mm.astype(float))
    near = frames[0].gt > 0
    assert error[~near].mean() > 4 * error[near].mean()
    assert np.array_equal(frames[0].rgb, noisy[0].rgb)  # sensor noise does not touch the scene


@pytest.mark.parametrize("prob, expect_missing", [(0.0, False), (1.0, True)])
def test_missing_depth_frames(prob, expect_missing):
    frames = _video(frames=6, missing_depth_prob=prob)
    assert all((f.depth_mm is None) == expect_missing for f in frames)
    assert all(f.gt.any() for f in frames)


def test_generation_is_fast():
    start = time.perf_counter()
    frames = _video(frames=30)
    assert len(frames) == 30
    assert time.perf_counter() - start < 2.0


def test_written_layout_reads_back_exactly(tmp_path):
    config = SyntheticConfig(height=48, width=64, frames=4, seed=7, missing_depth_prob=0.5)
    video = write_video(tmp_path, "clip", config)
    assert video == tmp_path / "clip"
    frames = list(generate_video(config))
    assert sorted(p.name for p in (video / "rgb").iterdir()) == [f"{i:05d}.png" for i in range(4)]
    for f in frames:
        stem = f"{f.index:05d}.png"
        rgb = cv2.cvtColor(cv2.imread(str(video / "rgb" / stem), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert np.array_equal(rgb, f.rgb)
        assert np.array_equal(cv2.imread(str(video / "gt" / stem), cv2.IMREAD_UNCHANGED), f.gt)
        depth_file = video / "depth" / stem
        if f.depth_mm is None:
            assert not depth_file.exists()
        else:
            depth = cv2.imread(str(depth_file), cv2.IMREAD_UNCHANGED)
            assert depth.dtype == np.uint16 and np.array_equal(depth, f.depth_mm)
    assert any(f.depth_mm is None for f in frames) and any(f.depth_mm is not None for f in frames)
    write_video(tmp_path, "clip", SyntheticConfig(height=48, width=64, frames=2, missing_depth_prob=1.0))
    assert [sorted(p.name for p in (video / sub).iterdir()) for sub in ("rgb", "depth", "gt")] == [
        ["00000.png", "00001.png"], [], ["00000.png", "00001.png"]]  # a rewrite leaves no stale frames


def test_write_dataset_gives_distinct_videos(tmp_path):
    videos = write_dataset(tmp_path, 2, SyntheticConfig(height=32, width=48, frames=2), split_seed=1)
    assert [v.name for v in videos] == ["synthetic_000", "synthetic_001"]
    first, second = (cv2.imread(str(v / "rgb" / "00000.png")) for v in videos)
    assert not np.array_equal(first, second)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="hole_fraction"):
        SyntheticConfig(hole_fraction=1.5)
    with pytest.raises(ValueError, match="num_objects"):
        SyntheticConfig(num_objects=0)
