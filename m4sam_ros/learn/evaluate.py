"""Evaluate RGB-D video saliency the way the node runs: frames streamed through ``SaliencyTracker``.

Each video is a fresh stream (``tracker.reset()``), every frame is stepped in order with
stamps at ``fps`` (the memory bank, re-initialisation policy and post-processing all as
on the robot), and the frames that have ground truth are scored with pysodmetrics
(``metrics.py``): per video, over all frames of the dataset (the benchmark convention)
and as the mean of the per-video scores. Outputs: ``metrics.json``, ``metrics.md`` and
``strip.png`` (RGB / depth / GT / prediction for a few frames).

For the ``test`` preset without a SAM2 checkpoint the frozen part is a seeded random init:
evaluate with the training ``--seed`` (``--train-all`` runs write ``sam2_weights.pt``
instead, given here as ``--sam2-checkpoint``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from m4sam_ros.learn.camera_file import video_intrinsics
from m4sam_ros.learn.datasets import LAYOUTS, DatasetError, VideoRecord, load_frame, open_dataset
from m4sam_ros.learn.metrics import METRIC_KEYS, SaliencyScorer, score_frames
from m4sam_ros.learn.options import add_dataclass_arguments, config_from_args
from m4sam_ros.model.checkpoint import CheckpointError
from m4sam_ros.model.config import PRESETS
from m4sam_ros.depth import depth_to_metres, fit_depth, normalize_depth
from m4sam_ros.initialisation import choose_initial_mask
from m4sam_ros.prior import saliency_prior
from m4sam_ros.engines.backends import BACKEND_NAMES
from m4sam_ros.engines.base import PRECISIONS, EngineUnavailable
from m4sam_ros.engines.factory import EngineSettings, create_engines
from m4sam_ros.model.builder import load_m4sam
from m4sam_ros.tracker import MODES, SaliencyTracker, TrackerConfig, resolve_mode

__all__ = ["EvalConfig", "evaluate_videos", "evaluate_model", "write_report", "score_frames", "add_arguments", "run"]

LOG = logging.getLogger("m4sam.eval")
_HEADERS = {"s_measure": "S", "e_measure_max": "E max", "e_measure_mean": "E mean", "f_measure_max": "F max",
            "f_measure_adaptive": "F adp", "mae": "MAE"}


@dataclass
class EvalConfig:
    """Settings of one evaluation run."""

    data: str | None = field(default=None, metadata={"help": "dataset root (required)"})
    layout: str = field(default="auto", metadata={"help": "dataset layout", "choices": list(LAYOUTS)})
    split: str = field(default="test", metadata={"help": "dataset split (train/test; DViSal: split-list name)"})
    depth_folder: str | None = field(default=None, metadata={"help": "depth sub-folder override (RDVS: SyntheticDepth)"})
    preset: str | None = field(default=None, metadata={
        "help": "model preset (default: the adapter file's, else test)", "choices": sorted(PRESETS)})
    image_size: int | None = field(default=None, metadata={
        "help": "model input size (default: what the adapter was trained at, else 512)"})
    sam2_checkpoint: str | None = field(default=None, metadata={
        "help": "official SAM2 checkpoint (or sam2_weights.pt of --train-all)"})
    adapter: str | None = field(default=None, metadata={"help": "trained adapter file"})
    seed: int = field(default=0, metadata={"help": "model init seed (match training for the random 'test' preset)"})
    mode: str = field(default="auto", metadata={"help": "tracker mode: auto = learned with an adapter, else zero_shot",
                                                "choices": list(MODES)})
    num_memory_frames: int = field(default=6, metadata={"help": "recent frames in the memory bank"})
    fps: float = field(default=30.0, metadata={"help": "frame rate used for the stamps streamed to the tracker"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    backend: str = field(default="pytorch", metadata={
        "help": "engine of the encoder and memory attention (the node's engine.backend; pytorch: the reference)",
        "choices": ["auto", *BACKEND_NAMES]})
    precision: str = field(default="auto", metadata={
        "help": "engine precision; int8 (ONNX Runtime, CPU) runs here even where the node withholds it: this is what "
                "measures it", "choices": ["auto", *PRECISIONS]})
    cache_dir: str | None = field(default=None, metadata={"help": "exported graphs and engines (default: the node's)"})
    threads: int = field(default=0, metadata={"help": "CPU threads for torch and ONNX Runtime (0 = their default)"})
    out_dir: str = field(default="runs/eval", metadata={"help": "folder for metrics.json, metrics.md, strip.png"})
    strip_frames: int = field(default=4, metadata={"help": "frames shown in strip.png"})
    first_mask: bool = field(default=False, metadata={
        "help": "zero-shot: score only each video's initial mask (first frame with depth and GT) against GT, "
                "next to the depth/centre prior"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        for name in ("data", "sam2_checkpoint", "adapter", "out_dir"):
            if getattr(self, name):
                setattr(self, name, os.path.expanduser(getattr(self, name)))
        if self.fps <= 0 or self.strip_frames < 0 or self.num_memory_frames < 1 or self.threads < 0:
            raise ValueError(f"need fps > 0, strip_frames >= 0, num_memory_frames >= 1, threads >= 0; got {self.fps}, "
                             f"{self.strip_frames}, {self.num_memory_frames}, {self.threads}")


@dataclass
class _StripSample:
    title: str
    rgb: np.ndarray
    depth: np.ndarray | None
    gt: np.ndarray
    prediction: np.ndarray


def _strip_targets(videos: Sequence[VideoRecord], count: int) -> set[tuple[int, int]]:
    """``count`` annotated frames spread evenly over the whole dataset."""
    annotated = [(v, i) for v, video in enumerate(videos) for i in video.annotated]
    if not annotated or count == 0:
        return set()
    picks = np.unique(np.linspace(0, len(annotated) - 1, min(count, len(annotated))).round().astype(int))
    return {annotated[p] for p in picks}


def evaluate_videos(tracker: SaliencyTracker, videos: Sequence[VideoRecord], fps: float = 30.0,
                    strip_frames: int = 4, progress: bool = False) -> tuple[dict, list[_StripSample]]:
    """Stream every video through ``tracker`` and score its GT frames.

    Returns ({"dataset": metrics over all frames, "video_mean": mean of per-video metrics,
    "videos": {name: metrics}}, strip samples).
    """
    if not videos:
        raise ValueError("no videos to evaluate")
    overall = SaliencyScorer()
    per_video: dict[str, dict] = {}
    targets = _strip_targets(videos, strip_frames)
    samples: list[_StripSample] = []
    total = sum(len(v.frames) for v in videos)
    with tqdm(total=total, desc="eval", unit="frame", disable=not progress, dynamic_ncols=True) as bar:
        for v, video in enumerate(videos):
            tracker.reset()
            scorer = SaliencyScorer()
            intrinsics = None
            for i, record in enumerate(video.frames):
                frame = load_frame(record, tracker.config.depth)
                if i == 0:  # a video's camera.json, where it has one (rendered scenes, recordings)
                    intrinsics = video_intrinsics(video.path, frame.rgb.shape[1], frame.rgb.shape[0])
                result = tracker.step(frame.rgb, frame.depth_raw, stamp=i / fps, intrinsics=intrinsics)
                if frame.gt is not None:
                    scorer.add(result.probability, frame.gt)
                    overall.add(result.probability, frame.gt)
                    if (v, i) in targets:
                        samples.append(_StripSample(f"{video.name}/{record.stem}", frame.rgb, frame.depth, frame.gt,
                                                    result.probability))
                bar.update(1)
            per_video[video.name] = scorer.results() if scorer.frames else {"frames": 0}
            if scorer.frames:
                bar.set_postfix(video=video.name, S=f"{per_video[video.name]['s_measure']:.3f}")
    scored = [m for m in per_video.values() if m["frames"]]
    video_mean = {k: float(np.mean([m[k] for m in scored])) for k in METRIC_KEYS}
    video_mean["videos"] = len(scored)
    return {"dataset": overall.results(), "video_mean": video_mean, "videos": per_video}, samples


def evaluate_initial_masks(tracker: SaliencyTracker, videos: Sequence[VideoRecord], progress: bool = False) -> dict:
    """Score the zero-shot initialisation alone: per video, its first frame that has depth and
    a non-empty GT gets the mask the tracker would condition its memory on, against that GT;
    the depth/centre prior thresholded is scored on the same frames as the baseline.
    Returns {"initial_mask": metrics, "prior": metrics, "rules": {rule kind: count}, "frames": n}."""
    if tracker.mode != "zero_shot":
        raise ValueError("the first-mask evaluation scores the zero-shot initialisation (mode zero_shot)")
    config = tracker.config
    chosen, priors, gts, rules = [], [], [], {}
    for video in tqdm(videos, desc="first masks", unit="video", disable=not progress, dynamic_ncols=True):
        for record in video.frames:
            frame = load_frame(record, config.depth)
            if frame.depth_raw is None or frame.gt is None or not frame.gt.any() or frame.depth_raw.dtype == np.uint8:
                continue
            height, width = frame.rgb.shape[:2]
            depth = fit_depth(frame.depth_raw, height, width)
            normalised, valid = normalize_depth(depth, config.depth)
            initial = choose_initial_mask(frame.rgb, depth_to_metres(depth), normalised, valid,
                                          video_intrinsics(video.path, width, height), config.proposals,
                                          config.prior, config.prior_threshold)
            chosen.append(initial.mask)
            priors.append(saliency_prior(normalised, valid, (height, width), config.prior) >= config.prior_threshold)
            gts.append(frame.gt)
            kind = initial.rule.split(":")[0]
            rules[kind] = rules.get(kind, 0) + 1
            break
    if not gts:
        raise ValueError("no video has a frame with metric depth and a non-empty ground truth")
    return {"initial_mask": score_frames(chosen, gts), "prior": score_frames(priors, gts), "rules": rules,
            "frames": len(gts)}


def markdown_table(metrics: dict, title: str) -> str:
    """Per-video rows, then all frames and the mean of videos."""
    head = "| Video | " + " | ".join(_HEADERS[k] for k in METRIC_KEYS) + " | Frames |"
    lines = [f"### {title}", "", head, "|" + "---|" * (len(METRIC_KEYS) + 2)]

    def row(name: str, values: dict, count: int) -> str:
        return f"| {name} | " + " | ".join(f"{values[k]:.3f}" for k in METRIC_KEYS) + f" | {count} |"

    for name, values in metrics["videos"].items():
        lines.append(row(name, values, values["frames"]) if values["frames"] else f"| {name} | (no GT frames) |")
    lines.append(row("**all frames**", metrics["dataset"], metrics["dataset"]["frames"]))
    lines.append(row(f"**mean of {metrics['video_mean']['videos']} videos**", metrics["video_mean"],
                     metrics["dataset"]["frames"]))
    return "\n".join(lines) + "\n"


def _tile(image: np.ndarray | None, height: int, width: int, label: str | None) -> np.ndarray:
    """(height, width, 3) BGR tile of an RGB image, a [0, 1] map, or a 'missing' placeholder."""
    if image is None:
        tile = np.full((height, width, 3), 64, np.uint8)
        cv2.putText(tile, "no depth", (4, height // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (200, 200, 200), 1, cv2.LINE_AA)
    else:
        if image.dtype != np.uint8:
            image = np.rint(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
        tile = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        tile = cv2.cvtColor(tile, cv2.COLOR_RGB2BGR if tile.ndim == 3 else cv2.COLOR_GRAY2BGR)
    if label:
        cv2.putText(tile, label, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 255, 255), 1, cv2.LINE_AA)
    return tile


def write_strip(samples: Sequence[_StripSample], path: Path, tile_height: int = 120) -> Path | None:
    """Rows of RGB / depth / GT / prediction; the frame name on the RGB tile."""
    if not samples:
        return None
    rows = []
    for sample in samples:
        h, w = sample.rgb.shape[:2]
        width = max(1, round(w * tile_height / h))
        tiles = [(sample.rgb, sample.title), (sample.depth, "depth"), (sample.gt, "GT"), (sample.prediction, "prediction")]
        rows.append(np.concatenate([_tile(image, tile_height, width, label) for image, label in tiles], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0))) for r in rows]
    if not cv2.imwrite(str(path), np.concatenate(rows, axis=0)):
        raise OSError(f"could not write {path}")
    return path


def write_report(metrics: dict, samples: Sequence[_StripSample], out_dir: Path, title: str, settings: dict) -> dict:
    """metrics.json, metrics.md and strip.png in ``out_dir``; returns the report with its paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": str(out_dir / "metrics.json"), "markdown": str(out_dir / "metrics.md")}
    strip = write_strip(samples, out_dir / "strip.png")
    if strip:
        paths["strip"] = str(strip)
    report = {"title": title, "settings": settings, **metrics, "paths": paths}
    Path(paths["json"]).write_text(json.dumps(report, indent=2) + "\n")
    Path(paths["markdown"]).write_text(markdown_table(metrics, title))
    return report


