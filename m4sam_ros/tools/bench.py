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
full memory path, as SAM2's does. With ``--sweep-memory-frames`` more trackers, one per bank
size (``num_memory_frames``), share the encoder and run interleaved on the same frames: memory
attention costs what the bank holds, and the chart shows it. The report records the CPU
count, the thread settings (``--threads``) and the load average at start and end: on a shared
CPU the default of one thread per core can collapse. Writes a JSON report and a PNG chart.

Options of the PyTorch backend (``--cuda-graphs``, ``--compile``) are reported with the
seconds each static call's first call took (warm-up, compile, capture: ``setup_s``).
``--parity-frames N`` first tracks N frames twice, on the engines and on PyTorch FP32 eager
calls, and reports the worst probability difference and mask IoU: what a precision or an
option costs in output, next to what it saves in time. The SAM2 peer runs under the same
autocast precision as our engines (SAM2's own video demo runs in bfloat16 autocast on CUDA),
bf16 when ours is fp16 (``peer_precision``).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
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
from m4sam_ros.engines.factory import Engines, EngineSettings, create_engines, memory_attention_engine
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
    group.add_argument("--parity-frames", type=int, default=0,
                       help="first track this many frames on the engines and on PyTorch FP32 eager calls, and "
                            "report the worst probability difference and mask IoU (0 = skip)")
    group.add_argument("--sweep-memory-frames", type=int, nargs="+", default=[], metavar="N",
                       help="also run trackers with these --num-memory-frames on the same frames (one encoder, a "
                            "memory-attention engine per bank size) and chart per-frame cost against it")


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


def peer_precision(precision: str) -> str:
    """The SAM2 peer's autocast precision: ours, except fp16, where SAM2's own memory attention
    cannot run (its bank is bfloat16, and fp16 autocast refuses to concatenate bf16 with fp32):
    the peer then runs bf16, as SAM2's video demo does."""
    return "bf16" if precision == "fp16" else precision


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def measure_parity(model: torch.nn.Module, config: TrackerConfig, engines: Engines, frames: list[Frame]) -> dict:
    """The engines' tracker against a tracker on PyTorch FP32 eager calls (a copy of the model),
    frame by frame from the first frame: worst max |probability difference| and lowest mask IoU."""
    device = engines.device
    reference = SaliencyTracker(copy.deepcopy(model), config, device=device)
    candidate = SaliencyTracker(model, config, device=device, encoder=engines.encoder,
                                memory_attention=engines.memory_attention)
    differences, ious = [], []
    for frame in frames:
        rgb, depth = convert(frame)
        want, got = (t.step(rgb, depth, stamp=frame.index / 30.0, intrinsics=frame.intrinsics)
                     for t in (reference, candidate))
        differences.append(float(np.abs(want.probability - got.probability).max()))
        ious.append(_mask_iou(want.mask > 0, got.mask > 0))
    return {"frames": len(frames), "reference": f"pytorch on {device} (fp32, eager)",
            "max_abs_probability": max(differences), "min_mask_iou": min(ious),
            "per_frame_max_abs_probability": differences, "per_frame_mask_iou": ious}


def _engine_setup(engines: Engines) -> dict[str, float]:
    """Seconds of each static call's first call (compile and capture included); {} when eager."""
    return {f"{part}: {call}": seconds for part, engine in (("encoder", engines.encoder),
                                                            ("memory_attention", engines.memory_attention))
            for call, seconds in getattr(engine, "first_call_s", {}).items()}


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
    if args.parity_frames < 0:
        raise ValueError(f"--parity-frames must be >= 0, got {args.parity_frames}")


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
    for call, seconds in report["config"]["setup_s"].items():
        print(f"first call of {call}: {seconds:.2f} s (warm-up, compile and capture included)")
    if report["parity"]:
        parity = report["parity"]
        print(f"parity over {parity['frames']} frames against {parity['reference']}: max |probability difference| "
              f"{parity['max_abs_probability']:.2e}, lowest mask IoU {parity['min_mask_iou']:.4f}")
    if report["ratio"]:
        print(f"\nours / SAM2: FPS ratio {report['ratio']['fps']:.2f}, "
              f"tracking-state ratio at frame {report['ratio']['state_at_frame']}: {report['ratio']['state']:.3f}")
    for point in report["memory_sweep"] or []:
        print(f"num_memory_frames {point['num_memory_frames']}: memory attention median "
              f"{point['memory_attention_ms']['median']:.2f} ms, frame median {point['end_to_end_ms']['median']:.2f} ms")
    config = report["config"]
    print(f"machine: {config['cpu_count']} CPUs, torch threads {config['torch_threads']}, load average "
          f"{config['load_average_start']} at start, {config['load_average']} at end")


def memory_sweep(traces: dict[int, Trace], warmup: int) -> list[dict]:
    """Per bank size (num_memory_frames, ascending): median and p95 of memory attention and of the frame."""
    return [{"num_memory_frames": frames, "memory_attention_ms": _stats(trace.stage_ms["memory_attention"][warmup:]),
             "end_to_end_ms": _stats(trace.frame_ms[warmup:])} for frames, trace in sorted(traces.items())]


def _machine(threads: int, load_at_start: tuple[float, float, float] | None) -> dict:
    """What the timings depend on beyond the code: CPU, thread settings and how busy the machine was."""
    return {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "threads_requested": threads, "torch_threads": torch.get_num_threads(),
            "load_average_start": load_at_start, "load_average": _load_average()}


def _load_average() -> tuple[float, float, float] | None:
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def build_report(args: argparse.Namespace, model_config: M4SAMConfig, engines: Engines, camera: tuple[int, int],
                 ours: Trace, peer: Trace | None, checkpoints: list[dict], mode: str, sweep: dict[int, Trace],
                 load_at_start: tuple[float, float, float] | None = None, parity: dict | None = None) -> dict:
    device = engines.device
    cuda_peak = torch.cuda.max_memory_allocated(device) / _MIB if device.type == "cuda" else None
    report = {
        "config": {"preset": model_config.name, "adapter": model_config.adapter.kind,
                   "image_size": model_config.image_size, "frames": args.frames,
                   "warmup": args.warmup, "camera": list(camera), "backend": engines.choice.backend,
                   "device": str(device), "precision": engines.choice.precision,
                   "peer_precision": peer_precision(engines.choice.precision) if peer else None,
                   "encoder_engine": engines.encoder.describe(),
                   "memory_attention_engine": engines.memory_attention.describe(),
                   "mode": mode, "num_memory_frames": args.num_memory_frames,
                   "cuda_graphs": bool(getattr(engines.encoder, "cuda_graphs", False)),
                   "compile": bool(getattr(engines.encoder, "compiled", False)),
                   "setup_s": _engine_setup(engines),
                   "torch": torch.__version__, **_machine(args.threads, load_at_start),
                   "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                   "interleaved": "each frame runs both trackers, alternating which goes first"},
        "memory": {"checkpoints": checkpoints, "peak_rss_mib": peak_rss_mib(), "cuda_peak_allocated_mib": cuda_peak},
        "m4sam": summarise(ours, args.warmup),
        "sam2": summarise(peer, args.warmup) if peer else None,
        "ratio": None,
        "parity": parity,
        "memory_sweep": memory_sweep(sweep, args.warmup) if len(sweep) > 1 else None,
    }
    if peer:
        last = report["m4sam"]["scaling"][-1]["frame"] if report["m4sam"]["scaling"] else args.frames
        report["ratio"] = {"fps": report["m4sam"]["fps"] / report["sam2"]["fps"], "state_at_frame": last,
                           "state": ours.state_mib[last - 1] / max(peer.state_mib[last - 1], 1e-12)}
    return report


def _sweep_runners(model, engines: Engines, settings: EngineSettings, config: TrackerConfig, frames: list[int],
                   device: torch.device) -> dict[int, M4SAMRunner]:
    """A tracker per other bank size, sharing the main tracker's encoder engine."""
    runners = {}
    for count in frames:
        attention = memory_attention_engine(model, engines.choice, dataclasses.replace(settings, num_memory_frames=count))
        tracker = SaliencyTracker(model, dataclasses.replace(config, num_memory_frames=count), device=device,
                                  encoder=engines.encoder, memory_attention=attention)
        runners[count] = M4SAMRunner(tracker, f"M4-SAM {tracker.mode}, {count} memory frames")
    return runners


def run(args: argparse.Namespace) -> int:
    _check(args)
    width, height = _parse_camera(args.camera)
    load_at_start = _load_average()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = model_from_args(args)
    config = TrackerConfig(image_size=model.config.image_size, num_memory_frames=args.num_memory_frames,
                           lost_score_threshold=0.0, gap_timeout_s=1e9, mode=args.mode)
    settings = engine_settings(args, zero_shot=resolve_mode(config.mode, model) == "zero_shot")
    engines = create_engines(model, settings)
    device = engines.device
    tracker = SaliencyTracker(model, config, device=device, encoder=engines.encoder,
                              memory_attention=engines.memory_attention)
    parity = (measure_parity(model, config, engines, list(camera_frames(args.parity_frames, width, height, args.seed)))
              if args.parity_frames else None)
    name = f"{model.adapter.method} learned" if tracker.mode == "learned" else "zero-shot SAM2 tracker"
    ours = M4SAMRunner(tracker, f"{name} ({engines.encoder.describe()})")
    others = sorted(set(args.sweep_memory_frames) - {args.num_memory_frames})
    sweep = _sweep_runners(model, engines, settings, config, others, device)
    runners = [ours, *sweep.values()]
    if not args.no_peer:
        peer = SAM2VideoStream(sam2_predictor(model.config, weights_from=model), device, args.frames, (height, width),
                               precision=peer_precision(engines.choice.precision))
        runners.append(SAM2Runner(peer))
    checkpoints = run_streams(camera_frames(args.frames, width, height, args.seed), runners, device)
    traces = {args.num_memory_frames: ours.trace, **{count: runner.trace for count, runner in sweep.items()}}
    report = build_report(args, model.config, engines, (width, height), ours.trace,
                          runners[-1].trace if not args.no_peer else None, checkpoints, tracker.mode, traces,
                          load_at_start, parity)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = args.output_dir / f"bench-{model.config.name}-{model.config.image_size}-{engines.choice.backend}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    from m4sam_ros.tools.bench_chart import plot_report

    plot_report(report, stem.with_suffix(".png"))
    print_summary(report)
    print(f"\nwrote {stem.with_suffix('.json')} and {stem.with_suffix('.png')}")
    return 0
