"""Run the real saliency node on a rendered robot scene and report what it did.

Renders a held-out robot scene (``m4sam scenes``' val split: objects and layouts the demo
weights never saw in training; by default the first from index 100 where an arm carries
the salient object), starts ``saliency_node`` as its own process, plays the video to it over
ROS 2 (RGB, 16UC1 depth, camera_info, like a RealSense with aligned depth), records
``/saliency/mask`` and ``/saliency/overlay``, and ends by printing the frame rate, the
result age and the S-measure / MAE against the ground truth, and by writing an overlay
strip (PNG) and an animation (GIF) to look at. ``--source synthetic`` plays a 2-D video instead.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import rclpy
from rclpy.node import Node
from sensor_msgs.msg import Image
from tqdm import tqdm

from m4sam_ros.learn.metrics import score_frames
from m4sam_ros.msg import SalientObjectArray
from m4sam_ros.postprocess import CameraIntrinsics
from m4sam_ros.ros.conversions import rgb_from_msg, stamp_seconds
from m4sam_ros.ros.player import CameraPublishers, PlayerFrame

NODE_READY_TIMEOUT_S = 120.0
# Trained by `m4sam train --config config/train_demo.yaml` on rendered scenes and 2-D videos (see README).
DEMO_WEIGHTS = Path(__file__).resolve().parents[1] / "data"
SOURCES = ("scene", "synthetic")
DEMO_SCENE = 112  # val split, seed 0: the first video from index 100 in which an arm carries the salient object


@dataclass
class DemoFrame:
    """A frame as the camera sends it, with its ground truth (0/255)."""

    rgb: np.ndarray
    depth_mm: np.ndarray | None  # None: the depth frame dropped
    gt: np.ndarray
    intrinsics: CameraIntrinsics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", default="scene", choices=SOURCES,
                        help="scene: a rendered held-out robot scene; synthetic: a 2-D generated video")
    parser.add_argument("--scene-index", type=int, default=DEMO_SCENE, help="val-split scene to render (seed 0)")
    parser.add_argument("--frames", type=int, default=60, help="frames to play")
    parser.add_argument("--rate", type=float, default=10.0, help="camera rate in Hz")
    parser.add_argument("--width", type=int, default=160, help="image width of the stream")
    parser.add_argument("--height", type=int, default=120, help="image height of the stream")
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic video (--source synthetic)")
    parser.add_argument("--preset", default="test", help="model preset for the node (model.preset)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="model input size (model.image_size; default: the node's, what --adapter was "
                             "trained at; 128 without one)")
    parser.add_argument("--sam2-checkpoint", default=str(DEMO_WEIGHTS / "demo_sam2.pt"),
                        help="SAM2 weights for the node (model.sam2_checkpoint); '' = random init")
    parser.add_argument("--adapter", default=str(DEMO_WEIGHTS / "demo_adapter.pt"),
                        help="adapter weights for the node (model.adapter); '' = zero-shot")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads of the node (engine.num_threads; 0 = torch's default)")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="where images and the node log go")


@dataclass
class Recording:
    """What came back from the node, keyed by the RGB stamp it answers."""

    masks: dict[float, np.ndarray] = field(default_factory=dict)
    overlays: dict[float, np.ndarray] = field(default_factory=dict)
    objects: dict[float, int] = field(default_factory=dict)
    ages_s: list[float] = field(default_factory=list)
    first_s: float | None = None
    last_s: float | None = None


class DemoCamera(Node):
    """Publishes the generated frames as a camera would, and records the node's answers."""

    def __init__(self) -> None:
        super().__init__("m4sam_demo")
        self.camera = CameraPublishers(self)
        self.recording = Recording()
        self.create_subscription(Image, "saliency/mask", self._on_mask, 10)
        self.create_subscription(Image, "saliency/overlay", self._on_overlay, 10)
        self.create_subscription(SalientObjectArray, "saliency/objects", self._on_objects, 10)

    def publish(self, frame: DemoFrame) -> float:
        return self.camera.publish(PlayerFrame(frame.rgb, frame.depth_mm, frame.intrinsics))

    def _on_mask(self, msg: Image) -> None:
        now = time.monotonic()
        rec = self.recording
        rec.first_s = now if rec.first_s is None else rec.first_s
        rec.last_s = now
        stamp = stamp_seconds(msg.header.stamp)
        rec.ages_s.append(self.get_clock().now().nanoseconds * 1e-9 - stamp)
        rec.masks[stamp] = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)[:, :msg.width].copy()

    def _on_overlay(self, msg: Image) -> None:
        rgb = rgb_from_msg(msg)
        self.recording.overlays[stamp_seconds(msg.header.stamp)] = rgb.copy()

    def _on_objects(self, msg: SalientObjectArray) -> None:
        self.recording.objects[stamp_seconds(msg.header.stamp)] = len(msg.objects)


