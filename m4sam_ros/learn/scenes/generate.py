"""Render RGB-D robot scenes with ground truth: PyBullet table-tops seen by a moving camera.

Each video is one randomised room with a table, real pybullet_data meshes (duck, teddy,
mug, lego, random shapes, ...) as clutter, one salient object, and some of: a KUKA arm
moving the salient object, an occluder passing in front, the camera looking away so the
object leaves and re-enters the view, a close background, low-texture objects, shadows.
Depth is exact metric z from the z-buffer, then passed through a stereo depth-sensor model
(``m4sam_ros.learn.sensor_model``: z² noise, stereo shadow, edge/dark/shiny holes, range,
dropped frames); colour gets white balance, exposure jumps and noise.

Output, the generic layout (``learn.datasets``, ``layout="generic"``)::

    <out>/<split>_<index:05d>/rgb/<frame:05d>.png     colour, 8-bit
    <out>/<split>_<index:05d>/depth/<frame:05d>.png   16-bit millimetres, 0 = no depth;
                                                      no file when the frame's depth dropped
    <out>/<split>_<index:05d>/gt/<frame:05d>.png      0/255 visible pixels of the salient object
                                                      (all 0 when it is out of view or hidden)
    <out>/<split>_<index:05d>/camera.json

camera.json (one per video, format ``m4sam_ros/scenes-1``): ``width``, ``height``, ``fx``,
``fy``, ``cx``, ``cy`` (pixels, pixel centres at integer coordinates, depth aligned to
colour), ``depth_unit_m`` (0.001), ``near_m`` / ``far_m`` (the renderer's clip planes),
``depth_range_m`` (the sensor's valid range, null without the sensor model), ``frames``,
``split``, ``seed`` and ``spawn_key`` (the video's seed: ``SeedSequence(seed,
spawn_key=[split index, video index])``), ``salient`` (``object``, ``rule``: "manipulated"
or "fixated", ``rule_text``), ``scene`` (family, camera motion, clutter, arm, occluder, ...),
``sensor`` (the sensor model's settings, null when off), ``white_balance``,
``dropped_depth_frames``, ``gt_empty_frames`` (the salient object out of view or fully
hidden: frames a first-mask test should not start on), and ``camera_to_world``: per frame
a row-major 4x4 pose, OpenCV axes (x right, y down, z forward), world z up, metres.

Splits (``--split``): val uses objects and layout families that train never uses (see
``assets`` and ``layout``), and its own seed stream (the split index is part of every
video's spawn key), so no seed or index makes a val video equal a train video.
Same arguments -> byte-identical files.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from m4sam_ros.learn.options import add_dataclass_arguments, config_from_args
from m4sam_ros.learn.scenes.assets import SPLITS
from m4sam_ros.learn.scenes.camera import intrinsics_for
from m4sam_ros.learn.scenes.layout import sample_scene
from m4sam_ros.learn.scenes.spec import SceneOptions, SceneSpec
from m4sam_ros.learn.scenes.world import FAR_M, NEAR_M, SceneWorld
from m4sam_ros.learn.sensor_model import (apply_depth_sensor, apply_rgb_sensor, depth_frame_dropped,
                                          exposure_gains)

LOG = logging.getLogger(__name__)
FORMAT = "m4sam_ros/scenes-1"
RULES = {
    "manipulated": "the object the robot arm picks, carries and places",
    "fixated": "the object the camera keeps its gaze on (its look-at point)",
}

__all__ = ["SceneConfig", "SceneFrame", "SceneVideo", "write_video", "write_dataset", "add_arguments", "run"]


@dataclass
class SceneConfig:
    """Settings of one `m4sam scenes` run."""

    out: str | None = field(default=None, metadata={"help": "output dataset root (required)"})
    split: str = field(default="train", metadata={"help": "object / layout split", "choices": list(SPLITS)})
    videos: int = field(default=4, metadata={"help": "number of videos"})
    first_video: int = field(default=0, metadata={"help": "index of the first video (extend a set, or split work)"})
    frames: int = field(default=48, metadata={"help": "frames per video"})
    width: int = field(default=320, metadata={"help": "image width"})
    height: int = field(default=240, metadata={"help": "image height"})
    seed: int = field(default=0, metadata={"help": "base seed; each video's seed derives from (seed, split, index)"})
    sensor_model: bool = field(default=True, metadata={"help": "apply the depth/RGB sensor model (off: exact depth)"})
    arm_prob: float = field(default=0.35, metadata={"help": "share of videos where an arm moves the salient object"})
    occluder_prob: float = field(default=0.4, metadata={"help": "share of videos with an occluder passing in front"})
    low_texture_prob: float = field(default=0.25, metadata={"help": "share of videos with a white/grey salient object"})
    close_background_prob: float = field(default=0.35, metadata={"help": "share of videos with a wall close behind"})
    shadow_prob: float = field(default=0.5, metadata={"help": "share of videos rendered with shadows (slower)"})
    depth_drop_prob: float = field(default=0.02, metadata={"help": "chance that a frame's depth is missing"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.width < 16 or self.height < 16 or self.frames < 2 or self.videos < 1 or self.first_video < 0:
            raise ValueError(f"need width, height >= 16, frames >= 2, videos >= 1, first_video >= 0; got "
                             f"{self.width}x{self.height}, {self.frames}, {self.videos}, {self.first_video}")
        self.scene_options()  # validates the probabilities

    def scene_options(self) -> SceneOptions:
        return SceneOptions(arm_prob=self.arm_prob, occluder_prob=self.occluder_prob,
                             low_texture_prob=self.low_texture_prob, close_background_prob=self.close_background_prob,
                             shadow_prob=self.shadow_prob, depth_drop_prob=self.depth_drop_prob)


@dataclass
class SceneFrame:
    """One frame: rgb (H, W, 3) uint8 as the camera delivers it; depth_mm (H, W) uint16 or None
    (dropped); gt (H, W) uint8 0/255; depth_m (H, W) float32 exact z (inf: nothing hit) and
    segmentation (H, W) int32 body ids, both before the sensor model."""

    index: int
    rgb: np.ndarray
    depth_mm: np.ndarray | None
    gt: np.ndarray
    depth_m: np.ndarray
    segmentation: np.ndarray


class SceneVideo:
    """One video of a run: its scene, drawn from its own seed, and its frames."""

    def __init__(self, config: SceneConfig, index: int) -> None:
        self.config, self.index = config, index
        self.name = f"{config.split}_{index:05d}"
        self.spawn_key = (SPLITS.index(config.split), index)
        scene_seq, self._sensor_seq = np.random.SeedSequence(config.seed, spawn_key=self.spawn_key).spawn(2)
        self.spec: SceneSpec = sample_scene(np.random.default_rng(scene_seq), config.split, config.frames,
                                            config.scene_options())
        self.intrinsics = intrinsics_for(config.width, config.height, self.spec.hfov_deg)
        self.dropped: list[int] = []
        self.gt_empty: list[int] = []

    def frames(self) -> Iterator[SceneFrame]:
        """Render every frame in order (the sensor noise is a stream: frames come in order only)."""
        config, spec = self.config, self.spec
        rng = np.random.default_rng(self._sensor_seq)
        gains = exposure_gains(rng, config.frames, spec.sensor)
        self.dropped, self.gt_empty = [], []
        with SceneWorld(spec, config.width, config.height) as world:
            for t in range(config.frames):
                frame = world.render(t)
                gt = np.where(frame.segmentation == world.salient_id, 255, 0).astype(np.uint8)
                if not gt.any():
                    self.gt_empty.append(t)
                if config.sensor_model:
                    shiny = np.isin(frame.segmentation, world.shiny_ids)
                    depth_mm = apply_depth_sensor(frame.depth_m, frame.rgb, world.intrinsics.fx, rng, spec.sensor,
                                                  shiny)
                    if depth_frame_dropped(rng, spec.sensor):
                        depth_mm = None
                        self.dropped.append(t)
                    rgb = apply_rgb_sensor(frame.rgb, gains[t], np.array(spec.white_balance), rng, spec.sensor)
                else:
                    finite = np.isfinite(frame.depth_m)
                    depth_mm = np.zeros(frame.depth_m.shape, np.uint16)
                    depth_mm[finite] = np.clip(np.rint(frame.depth_m[finite] * 1000.0), 1, 65535)
                    rgb = frame.rgb
                yield SceneFrame(t, rgb, depth_mm, gt, frame.depth_m, frame.segmentation)

    def camera_info(self) -> dict:
        """The camera.json content (complete once ``frames()`` has run)."""
        config, spec, k = self.config, self.spec, self.intrinsics
        return {
            "format": FORMAT, "video": self.name, "width": config.width, "height": config.height,
            "fx": k.fx, "fy": k.fy, "cx": k.cx, "cy": k.cy, "depth_unit_m": 0.001, "near_m": NEAR_M, "far_m": FAR_M,
            "depth_range_m": [spec.sensor.min_range_m, spec.sensor.max_range_m] if config.sensor_model else None,
            "frames": config.frames, "split": config.split, "seed": config.seed, "spawn_key": list(self.spawn_key),
            "salient": {"object": spec.salient.asset.name, "rule": spec.salient_rule,
                        "rule_text": RULES[spec.salient_rule]},
            "scene": spec.summary(),
            "sensor": asdict(spec.sensor) if config.sensor_model else None,
            "white_balance": list(spec.white_balance) if config.sensor_model else None,
            "dropped_depth_frames": list(self.dropped), "gt_empty_frames": list(self.gt_empty),
            "camera_to_world": [np.round(spec.camera.pose(t), 6).reshape(-1).tolist() for t in range(config.frames)],
        }


def _imwrite(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cv2.imwrite could not write {path}")


def write_video(root: Path, video: SceneVideo, bar: tqdm | None = None) -> Path:
    """Render ``video`` into ``<root>/<video.name>/`` (stale frames of an earlier run removed first)."""
    folder = Path(root) / video.name
    for sub in ("rgb", "depth", "gt"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for stale in (folder / sub).glob("*.png"):
            stale.unlink()
    for frame in video.frames():
        stem = f"{frame.index:05d}.png"
        _imwrite(folder / "rgb" / stem, cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR))
        _imwrite(folder / "gt" / stem, frame.gt)
        if frame.depth_mm is not None:
            _imwrite(folder / "depth" / stem, frame.depth_mm)
        if bar is not None:
            bar.update(1)
    # one key per line, each value compact: readable, and the per-frame poses stay one line each
    info = video.camera_info()
    lines = [f" {json.dumps(key)}: {json.dumps(value)}" for key, value in info.items()]
    (folder / "camera.json").write_text("{\n" + ",\n".join(lines) + "\n}\n")
    return folder


def write_dataset(config: SceneConfig) -> tuple[list[Path], float]:
    """Write the run's videos; returns their folders and the frames per second achieved."""
    if config.out is None:
        raise ValueError("--out is required: the folder to write the videos into")
    root = Path(config.out).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    total = config.videos * config.frames
    start = time.perf_counter()
    folders = []
    with tqdm(total=total, desc=f"scenes {config.split}", unit="frame", disable=not config.progress,
              dynamic_ncols=True) as bar:
        for index in range(config.first_video, config.first_video + config.videos):
            video = SceneVideo(config, index)
            bar.set_postfix_str(f"{video.name} {video.spec.family} {video.spec.camera.motion}")
            folders.append(write_video(root, video, bar))
    return folders, total / max(time.perf_counter() - start, 1e-9)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, SceneConfig, "YAML file of SceneConfig fields (flags given here override it)")


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(SceneConfig, args)
        folders, fps = write_dataset(config)
    except (ValueError, OSError) as error:
        LOG.error("%s", error)
        return 2
    print(f"wrote {len(folders)} videos x {config.frames} frames ({config.width}x{config.height}, {config.split}) "
          f"to {config.out}: {fps:.1f} frames/s")
    return 0
