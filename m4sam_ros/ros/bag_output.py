"""Write the node's outputs into a new rosbag2 (mcap) with ``rosbags``.

Messages are the rclpy ones the node publishes, serialised by rclpy itself, so the bag
holds byte for byte what a subscriber would have received. rosbag2 also stores each
type's definition and RIHS01 hash; rosbags computes them from message text: ROS 2
Kilted's for the standard types, and this package's ``msg/*.msg`` for its own.

Storage is mcap, rosbag2's default since Iron: one self-contained, indexed file that
Foxglove and ``ros2 bag`` (Humble with rosbag2_storage_mcap) open directly, and whose
append-only layout keeps what was written if a run is killed. Metadata version 8 (rosbags
writes 8 or 9; 9 only adds the ROS distribution's name).
"""
from __future__ import annotations

import sys
from pathlib import Path
from types import TracebackType
from typing import Any

from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from rclpy.serialization import serialize_message

try:
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.rosbag2.errors import WriterError
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(f"writing bags needs the rosbags package ({exc}): pip install rosbags==0.11.9") from None

__all__ = ["OutputBag", "message_definition_dir", "msgtype_of"]

PACKAGE = "m4sam_ros"
METADATA_VERSION = 8


def msgtype_of(msg: Any) -> str:
    """'sensor_msgs/msg/Image' for an rclpy sensor_msgs.msg.Image instance."""
    return f"{type(msg).__module__.split('.')[0]}/msg/{type(msg).__name__}"


def message_definition_dir() -> Path:
    """Where this package's .msg files are: the install's share/ (colcon or the venv), else the source tree."""
    candidates = []
    try:
        candidates.append(Path(get_package_share_directory(PACKAGE)) / "msg")
    except (PackageNotFoundError, OSError):  # OSError: AMENT_PREFIX_PATH unset (the pip route)
        pass
    candidates += [Path(sys.prefix) / "share" / PACKAGE / "msg", Path(__file__).resolve().parents[2] / "msg"]
    for candidate in candidates:
        if (candidate / "SalientObjectArray.msg").is_file():
            return candidate
    raise FileNotFoundError(f"{PACKAGE}'s message definitions (SalientObjectArray.msg) not found in "
                            + ", ".join(str(c) for c in candidates))


def _typestore():
    store = get_typestore(Stores.ROS2_KILTED)
    folder = message_definition_dir()
    types: dict = {}
    for path in sorted(folder.glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"{PACKAGE}/msg/{path.stem}"))
    store.register(types)
    return store


class OutputBag:
    """A new bag at ``path`` (must not exist); ``write`` adds a connection per topic on first use."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"{self.path} exists; rosbag2 bags are never overwritten: choose a new --out")
        self._typestore = _typestore()
        self._writer = Writer(self.path, version=METADATA_VERSION, storage_plugin=StoragePlugin.MCAP)
        self._connections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def __enter__(self) -> "OutputBag":
        try:
            self._writer.open()
        except WriterError as exc:
            raise OSError(f"cannot create {self.path}: {exc}") from None
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._writer.close()  # also after an error or Ctrl-C: what was written stays readable

    def write(self, topic: str, msg: Any, timestamp_ns: int) -> None:
        connection = self._connections.get(topic)
        if connection is None:
            connection = self._connections[topic] = self._writer.add_connection(
                topic, msgtype_of(msg), typestore=self._typestore)
            self.counts[topic] = 0
        self._writer.write(connection, int(timestamp_ns), serialize_message(msg))
        self.counts[topic] += 1