def evaluate_model(model, videos: Sequence[VideoRecord], out_dir: Path, device: str | torch.device = "cpu", num_memory_frames: int = 6,
                   title: str = "evaluation", mode: str = "learned", fps: float = 30.0, strip_frames: int = 4,
                   progress: bool = False) -> dict:
    """Evaluate an in-memory M4SAM (e.g. just trained) through a fresh ``SaliencyTracker``."""
    config = TrackerConfig(image_size=model.config.image_size, num_memory_frames=num_memory_frames, mode=mode)
    tracker = SaliencyTracker(model, config, device)
    metrics, samples = evaluate_videos(tracker, videos, fps, strip_frames, progress)
    settings = {"preset": model.config.name, "image_size": model.config.image_size, "mode": tracker.mode,
                "num_memory_frames": num_memory_frames, "fps": fps, "videos": len(videos)}
    return write_report(metrics, samples, out_dir, title, settings)


def engine_tracker(config: EvalConfig) -> tuple[SaliencyTracker, str]:
    """The tracker ``config`` describes, on its engine (``--backend``/``--precision``) as the node
    builds it, and the engine's description."""
    model = load_m4sam(config.preset, config.image_size, sam2_checkpoint=config.sam2_checkpoint,
                       adapter=config.adapter, seed=config.seed)
    tracker_config = TrackerConfig(image_size=model.config.image_size, num_memory_frames=config.num_memory_frames,
                                   mode=config.mode)
    engines = create_engines(model, EngineSettings(
        backend=config.backend, device=config.device, precision=config.precision, cache_dir=config.cache_dir,
        num_memory_frames=config.num_memory_frames, zero_shot=resolve_mode(config.mode, model) == "zero_shot",
        threads=config.threads, unvalidated_int8=True))
    tracker = SaliencyTracker(model, tracker_config, engines.device, encoder=engines.encoder,
                              memory_attention=engines.memory_attention)
    return tracker, engines.encoder.describe()


