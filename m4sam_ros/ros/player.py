"""``m4sam_player``: publish an RGB-D video as a camera would (RGB, depth, camera_info).

Replays a recorded rosbag2 (``--bag``, sqlite3 or mcap: see ``bag_player``) with its own
stamps and timing, a folder in any layout ``m4sam_ros.learn.datasets`` reads (generic
``<root>/<video>/{rgb,depth,gt}/<frame>.png``, RDVS, ViDSOD-100, DViSal), or a generated
synthetic stream, so the saliency node can be run without a camera. Folders and
synthetic streams go out at a chosen rate with fresh stamps. Depth goes out as 16UC1
millimetres when stored as 16-bit; an 8-bit benchmark depth PNG has no metric scale, so
it goes out as 32FC1 metres chosen so that the node's normalisation (``m4sam_ros.depth``,
the weights' own: ``--depth-scale`` names its scale) gives back exactly the stored values.
camera_info carries a video's ``camera.json`` intrinsics when it has one, else a ~58 degree
field of view.

    m4sam_player --bag recording/ --rate 0.5 --loop
    m4sam_player --bag robot.mcap --rgb-topic /head/color/image_raw/compressed --depth-topic ''
    m4sam_player --synthetic --rate 15
    m4sam_player --root data/RDVS --layout rdvs --video bear --rate 10 --loop
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import rclpy
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from m4sam_ros.depth import SCALES as DEPTH_SCALES, DepthConfig
from m4sam_ros.postprocess import CameraIntrinsics
from m4sam_ros.ros.bag_input import add_topic_arguments
from m4sam_ros.ros.bag_player import BagPlayer
from m4sam_ros.ros.conversions import image_msg, stamp_seconds

FOLDER_RATE_HZ = 15.0
FLUSH_TIMEOUT_S = 2.0


@dataclass
class PlayerFrame:
    """One frame to publish. depth: uint16 mm, float32 m, uint8 benchmark PNG, or None (dropped)."""

    rgb: np.ndarray
    depth: np.ndarray | None
    intrinsics: CameraIntrinsics


def default_intrinsics(width: int, height: int) -> CameraIntrinsics:
    """A ~58 degree horizontal field of view, as the synthetic generator and most RGB-D cameras."""
    return CameraIntrinsics(fx=0.9 * width, fy=0.9 * width, cx=(width - 1) / 2, cy=(height - 1) / 2)


def benchmark_depth_to_metres(depth: np.ndarray, config: DepthConfig = DepthConfig()) -> np.ndarray:
    """Invert the normalisation for an 8-bit near-is-bright PNG; 0 (unknown) becomes a hole (NaN)."""
    level = depth.astype(np.float32) / 255.0
    metres = config.metres(level if config.near_is_bright else 1.0 - level)
    metres[depth == 0] = np.nan
    return metres


def camera_info(header: Header, k: CameraIntrinsics, width: int, height: int) -> CameraInfo:
    return CameraInfo(header=header, width=width, height=height, distortion_model="plumb_bob",
                      d=[0.0] * 5, k=[k.fx, 0.0, k.cx, 0.0, k.fy, k.cy, 0.0, 0.0, 1.0],
                      r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                      p=[k.fx, 0.0, k.cx, 0.0, 0.0, k.fy, k.cy, 0.0, 0.0, 0.0, 1.0, 0.0])


class CameraPublishers:
    """The three publishers of an RGB-D camera with depth aligned to colour."""

    def __init__(self, node: Node, frame_id: str = "camera_color_optical_frame", reliable: bool = True,
                 depth_config: DepthConfig = DepthConfig()) -> None:
        """``depth_config``: the node's normalisation, which 8-bit benchmark depth is sent through."""
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)
        self.node = node
        self.frame_id = frame_id
        self.depth_config = depth_config
        self.rgb = node.create_publisher(Image, "rgb/image", qos)
        self.depth = node.create_publisher(Image, "depth/image", qos)
        self.info = node.create_publisher(CameraInfo, "rgb/camera_info", qos)

    def publish(self, frame: PlayerFrame) -> float:
        """Publish one frame stamped now; returns the stamp in seconds."""
        header = Header(stamp=self.node.get_clock().now().to_msg(), frame_id=self.frame_id)
        height, width = frame.rgb.shape[:2]
        self.info.publish(camera_info(header, frame.intrinsics, width, height))
        self.rgb.publish(image_msg(header, frame.rgb, "rgb8"))
        if frame.depth is not None:
            depth = frame.depth
            if depth.dtype == np.uint8:
                depth = benchmark_depth_to_metres(depth, self.depth_config)
            self.depth.publish(image_msg(header, depth, "16UC1" if depth.dtype == np.uint16 else "32FC1"))
        return stamp_seconds(header.stamp)

    def flush(self, timeout_s: float = FLUSH_TIMEOUT_S) -> bool:
        """Wait until reliable subscribers have acknowledged everything published (at most
        ``timeout_s`` each): a process that exits right after its last publish loses it."""
        timeout = Duration(seconds=timeout_s)
        return all([publisher.wait_for_all_acked(timeout) for publisher in (self.rgb, self.depth, self.info)])


