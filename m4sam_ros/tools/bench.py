"""Benchmark the streaming tracker against SAM2's own video predictor, on the same frames.

Per stage (image conversion from sensor_msgs buffers, preprocessing, encoder, memory
attention, decoder, memory encoder, post-processing): median and p95 in ms after the
warm-up frames; end-to-end FPS; memory: the bytes of tracking state per tracker (memory
bank / SAM2's output_dict), process RSS (from /proc; peak from getrusage) and CUDA
allocations on GPU. Stream-length scaling: per-frame time and memory at frames 10, 100
and 1000 (those within --frames). The peer is SAM2's ``SAM2VideoPredictor`` itself, fed frame
by frame (``tools/sam2_reference.py``) with the same SAM2 weights. Both trackers run on every
frame, interleaved, so a busy machine slows both alike and the ratio stays meaningful. The frames are synthetic
RGB-D video; the lost-target re-initialisation is disabled so that every frame runs the
full memory path, as SAM2's does. Writes a JSON report and a PNG chart.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from m4sam_ros.encodings import EncodedImage, decode_image, encode_image, to_depth, to_rgb
from m4sam_ros.engines.factory import Engines, create_engines
from m4sam_ros.learn.synthetic import SyntheticConfig, generate_video
from m4sam_ros.model.config import M4SAMConfig
from m4sam_ros.postprocess import CameraIntrinsics
from m4sam_ros.tools.sam2_reference import PEER_STAGES, SAM2VideoStream, sam2_predictor
from m4sam_ros.tools.model_args import add_engine_arguments, add_model_arguments, engine_settings, model_from_args
from m4sam_ros.tracker import MODES, STAGES, SaliencyTracker, TrackerConfig, resolve_mode

CHECKPOINTS = (10, 100, 1000)
M4SAM_STAGES = ("image_conversion",) + STAGES
SAM2_STAGES = ("image_conversion",) + PEER_STAGES
_MIB = float(1 << 20)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, default_size=128)
    add_engine_arguments(parser)
    group = parser.add_argument_group("benchmark")
    group.add_argument("--frames", type=int, default=120, help="stream length (checkpoints at 10, 100, 1000)")
    group.add_argument("--warmup", type=int, default=5, help="first frames left out of the statistics")
    group.add_argument("--camera", default="320x240", help="camera frame size WxH (what the node receives)")
    group.add_argument("--output-dir", type=Path, default=Path("runs/bench"), help="where the JSON and PNG go")
    group.add_argument("--no-peer", action="store_true", help="skip the SAM2 streaming comparison")
    group.add_argument("--mode", default="auto", choices=MODES,
                       help="tracker mode (auto: learned with --adapter, else zero-shot: SAM2's own encoder)")


@dataclass
class Frame:
    index: int
    rgb_msg: EncodedImage
    depth_msg: EncodedImage | None
    first_mask: np.ndarray  # (H, W) 0/1 ground truth, the SAM2 peer's frame-0 prompt
    intrinsics: CameraIntrinsics


@dataclass
class Trace:
    """What one tracker measured, frame by frame."""

    name: str
    stages: tuple[str, ...]
    stage_ms: dict[str, list[float]] = field(default_factory=dict)
    frame_ms: list[float] = field(default_factory=list)
    state_mib: list[float] = field(default_factory=list)

    def record(self, stage_ms: dict[str, float], frame_ms: float, state_bytes: int) -> None:
        for stage in self.stages:
            self.stage_ms.setdefault(stage, []).append(stage_ms[stage])
        self.frame_ms.append(frame_ms)
        self.state_mib.append(state_bytes / _MIB)


def camera_frames(frames: int, width: int, height: int, seed: int) -> Iterator[Frame]:
    """Synthetic RGB-D frames as the node receives them: rgb8 and 16UC1 message buffers."""
    for frame in generate_video(SyntheticConfig(height=height, width=width, frames=frames, seed=seed)):
        depth = encode_image(frame.depth_mm, "16UC1") if frame.depth_mm is not None else None
        yield Frame(frame.index, encode_image(frame.rgb, "rgb8"), depth, (frame.gt > 0).astype(np.uint8),
                    frame.intrinsics)


def convert(frame: Frame) -> tuple[np.ndarray, np.ndarray | None]:
    """Message buffers -> numpy (the node's image-conversion stage)."""
    m = frame.rgb_msg
    rgb = np.ascontiguousarray(to_rgb(decode_image(m.encoding, m.height, m.width, m.step, m.is_bigendian, m.data),
                                      m.encoding))
    depth = None
    if frame.depth_msg is not None:
        d = frame.depth_msg
        depth = to_depth(decode_image(d.encoding, d.height, d.width, d.step, d.is_bigendian, d.data), d.encoding)
    return rgb, depth


def current_rss_mib() -> float | None:
    """Resident set size now (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as stream:
            pages = int(stream.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / _MIB


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (getrusage: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (_MIB if platform.system() == "Darwin" else 1024.0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class M4SAMRunner:
    """Our tracker on one frame: conversion + ``step``, timed end to end."""

    def __init__(self, tracker: SaliencyTracker, name: str):
        self.tracker, self.trace = tracker, Trace(name, M4SAM_STAGES)

    def __call__(self, frame: Frame) -> None:
        t0 = time.perf_counter()
        rgb, depth = convert(frame)
        t1 = time.perf_counter()
        result = self.tracker.step(rgb, depth, stamp=frame.index / 30.0, intrinsics=frame.intrinsics)
        _sync(self.tracker.device)
        t2 = time.perf_counter()
        self.trace.record({"image_conversion": (t1 - t0) * 1e3, **result.timings_ms}, (t2 - t0) * 1e3,
                          self.tracker.memory.nbytes())


class SAM2Runner:
    """SAM2's own video predictor on one frame: conversion + its per-frame step, timed end to end."""

    def __init__(self, peer: SAM2VideoStream):
        self.peer, self.trace = peer, Trace("SAM2 video predictor (RGB, pytorch)", SAM2_STAGES)

    def __call__(self, frame: Frame) -> None:
        t0 = time.perf_counter()
        rgb, _ = convert(frame)
        t1 = time.perf_counter()
        stage_ms = self.peer.step(rgb, frame.first_mask if frame.index == 0 else None)
        _sync(self.peer.device)
        t2 = time.perf_counter()
        self.trace.record({"image_conversion": (t1 - t0) * 1e3, **stage_ms}, (t2 - t0) * 1e3, self.peer.state_bytes)


def run_streams(frames: Iterator[Frame], runners: list, device: torch.device) -> list[dict]:
    """Every runner on every frame, interleaved (who goes first alternates), so that machine load
    hits all of them alike; returns process memory at the checkpoints."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    checkpoints = []
    for frame in frames:
        for runner in runners if frame.index % 2 == 0 else runners[::-1]:
            runner(frame)
        if frame.index + 1 in CHECKPOINTS:
            cuda = torch.cuda.memory_allocated(device) / _MIB if device.type == "cuda" else None
            checkpoints.append({"frame": frame.index + 1, "rss_mib": current_rss_mib(), "cuda_allocated_mib": cuda})
    return checkpoints


def _stats(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(array)), "p95": float(np.percentile(array, 95))}


def summarise(trace: Trace, warmup: int) -> dict:
    """Statistics over the frames after warm-up, plus per-frame time and state at the checkpoints."""
    end_to_end = _stats(trace.frame_ms[warmup:])
    scaling = []
    for frame in (c for c in CHECKPOINTS if c <= len(trace.frame_ms)):
        window = trace.frame_ms[max(warmup, frame - 10):frame]  # the (up to) 10 frames ending at the checkpoint
        scaling.append({"frame": frame, "frame_ms": float(np.median(window)) if window else None,
                        "state_mib": trace.state_mib[frame - 1]})
    return {"name": trace.name,
            "stages_ms": {stage: _stats(trace.stage_ms[stage][warmup:]) for stage in trace.stages},
            "end_to_end_ms": end_to_end, "fps": 1e3 / end_to_end["median"], "scaling": scaling,
            "per_frame_ms": trace.frame_ms, "state_mib_per_frame": trace.state_mib}


def _parse_camera(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--camera must be WIDTHxHEIGHT, e.g. 640x480, got {text!r}") from None
    if width < 16 or height < 16:
        raise ValueError(f"--camera must be at least 16x16, got {text!r}")
    return width, height


def _check(args: argparse.Namespace) -> None:
    if args.frames < 2:
        raise ValueError(f"--frames must be >= 2, got {args.frames}")
    if not 0 <= args.warmup < args.frames:
        raise ValueError(f"--warmup must be in [0, --frames), got {args.warmup} with --frames {args.frames}")


def print_summary(report: dict) -> None:
    runs = [report["m4sam"]] + ([report["sam2"]] if report["sam2"] else [])
    for run in runs:
        print(f"\n{run['name']}: {run['fps']:.1f} FPS (end-to-end median {run['end_to_end_ms']['median']:.2f} ms, "
              f"p95 {run['end_to_end_ms']['p95']:.2f} ms)")
        for stage, stats in run["stages_ms"].items():
            print(f"  {stage:<18} median {stats['median']:8.2f} ms   p95 {stats['p95']:8.2f} ms")
        for point in run["scaling"]:
            per_frame = f"{point['frame_ms']:.2f} ms/frame" if point["frame_ms"] is not None else "in warm-up"
            print(f"  frame {point['frame']:>5}: {per_frame}, tracking state {point['state_mib']:.3f} MiB")
    memory = report["memory"]
    for point in memory["checkpoints"]:
        rss = f"{point['rss_mib']:.0f} MiB" if point["rss_mib"] is not None else "n/a"
        cuda = f", CUDA allocated {point['cuda_allocated_mib']:.0f} MiB" if point["cuda_allocated_mib"] else ""
        print(f"process after frame {point['frame']:>5}: RSS {rss}{cuda}")
    print(f"process peak RSS {memory['peak_rss_mib']:.0f} MiB"
          + (f", CUDA peak allocated {memory['cuda_peak_allocated_mib']:.0f} MiB"
             if memory["cuda_peak_allocated_mib"] is not None else ""))
    if report["ratio"]:
        print(f"\nM4-SAM / SAM2: FPS ratio {report['ratio']['fps']:.2f}, "
              f"tracking-state ratio at frame {report['ratio']['state_at_frame']}: {report['ratio']['state']:.3f}")


def build_report(args: argparse.Namespace, model_config: M4SAMConfig, engines: Engines, camera: tuple[int, int],
                 ours: Trace, peer: Trace | None, checkpoints: list[dict]) -> dict:
    device = engines.device
    cuda_peak = torch.cuda.max_memory_allocated(device) / _MIB if device.type == "cuda" else None
    report = {
        "config": {"preset": model_config.name, "adapter": model_config.adapter.kind,
                   "image_size": model_config.image_size, "frames": args.frames,
                   "warmup": args.warmup, "camera": list(camera), "backend": engines.choice.backend,
                   "device": str(device), "precision": engines.choice.precision,
                   "memory_attention_engine": engines.memory_attention.describe(),
                   "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                   "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                   "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
                   "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                   "interleaved": "each frame runs both trackers, alternating which goes first"},
        "memory": {"checkpoints": checkpoints, "peak_rss_mib": peak_rss_mib(), "cuda_peak_allocated_mib": cuda_peak},
        "m4sam": summarise(ours, args.warmup),
        "sam2": summarise(peer, args.warmup) if peer else None,
        "ratio": None,
    }
    if peer:
        last = report["m4sam"]["scaling"][-1]["frame"] if report["m4sam"]["scaling"] else args.frames
        report["ratio"] = {"fps": report["m4sam"]["fps"] / report["sam2"]["fps"], "state_at_frame": last,
                           "state": ours.state_mib[last - 1] / max(peer.state_mib[last - 1], 1e-12)}
    return report


def run(args: argparse.Namespace) -> int:
    _check(args)
    width, height = _parse_camera(args.camera)
    model = model_from_args(args)
    config = TrackerConfig(image_size=model.config.image_size, lost_score_threshold=0.0, gap_timeout_s=1e9,
                           mode=args.mode)
    engines = create_engines(model, engine_settings(args, zero_shot=resolve_mode(config.mode, model) == "zero_shot"))
    device = engines.device
    tracker = SaliencyTracker(model, config, device=device, encoder=engines.encoder,
                              memory_attention=engines.memory_attention)
    variant = f"{model.config.adapter.kind}, " if tracker.mode == "learned" else ""  # which adapter learned mode runs
    ours = M4SAMRunner(tracker, f"M4-SAM {tracker.mode} ({variant}{engines.encoder.describe()})")
    runners = [ours]
    if not args.no_peer:
        peer = SAM2VideoStream(sam2_predictor(model.config, weights_from=model), device, args.frames, (height, width))
        runners.append(SAM2Runner(peer))
    checkpoints = run_streams(camera_frames(args.frames, width, height, args.seed), runners, device)
    report = build_report(args, model.config, engines, (width, height), ours.trace,
                          runners[1].trace if len(runners) > 1 else None, checkpoints)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = args.output_dir / f"bench-{model.config.name}-{model.config.image_size}-{engines.choice.backend}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    from m4sam_ros.tools.bench_chart import plot_report

    plot_report(report, stem.with_suffix(".png"))
    print_summary(report)
    print(f"\nwrote {stem.with_suffix('.json')} and {stem.with_suffix('.png')}")
    return 0
