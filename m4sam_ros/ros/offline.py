"""Run the tracker over every frame of a recorded bag and write what the node would publish.

    m4sam run --bag recording/ --out results/ -p model.sam2_checkpoint:=sam2.1_hiera_tiny.pt
    m4sam run --bag in.mcap --out out --params-file my.yaml --overlay
    m4sam run --bag in.mcap --out out --initial-mask first_frame_object.png

How recordings are batch-processed and settings compared: no ROS graph and no dropped
frames. The tracker is built from the node's settings (``--params-file``, the node's YAML,
and ``-p name:=value``) by the node's own code, and each frame goes through the node's
decoding (raw or compressed) and message builders, so the output bag holds what the node
would have published for that frame: ``/saliency/mask``, ``/saliency/objects``,
``/saliency/markers`` (``--overlay``: ``/saliency/overlay``; ``--probability`` or
``publish_probability``: ``/saliency/probability``), each with the colour frame's header,
at the colour frame's recording time. ``summary.json`` goes into the output bag folder.

Pairing is decided from all stamps first (``m4sam_ros.offline_pairing``: nearest depth
within ``sync.slop``, else RGB-only; latest camera_info at or before the frame); frames
are then decoded and run in recording order, a colour frame waiting only for partners
recorded after it. A frame that cannot be decoded is skipped and counted, never fatal.
``--initial-mask`` seeds the memory from a mask of the first frame (what a detector or an
operator chose) instead of the model's own initialisation, as ``SaliencyTracker.reset`` does.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from m4sam_ros.encodings import ImageLayoutError, UnsupportedEncodingError
from m4sam_ros.offline_pairing import FramePlan, plan_frames
from m4sam_ros.ros.bag_input import (CAMERA_INFO, BagError, BagStreams, add_topic_arguments, bag_messages,
                                     deserialize, header_stamp_ns, open_bag, resolve_streams)
from m4sam_ros.ros.bag_output import OutputBag
from m4sam_ros.ros.conversions import check_image
from m4sam_ros.ros.frames import prepare_frame
from m4sam_ros.ros.model_loader import StartupError, build_tracker
from m4sam_ros.ros.outputs import result_messages
from m4sam_ros.ros.parameters import NodeParameters
from m4sam_ros.ros.settings_file import SettingsError, load_settings
from m4sam_ros.tracker import SaliencyTracker

LOG = logging.getLogger("m4sam.run")
LOGGED_PER_KIND = 3  # then only counted (the summary has the totals)
SUMMARY_FILE = "summary.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bag", type=Path, required=True, help="input rosbag2 (folder, .db3 or .mcap)")
    parser.add_argument("--out", type=Path, required=True, help="output bag folder (mcap; must not exist)")
    add_topic_arguments(parser)
    parser.add_argument("--params-file", type=Path, default=None,
                        help="the node's parameters YAML (as for --ros-args --params-file)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME:=VALUE",
                        help="a node parameter, e.g. -p model.preset:=hiera_s (repeatable; wins over the file)")
    parser.add_argument("--initial-mask", type=Path, default=None,
                        help="image of the object to track in the first frame (nonzero = object, any size: scaled); "
                             "default: the model's own initialisation")
    parser.add_argument("--overlay", action="store_true", help="also write /saliency/overlay (bgr8)")
    parser.add_argument("--probability", action="store_true",
                        help="also write /saliency/probability (32FC1); publish_probability does too")


@dataclass
class RunStats:
    """What the summary reports."""

    colour_frames: int = 0
    processed: int = 0
    used_depth: int = 0
    skipped: Counter = field(default_factory=Counter)       # reason -> colour frames not run
    notes: Counter = field(default_factory=Counter)         # FrameNote kind (and depth problems) -> frames
    reinitialized: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)       # the first message of each problem kind
    inference_ms: list[float] = field(default_factory=list)
    objects: list[int] = field(default_factory=list)
    abs_skew_ms: list[float] = field(default_factory=list)
    interrupted: bool = False

    def problem(self, counter: Counter, kind: str, message: str) -> None:
        counter[kind] += 1
        if counter[kind] == 1:
            self.examples.append(f"{kind}: {message}")
        if counter[kind] <= LOGGED_PER_KIND:
            LOG.warning("%s%s", message, " (further ones only counted)" if counter[kind] == LOGGED_PER_KIND else "")


def scan_stamps(reader: Any, streams: BagStreams) -> dict[str, list[int | None]]:
    """Header stamps per stream in recording order (None: the message is not readable CDR)."""
    stamps: dict[str, list[int | None]] = {"rgb": [], "depth": [], "info": []}
    total = sum(s.count for s in streams.all())
    for message in tqdm(bag_messages(reader, streams), total=total, desc="reading stamps", unit="msg", leave=False):
        try:
            stamps[message.role].append(header_stamp_ns(message.raw))
        except BagError:
            stamps[message.role].append(None)
    return stamps


def plan(stamps: dict[str, list[int | None]], slop_s: float) -> list[FramePlan | None]:
    """A plan per colour message (None: unreadable), indices into the full per-stream lists."""
    valid = {role: [i for i, s in enumerate(values) if s is not None] for role, values in stamps.items()}
    plans = plan_frames(*([stamps[role][i] for i in valid[role]] for role in ("rgb", "depth", "info")),
                        slop_ns=round(slop_s * 1e9))
    full: list[FramePlan | None] = [None] * len(stamps["rgb"])
    for i, p in zip(valid["rgb"], plans):
        full[i] = FramePlan(depth=None if p.depth is None else valid["depth"][p.depth],
                            info=None if p.info is None else valid["info"][p.info], skew_ns=p.skew_ns)
    return full


class OfflineRun:
    """Pass two: decode, track and write, colour frame by colour frame."""

    def __init__(self, streams: BagStreams, plans: list[FramePlan | None], tracker: SaliencyTracker,
                 out: OutputBag, settings: NodeParameters, overlay: bool, probability: bool) -> None:
        self.streams, self.plans, self.tracker, self.out = streams, plans, tracker, out
        self.settings = settings
        self.overlay, self.probability = overlay, probability or settings.publish_probability
        self.stats = RunStats(colour_frames=len(plans))
        # last colour frame that needs each depth / camera_info message: buffers are released after it
        self._last_user: dict[str, dict[int, int]] = {"depth": {}, "info": {}}
        for i, p in enumerate(plans):
            if p is not None:
                if p.depth is not None:
                    self._last_user["depth"][p.depth] = i
                if p.info is not None:
                    self._last_user["info"][p.info] = i
        self._buffer: dict[str, dict[int, bytes]] = {"depth": {}, "info": {}}

    def run(self, reader: Any) -> RunStats:
        pending: deque[tuple[int, bytes, int]] = deque()  # colour frames read, not yet run: (index, raw, log_ns)
        seen = Counter()
        with tqdm(total=len(self.plans), desc="tracking", unit="frame") as bar:
            try:
                for message in bag_messages(reader, self.streams):
                    index = seen[message.role]
                    seen[message.role] += 1
                    if message.role == "rgb":
                        pending.append((index, message.raw, message.log_ns))
                    elif index in self._last_user[message.role]:
                        self._buffer[message.role][index] = message.raw
                    while pending and self._ready(pending[0][0]):
                        self._run_frame(*pending.popleft())
                        bar.update()
                for item in pending:  # partners that never came (the bag changed since the scan)
                    self._run_frame(*item)
                    bar.update()
            except KeyboardInterrupt:
                self.stats.interrupted = True
        return self.stats

    def _ready(self, index: int) -> bool:
        p = self.plans[index]
        return p is None or ((p.depth is None or p.depth in self._buffer["depth"])
                             and (p.info is None or p.info in self._buffer["info"]))

    def _take(self, role: str, index: int | None, colour: int) -> bytes | None:
        if index is None:
            return None
        raw = self._buffer[role].get(index)
        if self._last_user[role].get(index) == colour:
            self._buffer[role].pop(index, None)
        return raw

    def _run_frame(self, index: int, raw: bytes, log_ns: int) -> None:
        stats = self.stats
        p = self.plans[index]
        depth_raw = self._take("depth", p.depth if p else None, index)
        info_raw = self._take("info", p.info if p else None, index)
        if p is None:
            stats.problem(stats.skipped, "colour_unreadable", f"colour message {index} is not readable CDR: skipped")
            return
        try:
            rgb_msg = deserialize(raw, self.streams.rgb.msgtype)
            check_image(rgb_msg, "colour")
        except (BagError, UnsupportedEncodingError, ImageLayoutError) as exc:
            stats.problem(stats.skipped, "colour_unusable", f"colour frame {index}: {exc}; skipped")
            return
        depth_msg = self._depth(depth_raw, index)
        info_msg = None
        if info_raw is not None:
            try:
                info_msg = deserialize(info_raw, CAMERA_INFO)
            except BagError as exc:
                stats.problem(stats.notes, "camera_info_unreadable", f"frame {index}: {exc}; no 3-D for it")
        try:
            frame = prepare_frame(rgb_msg, depth_msg, info_msg)
        except (UnsupportedEncodingError, ImageLayoutError) as exc:  # compressed colour that does not decode
            stats.problem(stats.skipped, "colour_unusable", f"colour frame {index}: {exc}; skipped")
            return
        for note in frame.notes:
            stats.problem(stats.notes, note.kind, f"frame {index}: {note.message}")
        started = time.perf_counter()
        try:
            result = self.tracker.step(frame.rgb, frame.depth, frame.stamp, frame.intrinsics)
        except Exception as exc:  # as in the node: one frame's failure must not end the run
            stats.problem(stats.skipped, "inference", f"frame {index}: {type(exc).__name__}: {exc}")
            return
        stats.inference_ms.append((time.perf_counter() - started) * 1e3)
        for topic, msg in result_messages(rgb_msg.header, result, frame.rgb, probability=self.probability,
                                          overlay=self.overlay, overlay_alpha=self.settings.overlay_alpha):
            self.out.write(f"/{topic}", msg, log_ns)
        stats.processed += 1
        stats.used_depth += int(result.used_depth)
        stats.objects.append(len(result.objects))
        if result.reinitialized:
            stats.reinitialized[result.reinitialized] += 1
        if frame.depth is not None and p.skew_ns is not None:
            stats.abs_skew_ms.append(abs(p.skew_ns) / 1e6)

    def _depth(self, raw: bytes | None, index: int) -> Any:
        if raw is None:
            return None
        try:
            msg = deserialize(raw, self.streams.depth.msgtype)
            check_image(msg, "depth")
            return msg
        except (BagError, UnsupportedEncodingError, ImageLayoutError) as exc:
            self.stats.problem(self.stats.notes, "depth_unusable", f"frame {index}: depth {exc}; runs RGB-only")
            return None


def summary(args: argparse.Namespace, streams: BagStreams, settings: NodeParameters, engine: str, stats: RunStats,
            written: dict[str, int], wall_s: float) -> dict:
    def quantiles(values: list[float]) -> dict[str, float] | None:
        if not values:
            return None
        array = np.asarray(values)
        return {"mean": round(float(array.mean()), 3), "median": round(float(np.median(array)), 3),
                "p95": round(float(np.percentile(array, 95)), 3), "max": round(float(array.max()), 3)}

    return {
        "input": str(args.bag), "output": str(args.out),
        "streams": {s.role: {"topic": s.topic, "type": s.msgtype, "messages": s.count} for s in streams.all()},
        "engine": engine,
        "pairing": {"rule": "nearest depth stamp within sync.slop, else RGB-only; latest camera_info at or before",
                    "slop_s": settings.sync.slop, "abs_skew_ms": quantiles(stats.abs_skew_ms)},
        "frames": {"colour": stats.colour_frames, "processed": stats.processed, "with_depth": stats.used_depth,
                   "rgb_only": stats.processed - stats.used_depth, "skipped": sum(stats.skipped.values())},
        "skipped": dict(stats.skipped), "notes": dict(stats.notes), "examples": stats.examples,
        "reinitialized": dict(stats.reinitialized),
        "objects_per_frame_mean": round(float(np.mean(stats.objects)), 3) if stats.objects else None,
        "inference_ms": quantiles(stats.inference_ms),
        "wall_s": round(wall_s, 3), "written": written, "interrupted": stats.interrupted,
    }


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        settings = load_settings(args.params_file, args.param)
    except SettingsError as exc:
        print(f"m4sam run: {exc}", file=sys.stderr)
        return 2
    if args.out.exists():
        print(f"m4sam run: --out {args.out} exists; bags are never overwritten: choose a new path", file=sys.stderr)
        return 2
    initial_mask = None
    if args.initial_mask is not None:
        initial_mask = cv2.imread(str(args.initial_mask), cv2.IMREAD_GRAYSCALE)
        if initial_mask is None or not initial_mask.any():
            what = "cannot be read as an image" if initial_mask is None else "has no nonzero (object) pixel"
            print(f"m4sam run: --initial-mask {args.initial_mask} {what}", file=sys.stderr)
            return 2
    try:
        with open_bag(args.bag) as reader:
            streams = resolve_streams(reader, args.rgb_topic, args.depth_topic, args.info_topic)
            LOG.info("input %s: %s", args.bag, streams.describe())
            plans = plan(scan_stamps(reader, streams), settings.sync.slop)
            tracker, engine = build_tracker(settings)
            LOG.info("model ready: %s", engine)
            if initial_mask is not None:
                tracker.reset(initial_mask=initial_mask)
            with OutputBag(args.out) as out, logging_redirect_tqdm():
                stats = OfflineRun(streams, plans, tracker, out, settings, args.overlay, args.probability).run(reader)
            written = dict(out.counts)
    except (BagError, StartupError, OSError) as exc:
        print(f"m4sam run: {exc}", file=sys.stderr)
        return 1
    report = summary(args, streams, settings, engine, stats, written, time.perf_counter() - started)
    (args.out / SUMMARY_FILE).write_text(json.dumps(report, indent=2) + "\n")
    frames = report["frames"]
    print(f"[m4sam run] {frames['processed']} of {frames['colour']} colour frames tracked "
          f"({frames['with_depth']} RGB-D, {frames['rgb_only']} RGB-only, {frames['skipped']} skipped) "
          f"in {report['wall_s']:.1f} s; wrote {args.out} ({', '.join(f'{t} {n}' for t, n in written.items())})")
    if report["examples"]:
        print("[m4sam run] problems (counts in summary.json): " + "; ".join(report["examples"]))
    print(f"[m4sam run] summary: {args.out / SUMMARY_FILE}")
    if stats.interrupted:
        return 130
    return 0 if frames["processed"] and not stats.skipped["inference"] else 1
