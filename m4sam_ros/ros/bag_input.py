"""RGB-D recordings from rosbag2 (sqlite3 or mcap), read with ``rosbags`` (no ROS install needed).

rosbags hands out each message's CDR bytes; ``deserialize`` turns them into the very rclpy
message classes the node receives over DDS, so the player and the offline runner decode
frames with the node's own code (``conversions``, ``frames``, ``compressed``).

A recording has three streams: colour (``rgb``), depth aligned to colour (``depth``) and
colour camera_info (``info``). Topic defaults are realsense-ros's. A topic missing from
the bag falls back to its image_transport variant (``<topic>/compressed`` for colour,
``<topic>/compressedDepth`` for depth) when the bag has that; otherwise ``BagError`` lists
the bag's image and camera_info topics. An empty topic name leaves the depth or
camera_info stream out.
"""
from __future__ import annotations

import argparse
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

__all__ = ["REALSENSE_TOPICS", "BagError", "BagMessage", "BagStreams", "Stream", "add_topic_arguments", "bag_messages",
           "deserialize", "header_stamp_ns", "open_bag", "resolve_streams"]

REALSENSE_TOPICS = {
    "rgb": "/camera/camera/color/image_raw",
    "depth": "/camera/camera/aligned_depth_to_color/image_raw",
    "info": "/camera/camera/color/camera_info",
}
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
MESSAGE_CLASSES: dict[str, type] = {IMAGE: Image, COMPRESSED: CompressedImage, CAMERA_INFO: CameraInfo}
ACCEPTED = {"rgb": (IMAGE, COMPRESSED), "depth": (IMAGE, COMPRESSED), "info": (CAMERA_INFO,)}
TRANSPORT_FALLBACK = {"rgb": "/compressed", "depth": "/compressedDepth"}
FLAGS = {"rgb": "--rgb-topic", "depth": "--depth-topic", "info": "--info-topic"}


class BagError(ValueError):
    """The bag cannot be read, or lacks a stream asked for; the message says what to do."""


@dataclass(frozen=True)
class Stream:
    """One stream of the recording: which topic, what type, its connections in the bag."""

    role: str                 # "rgb" | "depth" | "info"
    topic: str
    msgtype: str              # e.g. sensor_msgs/msg/CompressedImage
    connections: tuple[Any, ...]
    count: int

    @property
    def compressed(self) -> bool:
        return self.msgtype == COMPRESSED


@dataclass(frozen=True)
class BagStreams:
    rgb: Stream
    depth: Stream | None
    info: Stream | None

    def all(self) -> list[Stream]:
        return [s for s in (self.rgb, self.depth, self.info) if s is not None]

    def describe(self) -> str:
        return "; ".join(f"{s.role} {s.topic} ({s.msgtype.rsplit('/', 1)[-1]}, {s.count} messages)"
                         for s in self.all())


@dataclass(frozen=True)
class BagMessage:
    role: str
    log_ns: int       # when it was recorded (bag timestamp)
    raw: bytes        # CDR, as stored


@contextmanager
def open_bag(path: str | Path) -> Iterator[Any]:
    """An open rosbags ``Reader`` for a rosbag2 folder (or one .db3 / .mcap file); BagError if unreadable.

    rosbags is imported here, so the player's other sources work without it.
    """
    try:
        from rosbags.rosbag2 import Reader
        from rosbags.rosbag2.errors import ReaderError
    except ImportError as exc:
        raise BagError(f"reading bags needs the rosbags package ({exc}): pip install rosbags==0.11.9") from None
    path = Path(path)
    if not path.exists():
        raise BagError(f"bag not found: {path}")
    try:
        reader = Reader(path)
        reader.open()
    except (ReaderError, OSError, ValueError, KeyError) as exc:
        raise BagError(f"cannot read {path} as a rosbag2 (sqlite3 or mcap) bag: {exc}") from None
    try:
        yield reader
    finally:
        reader.close()


def _camera_topics(reader: Any) -> dict[str, tuple[str, int]]:
    """topic -> (type, messages) for every Image, CompressedImage and CameraInfo topic."""
    return {topic: (info.msgtype, info.msgcount) for topic, info in sorted(reader.topics.items())
            if info.msgtype in MESSAGE_CLASSES}


def _listing(reader: Any) -> str:
    topics = _camera_topics(reader)
    if not topics:
        return "  (none: the bag has no sensor_msgs Image, CompressedImage or CameraInfo topic)"
    return "\n".join(f"  {topic}  {msgtype} ({count} messages)" for topic, (msgtype, count) in topics.items())