def _report_initial_masks(config: EvalConfig, result: dict) -> int:
    """metrics_first_mask.json and a table on stdout."""
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics_first_mask.json").write_text(json.dumps({"data": config.data, **result}, indent=2) + "\n")
    head = "| first mask | " + " | ".join(_HEADERS[k] for k in METRIC_KEYS) + " | frames |"
    lines = [head, "|" + "---|" * (len(METRIC_KEYS) + 2)]
    for name, label in (("initial_mask", "RGB-D candidates"), ("prior", "depth/centre prior")):
        lines.append(f"| {label} | " + " | ".join(f"{result[name][k]:.3f}" for k in METRIC_KEYS) + f" | {result['frames']} |")
    print("\n".join(lines))
    print("chosen by: " + ", ".join(f"{kind} {count}" for kind, count in sorted(result["rules"].items())))
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, EvalConfig, "YAML file of EvalConfig fields (flags given here override it)")


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(EvalConfig, args)
        if config.data is None:
            raise ValueError("--data is required: the root of the dataset to evaluate")
        if config.threads:
            torch.set_num_threads(config.threads)
        dataset = open_dataset(config.data, config.layout, config.split, config.depth_folder)
        for problem in dataset.problems:
            LOG.warning("%s", problem)
        dataset.raise_on_errors()
        tracker, engine = engine_tracker(config)
        if config.first_mask:
            return _report_initial_masks(config, evaluate_initial_masks(tracker, dataset.videos, config.progress))
        metrics, samples = evaluate_videos(tracker, dataset.videos, config.fps, config.strip_frames, config.progress)
    except (DatasetError, CheckpointError, FileNotFoundError, ValueError, EngineUnavailable) as error:
        LOG.error("%s", error)
        return 2
    where = dataset.layout if dataset.layout == "generic" else f"{dataset.layout}, {config.split}"
    model = tracker.model.config
    title = f"{Path(config.data).name} ({where}): {model.name} {model.image_size}px, {tracker.mode}"
    settings = {"data": config.data, "layout": dataset.layout, "split": config.split, "preset": model.name,
                "image_size": model.image_size, "sam2_checkpoint": config.sam2_checkpoint, "adapter": config.adapter,
                "mode": tracker.mode, "num_memory_frames": config.num_memory_frames, "fps": config.fps,
                "engine": engine, "videos": len(dataset.videos)}
    report = write_report(metrics, samples, Path(config.out_dir), title, settings)
    print(Path(report["paths"]["markdown"]).read_text())
    print("\n".join(f"{kind}: {path}" for kind, path in report["paths"].items()))
    return 0