def start_node(args: argparse.Namespace, log_path: Path) -> subprocess.Popen:
    def text(value: str) -> str:  # rcl reads a parameter override as YAML: an empty one must be quoted
        return value or "''"

    # 0: the node's own default, the adapter's trained size; a random model runs small
    image_size = args.image_size or (0 if args.adapter else 128)
    ros_args = ["-p", f"model.preset:={args.preset}", "-p", f"model.image_size:={image_size}",
                "-p", f"model.sam2_checkpoint:={text(args.sam2_checkpoint)}", "-p", f"model.adapter:={text(args.adapter)}",
                "-p", f"engine.num_threads:={args.threads}"]
    command = [sys.executable, "-m", "m4sam_ros.ros.saliency_node", "--ros-args", *ros_args]
    print(f"[demo] starting the node: {' '.join(command[1:])}  (log: {log_path})")
    return subprocess.Popen(command, stdout=log_path.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def stop_node(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def spin_for(node: Node, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        rclpy.spin_once(node, timeout_sec=min(left, 0.01))


def wait_for_node(camera: DemoCamera, process: subprocess.Popen, log_path: Path) -> None:
    """The node is ready when it subscribes to our topics and the overlay publisher shows up."""
    deadline = time.monotonic() + NODE_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the node exited with code {process.returncode}:\n{log_path.read_text()[-2000:]}")
        if camera.camera.rgb.get_subscription_count() and camera.count_publishers("saliency/overlay"):
            return
        spin_for(camera, 0.1)
    raise RuntimeError(f"the node did not subscribe within {NODE_READY_TIMEOUT_S:.0f} s; see {log_path}")


def demo_frames(args: argparse.Namespace) -> list[DemoFrame]:
    """The video to play: rendered (PyBullet, a few seconds) or generated."""
    if args.source == "synthetic":
        from m4sam_ros.learn.synthetic import SyntheticConfig, generate_video

        config = SyntheticConfig(height=args.height, width=args.width, frames=args.frames, seed=args.seed)
        return [DemoFrame(f.rgb, f.depth_mm, f.gt, f.intrinsics) for f in generate_video(config)]
    from m4sam_ros.learn.scenes.generate import SceneConfig, SceneVideo

    video = SceneVideo(SceneConfig(split="val", width=args.width, height=args.height, frames=args.frames, seed=0,
                                   progress=False), args.scene_index)
    frames = [DemoFrame(f.rgb, f.depth_mm, f.gt, video.intrinsics)
              for f in tqdm(video.frames(), total=args.frames, desc="rendering", unit="frame")]
    scene = video.spec.summary()
    print(f"[demo] rendered held-out scene {video.name}: {scene['family']} layout, {scene['camera_motion']} camera, "
          f"salient: {scene['salient_object']} ({scene['salient_rule']})")
    return frames


def write_pictures(frames: list[DemoFrame], stamps: list[float], rec: Recording, out: Path) -> list[Path]:
    """An overlay strip of six evenly spaced frames (PNG) and the whole run as a GIF."""
    from PIL import Image as PILImage

    answered = [(f, rec.overlays[s]) for f, s in zip(frames, stamps) if s in rec.overlays]
    if not answered:
        return []
    picks = [answered[i] for i in np.linspace(0, len(answered) - 1, min(6, len(answered))).astype(int)]
    rows = [np.concatenate([f.rgb, np.repeat(f.gt[:, :, None], 3, axis=2), overlay], axis=0)
            for f, overlay in picks]  # each column: RGB / ground truth / node overlay
    strip = np.concatenate(rows, axis=1)
    strip_path = out / "overlay_strip.png"
    cv2.imwrite(str(strip_path), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
    gif_path = out / "overlay.gif"
    images = [PILImage.fromarray(overlay) for _, overlay in answered]
    images[0].save(gif_path, save_all=True, append_images=images[1:], duration=100, loop=0)
    return [strip_path, gif_path]


def run(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "node.log"
    frames = demo_frames(args)
    process = start_node(args, log_path)
    rclpy.init()
    camera = DemoCamera()
    try:
        wait_for_node(camera, process, log_path)
        print(f"[demo] node ready; playing {len(frames)} frames of {args.width}x{args.height} RGB-D at {args.rate:g} Hz")
        stamps = []
        for frame in tqdm(frames, desc="playing", unit="frame"):
            stamps.append(camera.publish(frame))
            spin_for(camera, 1.0 / args.rate)
        spin_for(camera, 3.0)  # let the last answers arrive
    finally:
        camera.destroy_node()
        rclpy.try_shutdown()
        stop_node(process)
    return report(frames, stamps, camera.recording, args.out)


def report(frames: list[DemoFrame], stamps: list[float], rec: Recording, out: Path) -> int:
    pairs = [(rec.masks[s], f.gt) for f, s in zip(frames, stamps) if s in rec.masks and f.gt.any()]
    if not rec.masks:
        print("[demo] FAILED: the node published no mask; see node.log")
        return 1
    span = (rec.last_s or 0.0) - (rec.first_s or 0.0)
    fps = (len(rec.masks) - 1) / span if span > 0 else float("nan")
    ages_ms = np.asarray(rec.ages_s) * 1e3
    print(f"[demo] masks received: {len(rec.masks)} of {len(frames)} frames "
          f"(the node drops stale frames when it is slower than the camera)")
    print(f"[demo] throughput: {fps:.1f} results/s; result age median {np.median(ages_ms):.0f} ms, "
          f"p95 {np.percentile(ages_ms, 95):.0f} ms")
    print(f"[demo] objects per frame (median): {np.median(list(rec.objects.values()) or [0]):.0f}")
    if pairs:
        truths = [g for _, g in pairs]
        scores = score_frames([p for p, _ in pairs], truths)
        empty = score_frames([np.zeros_like(g) for g in truths], truths)  # what S gives for finding nothing
        print(f"[demo] accuracy on the {len(pairs)} frames with the object in view, vs ground truth: "
              f"S-measure {scores['s_measure']:.3f}, MAE {scores['mae']:.3f} "
              f"(an empty mask: S-measure {empty['s_measure']:.3f})")
    for path in write_pictures(frames, stamps, rec, out):
        print(f"[demo] wrote {path}")
    return 0