def resolve_streams(reader: Any, rgb: str, depth: str, info: str) -> BagStreams:
    """The bag's streams for the topics asked for ('' = leave depth / camera_info out)."""
    topics = reader.topics
    wanted = {"rgb": rgb, "depth": depth, "info": info}
    if not rgb:
        raise BagError(f"a colour topic is required ({FLAGS['rgb']})")
    streams: dict[str, Stream | None] = {}
    missing = []
    for role, topic in wanted.items():
        if not topic:
            streams[role] = None
            continue
        if topic not in topics and role in TRANSPORT_FALLBACK and topic + TRANSPORT_FALLBACK[role] in topics:
            topic += TRANSPORT_FALLBACK[role]
        entry = topics.get(topic)
        if entry is None:
            missing.append(f"{role} topic {topic!r} ({FLAGS[role]})")
            continue
        if entry.msgtype not in ACCEPTED[role]:
            raise BagError(f"{role} topic {topic} is {entry.msgtype}, expected {' or '.join(ACCEPTED[role])} "
                           f"({FLAGS[role]}); the bag's image and camera_info topics:\n{_listing(reader)}")
        streams[role] = Stream(role=role, topic=topic, msgtype=entry.msgtype,
                               connections=tuple(entry.connections), count=entry.msgcount)
    chosen = [stream.topic for stream in streams.values() if stream is not None]
    if len(set(chosen)) != len(chosen):
        raise BagError(f"one topic cannot be two streams: {', '.join(chosen)}")
    if not missing and streams["rgb"].count == 0:
        raise BagError(f"colour topic {streams['rgb'].topic} has no messages in {reader.path}")
    if missing:
        optional = " ('' leaves depth or camera_info out)" if any(not m.startswith("rgb") for m in missing) else ""
        raise BagError(f"not in {reader.path}: {', '.join(missing)}; choose others with the flags{optional}. "
                       f"The bag's image and camera_info topics:\n{_listing(reader)}")
    return BagStreams(rgb=streams["rgb"], depth=streams["depth"], info=streams["info"])


def bag_messages(reader: Any, streams: BagStreams) -> Iterator[BagMessage]:
    """The streams' messages in recording order."""
    role_of = {connection.id: stream.role for stream in streams.all() for connection in stream.connections}
    connections = [connection for stream in streams.all() for connection in stream.connections]
    for connection, log_ns, raw in reader.messages(connections=connections):
        yield BagMessage(role=role_of[connection.id], log_ns=int(log_ns), raw=bytes(raw))


def add_topic_arguments(parser: argparse.ArgumentParser) -> None:
    """--rgb-topic / --depth-topic / --info-topic, for the player and the offline runner."""
    parser.add_argument("--rgb-topic", default=REALSENSE_TOPICS["rgb"],
                        help="colour topic in the bag (Image or CompressedImage; <topic>/compressed is tried too)")
    parser.add_argument("--depth-topic", default=REALSENSE_TOPICS["depth"],
                        help="depth topic aligned to colour (Image or CompressedImage; <topic>/compressedDepth "
                             "is tried too); '' for none")
    parser.add_argument("--info-topic", default=REALSENSE_TOPICS["info"],
                        help="colour camera_info topic; '' for none (objects then have no 3-D)")


_STAMP = {b"\x00\x01": struct.Struct("<iI"), b"\x00\x00": struct.Struct(">iI")}  # CDR little / big endian


def header_stamp_ns(raw: bytes) -> int:
    """The header stamp of a serialised message that starts with std_msgs/Header, in ns.

    Image, CompressedImage and CameraInfo all do, and CDR puts the stamp's sec and nanosec
    right after the 4-byte encapsulation header, so scanning a bag's stamps needs no
    deserialisation of the image data.
    """
    layout = _STAMP.get(bytes(raw[:2]))
    if layout is None or len(raw) < 4 + layout.size:
        raise BagError(f"not a CDR message with a header ({len(raw)} bytes, starts {bytes(raw[:4]).hex(' ')})")
    sec, nanosec = layout.unpack_from(raw, 4)
    return sec * 1_000_000_000 + nanosec


def deserialize(raw: bytes, msgtype: str) -> Any:
    """The rclpy message of ``msgtype`` from CDR bytes; BagError if the bytes are not one."""
    try:
        return deserialize_message(raw, MESSAGE_CLASSES[msgtype])
    except RuntimeError as exc:  # rclpy's RMWError: truncated or corrupt CDR
        raise BagError(f"corrupt {msgtype} message in the bag ({len(raw)} bytes): {exc}") from None
