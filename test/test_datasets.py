"""Dataset readers: each benchmark layout built on disk from synthetic frames and read back."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from m4sam_ros.depth import normalize_depth
from m4sam_ros.learn.clips import ClipSampler
from m4sam_ros.learn.datasets import (DatasetError, detect_layout, load_frame, natural_key, open_dataset, read_depth,
                                      read_split_list, validate)
from m4sam_ros.learn.synthetic import SyntheticConfig, generate_video, write_video

CONFIG = SyntheticConfig(height=48, width=64, frames=6, seed=5)


def _to_8bit_near_bright(depth_mm: np.ndarray) -> np.ndarray:
    """How the benchmarks store depth: 8-bit, near = 255, holes 0."""
    normalised, valid = normalize_depth(depth_mm)
    return np.where(valid, np.clip(np.rint(normalised * 255), 1, 255), 0).astype(np.uint8)


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image), path


def _write_benchmark_video(video: Path, folders: tuple[str, str, str], rgb_ext: str, config: SyntheticConfig = CONFIG,
                           stem=lambda i: f"{i:05d}", gt_every: int = 1) -> list:
    frames = list(generate_video(config))
    rgb_dir, depth_dir, gt_dir = folders
    for f in frames:
        _write(video / rgb_dir / f"{stem(f.index)}{rgb_ext}", cv2.cvtColor(f.rgb, cv2.COLOR_RGB2BGR))
        _write(video / depth_dir / f"{stem(f.index)}.png", _to_8bit_near_bright(f.depth_mm))
        if f.index % gt_every == 0:
            _write(video / gt_dir / f"{stem(f.index)}.png", f.gt)
    return frames


def test_generic_layout_reads_synthetic_video_exactly(tmp_path):
    config = SyntheticConfig(height=48, width=64, frames=8, seed=2, missing_depth_prob=0.4)
    write_video(tmp_path, "clip_a", config)
    frames = list(generate_video(config))
    dataset = open_dataset(tmp_path)
    assert dataset.layout == "generic" and [v.name for v in dataset.videos] == ["clip_a"]
    assert not dataset.errors
    dropped = [f.index for f in frames if f.depth_mm is None]
    assert dropped, "the seed must drop some depth frames for this test"
    assert any("without depth" in p.message for p in dataset.problems)  # reported, as a warning
    for record, expected in zip(dataset.videos[0].frames, frames):
        frame = load_frame(record)
        assert np.array_equal(frame.rgb, expected.rgb) and np.array_equal(frame.gt, expected.gt)
        if expected.depth_mm is None:
            assert record.depth is None and frame.depth is None and frame.depth_raw is None
        else:
            assert frame.depth_raw.dtype == np.uint16 and np.array_equal(frame.depth_raw, expected.depth_mm)
            normalised, valid = normalize_depth(expected.depth_mm)
            assert np.array_equal(frame.depth, normalised) and np.array_equal(frame.depth_valid, valid)


def test_vidsod100_layout_with_8bit_depth(tmp_path):
    expected = _write_benchmark_video(tmp_path / "train" / "bear", ("rgb", "depth", "gt"), ".png")
    _write_benchmark_video(tmp_path / "test" / "cat", ("rgb", "depth", "gt"), ".png")
    assert detect_layout(tmp_path) == "vidsod100"
    train = open_dataset(tmp_path, split="train")
    assert train.layout == "vidsod100" and [v.name for v in train.videos] == ["bear"] and not train.problems
    frame = load_frame(train.videos[0].frames[3])
    stored = _to_8bit_near_bright(expected[3].depth_mm)
    assert frame.depth_raw.dtype == np.uint8 and np.array_equal(frame.depth_raw, stored)
    assert np.array_equal(frame.depth, normalize_depth(stored)[0])
    assert [v.name for v in open_dataset(tmp_path, layout="vidsod100").videos] == ["cat"]  # default split: test


def test_rdvs_layout_jpg_rgb_and_synthetic_depth_folder(tmp_path):
    expected = _write_benchmark_video(tmp_path / "test" / "seq01", ("rgb", "Depth", "ground-truth"), ".jpg")
    synthetic = tmp_path / "test" / "seq01" / "SyntheticDepth"
    synthetic.mkdir()
    _write(synthetic / "00000.png", np.full((48, 64), 200, np.uint8))
    dataset = open_dataset(tmp_path)
    assert dataset.layout == "rdvs" and len(dataset.videos[0].frames) == CONFIG.frames and not dataset.errors
    frame = load_frame(dataset.videos[0].frames[0])
    assert frame.rgb.shape == (48, 64, 3)
    assert np.abs(frame.rgb.astype(int) - expected[0].rgb).mean() < 8  # JPEG, so not bit-exact
    assert np.array_equal(frame.gt, expected[0].gt)
    other = open_dataset(tmp_path, depth_folder="SyntheticDepth")
    assert other.videos[0].frames[0].depth.parent.name == "SyntheticDepth"
    assert other.videos[0].frames[1].depth is None  # only frame 0 has a synthetic depth file
    assert np.all(load_frame(other.videos[0].frames[0]).depth_raw == 200)


def test_rdvs_accepts_alternative_folder_names(tmp_path):
    """RDVS's rgb/ground-truth names are unverified, so Frame/ and GT/ are read too."""
    _write_benchmark_video(tmp_path / "train" / "seq02", ("Frame", "Depth", "GT"), ".png")
    dataset = open_dataset(tmp_path, layout="rdvs", split="train")
    assert not dataset.problems and len(dataset.videos[0].annotated) == CONFIG.frames