def synthetic_frames(width: int, height: int, frames: int, seed: int) -> Iterator[PlayerFrame]:
    from m4sam_ros.learn.synthetic import SyntheticConfig, generate_video

    for f in generate_video(SyntheticConfig(height=height, width=width, frames=frames, seed=seed)):
        yield PlayerFrame(f.rgb, f.depth_mm, f.intrinsics)


def folder_frames(root: str, layout: str, split: str | None, video: str | None) -> Iterator[PlayerFrame]:
    from m4sam_ros.learn.camera_file import video_intrinsics
    from m4sam_ros.learn.datasets import open_dataset, read_depth, read_rgb

    dataset = open_dataset(root, layout=layout, split=split, videos=[video] if video else None)
    dataset.raise_on_errors()
    for record in dataset.videos:
        for frame in record.frames:
            rgb = read_rgb(frame.rgb)
            depth = read_depth(frame.depth) if frame.depth is not None else None
            height, width = rgb.shape[:2]
            intrinsics = video_intrinsics(record.path, width, height) or default_intrinsics(width, height)
            yield PlayerFrame(rgb, depth, intrinsics)


def play_bag(node: Node, args: argparse.Namespace) -> BagPlayer:
    """Replay ``args.bag`` through the camera's publishers; returns the finished ``BagPlayer``."""
    camera = CameraPublishers(node, frame_id=args.frame_id, reliable=not args.best_effort,
                              depth_config=DepthConfig(scale=args.depth_scale))
    player = BagPlayer(node, {"rgb": camera.rgb, "depth": camera.depth, "info": camera.info}, args.bag,
                       {"rgb": args.rgb_topic, "depth": args.depth_topic, "info": args.info_topic},
                       rate=args.rate, loop=args.loop, wait_for_subscribers=args.wait_for_subscribers)
    player.play()
    camera.flush()
    return player


