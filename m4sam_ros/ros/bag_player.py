"""``m4sam_player --bag``: replay a recording's colour, depth and camera_info as the camera sent them.

Messages keep their recorded headers (stamps, frame_id) and leave at the recorded spacing
(the bag's recording timestamps) divided by ``--rate``; ``--loop`` starts over, and the
node sees the stamps jump back and re-initialises, as with ``ros2 bag play --loop``.
Raw images and camera_info are republished byte for byte as recorded. Compressed colour
and depth are decoded (``m4sam_ros.compressed``) and published raw (rgb8, 16UC1 or
32FC1) with their recorded header, because the node subscribes to raw images; a frame
that does not decode is logged and skipped, and playback goes on.
"""
from __future__ import annotations

import time
from pathlib import Path

import rclpy
from rclpy.node import Node

from m4sam_ros.compressed import decode_colour, decode_depth
from m4sam_ros.encodings import ImageLayoutError, UnsupportedEncodingError
from m4sam_ros.ros.bag_input import (COMPRESSED, BagError, BagMessage, BagStreams, bag_messages, deserialize,
                                     open_bag, resolve_streams)
from m4sam_ros.ros.conversions import image_msg

__all__ = ["BagPlayer"]

THROTTLE_S = 5.0


class BagPlayer:
    """Plays the streams of one bag through a ``CameraPublishers``' three publishers."""

    def __init__(self, node: Node, publishers: dict[str, object], path: str | Path, topics: dict[str, str],
                 rate: float, loop: bool, wait_for_subscribers: float) -> None:
        """``publishers``: role ("rgb", "depth", "info") -> rclpy publisher; ``topics``: role -> bag topic."""
        self.node, self.publishers, self.path = node, publishers, Path(path)
        self.rate, self.loop, self.wait_for_subscribers = rate, loop, wait_for_subscribers
        with open_bag(self.path) as reader:  # a missing topic is reported before anything is published
            self.streams: BagStreams = resolve_streams(reader, topics["rgb"], topics["depth"], topics["info"])
        self.published = 0  # colour frames
        self.skipped = 0
        node.get_logger().info(f"playing {self.path}: {self.streams.describe()}, at {rate:g}x recorded speed"
                               + (", looping" if loop else ""))

    def play(self) -> None:
        """Blocks until the bag has been played (forever with ``loop``) or rclpy shuts down."""
        self._wait_for_subscriber()
        start = time.monotonic()
        while rclpy.ok():
            with open_bag(self.path) as reader:
                first = last = None
                colour_frames = 0
                for message in bag_messages(reader, self.streams):
                    first = message.log_ns if first is None else first
                    last = message.log_ns
                    if not self._sleep_until(start + (message.log_ns - first) * 1e-9 / self.rate):
                        return
                    self._publish(message)
                    colour_frames += message.role == "rgb"
            if not self.loop or first is None:
                return
            # the next pass starts one mean colour frame period after this one ended
            period_s = (last - first) * 1e-9 / max(colour_frames - 1, 1)
            start = time.monotonic() + period_s / self.rate

    def _wait_for_subscriber(self) -> None:
        """Messages sent before discovery completes are lost to late subscribers (see the player)."""
        deadline = time.monotonic() + self.wait_for_subscribers
        while self.publishers["rgb"].get_subscription_count() == 0 and time.monotonic() < deadline and rclpy.ok():
            time.sleep(0.05)

    @staticmethod
    def _sleep_until(due: float) -> bool:
        while (left := due - time.monotonic()) > 0:
            if not rclpy.ok():
                return False
            time.sleep(min(left, 0.1))
        return rclpy.ok()

    def _publish(self, message: BagMessage) -> None:
        stream = getattr(self.streams, message.role)
        if stream.msgtype != COMPRESSED:
            self.publishers[message.role].publish(message.raw)  # as recorded, no decode
        else:
            try:
                compressed = deserialize(message.raw, COMPRESSED)
                if message.role == "rgb":
                    msg = image_msg(compressed.header, decode_colour(compressed), "rgb8")
                else:
                    depth = decode_depth(compressed)
                    msg = image_msg(compressed.header, depth, "16UC1" if depth.dtype.kind == "u" else "32FC1")
            except (BagError, UnsupportedEncodingError, ImageLayoutError) as exc:
                self.skipped += 1
                self.node.get_logger().warning(f"{stream.topic}: {exc}; message skipped",
                                               throttle_duration_sec=THROTTLE_S)
                return
            self.publishers[message.role].publish(msg)
        if message.role == "rgb":
            self.published += 1
            if self.published % 100 == 0:
                self.node.get_logger().info(f"{self.published} frames published")