def test_dvisal_layout_split_lists_and_sparse_gt(tmp_path):
    for name in ("v1", "v2", "v3"):
        _write_benchmark_video(tmp_path / "data" / name, ("RGB", "Depth", "GT"), ".jpg",
                               stem=lambda i: f"{i + 1:08d}", gt_every=3)
    (tmp_path / "train.txt").write_text("v1\nv2\n")
    (tmp_path / "test_easy.txt").write_text("data/v3\n\n")
    assert detect_layout(tmp_path) == "dvisal"
    train = open_dataset(tmp_path, split="train")
    assert [v.name for v in train.videos] == ["v1", "v2"] and not train.problems  # sparse GT is normal here
    test = open_dataset(tmp_path)  # the single test_*.txt
    # split "test" (m4sam eval's default) also means the single test_*.txt when there is no test.txt
    assert [v.name for v in open_dataset(tmp_path, split="test").videos] == ["v3"]
    video = test.videos[0]
    assert video.name == "v3" and video.frames[0].stem == "00000001"
    assert video.annotated == [0, 3] and load_frame(video.frames[1]).gt is None
    assert read_split_list(tmp_path / "test_easy.txt") == ["v3"]
    (tmp_path / "val.txt").write_text("v1\nmissing_video\n")
    val = open_dataset(tmp_path, split="val")
    assert [str(p.path.name) for p in val.errors] == ["missing_video"]


def test_16bit_depth_png_is_read_as_millimetres(tmp_path):
    depth = np.full((10, 12), 1500, np.uint16)
    depth[0, 0] = 0
    _write(tmp_path / "d.png", depth)
    read = read_depth(tmp_path / "d.png")
    assert read.dtype == np.uint16 and np.array_equal(read, depth)


def test_validation_lists_every_problem_up_front_and_loader_names_the_file(tmp_path):
    write_video(tmp_path, "good", CONFIG)
    bad = write_video(tmp_path, "bad", CONFIG)
    (bad / "gt" / "00099.png").write_bytes((bad / "gt" / "00001.png").read_bytes())  # GT without an RGB frame
    (bad / "rgb" / "00002.png").write_bytes(b"not a png at all")  # unreadable
    (bad / "depth" / "00003.png").unlink()  # missing depth: allowed, warned
    (tmp_path / "no_rgb" / "gt").mkdir(parents=True)
    dataset = open_dataset(tmp_path)
    problems = validate(dataset)
    text = "\n".join(map(str, problems))
    assert "00099.png" in text and "has no RGB frame" in text
    assert "no rgb/ folder" in text
    assert "00002.png" in text and "could not decode" in text
    assert any(p.severity == "warning" and "without depth" in p.message for p in problems)
    assert not any("good" in str(p.path) for p in problems)
    with pytest.raises(DatasetError, match="00002.png"):
        load_frame(dataset.video("bad").frames[2])
    with pytest.raises(DatasetError, match="problem"):
        dataset.raise_on_errors()
    assert load_frame(dataset.video("bad").frames[3]).depth is None


def test_bad_roots_and_names_give_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="not a directory"):
        open_dataset(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="unknown dataset layout"):
        open_dataset(tmp_path, layout="davis")
    with pytest.raises(DatasetError, match="split folder"):
        open_dataset(tmp_path, layout="rdvs", split="train")
    write_video(tmp_path, "a", CONFIG)
    with pytest.raises(DatasetError, match="not in"):
        open_dataset(tmp_path, videos=["b"])


def test_natural_sort_orders_frames_numerically():
    assert sorted(["frame10", "frame9", "frame100"], key=natural_key) == ["frame9", "frame10", "frame100"]


def test_clip_sampler_is_deterministic_consecutive_and_annotated(tmp_path):
    write_video(tmp_path, "long", SyntheticConfig(height=32, width=32, frames=12, seed=1))
    write_video(tmp_path, "short", SyntheticConfig(height=32, width=32, frames=2, seed=2))
    videos = open_dataset(tmp_path).videos
    sampler = ClipSampler(videos, clip_length=4, seed=7)
    assert sampler.windows == 9  # only "long" has 4 frames: starts 0..8
    clips = [sampler.clip(i) for i in range(30)]
    assert clips == [ClipSampler(videos, clip_length=4, seed=7).clip(i) for i in range(30)]
    assert clips != [ClipSampler(videos, clip_length=4, seed=8).clip(i) for i in range(30)]
    assert len({c.start for c in clips}) > 3 and {c.flip for c in clips} == {True, False}
    for clip in clips:
        assert videos[clip.video].name == "long" and list(clip.indices) == list(range(clip.start, clip.start + 4))
    frames = sampler.load(clips[0])
    assert len(frames) == 4 and [f.stem for f in frames] == [f"{i:05d}" for i in clips[0].indices]
    flipped = next(c for c in clips if c.flip)
    mirrored, plain = sampler.load(flipped)[0], load_frame(videos[flipped.video].frames[flipped.start])
    assert np.array_equal(mirrored.rgb, plain.rgb[:, ::-1]) and np.array_equal(mirrored.gt, plain.gt[:, ::-1])
    with pytest.raises(DatasetError, match="no clip of 20 frames"):
        ClipSampler(videos, clip_length=20)