class PlayerNode(Node):
    """Publishes frames from a source on a timer; stops (or loops) at the end."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__("m4sam_player")
        self.args = args
        self.camera = CameraPublishers(self, frame_id=args.frame_id, reliable=not args.best_effort,
                                       depth_config=DepthConfig(scale=args.depth_scale))
        self.frames = self._source()
        self.published = 0
        self.done = False
        self._wait_until = time.monotonic() + args.wait_for_subscribers
        self.create_timer(1.0 / args.rate, self._tick)
        self.get_logger().info(f"playing {'synthetic video' if args.synthetic else args.root} at {args.rate:g} Hz"
                               + (f" once rgb/image has a subscriber (waiting up to {args.wait_for_subscribers:g} s)"
                                  if args.wait_for_subscribers > 0 else ""))

    def _source(self) -> Iterator[PlayerFrame]:
        a = self.args
        if a.synthetic:
            return synthetic_frames(a.width, a.height, a.frames, a.seed)
        return folder_frames(a.root, a.layout, a.split, a.video)

    def _waiting(self) -> bool:
        """Before the first frame: no subscriber yet and still within --wait-for-subscribers
        (frames published before discovery completes are lost to late subscribers)."""
        return (not self.published and self.camera.rgb.get_subscription_count() == 0
                and time.monotonic() < self._wait_until)

    def _tick(self) -> None:
        if self._waiting():
            return
        frame = next(self.frames, None)
        if frame is None and self.args.loop and self.published:
            self.frames = self._source()
            frame = next(self.frames, None)
        if frame is None:
            self.done = True
            return
        self.camera.publish(frame)
        self.published += 1
        if self.published % 100 == 0:
            self.get_logger().info(f"{self.published} frames published")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="m4sam_player", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--synthetic", action="store_true", help="play a generated RGB-D video")
    source.add_argument("--root", help="dataset folder to replay")
    source.add_argument("--bag", help="rosbag2 to replay (folder, .db3 or .mcap) with its recorded stamps")
    parser.add_argument("--layout", default="auto", help="auto, generic, rdvs, vidsod100, dvisal")
    parser.add_argument("--split", default=None, help="dataset split (RDVS/ViDSOD-100: train/test)")
    parser.add_argument("--video", default=None, help="only this video of the dataset")
    parser.add_argument("--rate", type=float, default=None,
                        help="--bag: speed factor (default 1.0 = as recorded, 2.0 = twice as fast); "
                             f"otherwise frames per second (default {FOLDER_RATE_HZ:g})")
    parser.add_argument("--loop", action="store_true", help="start over at the end")
    parser.add_argument("--frame-id", default="camera_color_optical_frame",
                        help="header.frame_id (a bag keeps its recorded headers)")
    add_topic_arguments(parser)
    parser.add_argument("--best-effort", action="store_true", help="BEST_EFFORT instead of RELIABLE QoS")
    parser.add_argument("--wait-for-subscribers", type=float, default=5.0, metavar="SECONDS",
                        help="hold the first frame until rgb/image has a subscriber, at most this long (0: no wait)")
    parser.add_argument("--width", type=int, default=320, help="synthetic: image width")
    parser.add_argument("--height", type=int, default=240, help="synthetic: image height")
    parser.add_argument("--frames", type=int, default=300, help="synthetic: video length")
    parser.add_argument("--seed", type=int, default=0, help="synthetic: seed")
    parser.add_argument("--depth-scale", choices=DEPTH_SCALES, default="log",
                        help="8-bit benchmark depth: the scale of the node's depth normalisation (its start-up log "
                             "names it; default: the demo weights' and m4sam train's)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_in = rclpy.utilities.remove_ros_args(list(sys.argv if argv is None else ["m4sam_player", *argv]))
    args = build_parser().parse_args(args_in[1:])
    if args.rate is None:
        args.rate = 1.0 if args.bag else FOLDER_RATE_HZ
    if args.rate <= 0:
        print("m4sam_player: --rate must be > 0", file=sys.stderr)
        return 2
    if args.wait_for_subscribers < 0:
        print("m4sam_player: --wait-for-subscribers must be >= 0", file=sys.stderr)
        return 2
    rclpy.init(args=None if argv is None else list(argv))
    node = None
    try:
        if args.bag:
            node = Node("m4sam_player")
            player = play_bag(node, args)
            node.get_logger().info(f"done: {player.published} frames published"
                                   + (f", {player.skipped} undecodable messages skipped" if player.skipped else ""))
        else:
            node = PlayerNode(args)
            while rclpy.ok() and not node.done:
                rclpy.spin_once(node, timeout_sec=0.1)
            node.camera.flush()
            node.get_logger().info(f"done: {node.published} frames published")
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ValueError as error:  # unreadable dataset or bag, missing topic: the message names it
        print(f"m4sam_player: {error}", file=sys.stderr)
        return 1
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
