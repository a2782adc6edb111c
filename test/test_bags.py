"""Recorded bags: real rosbag2 files written with rosbags, read back, replayed and processed offline.

The recordings are written with rosbags' own serialiser (not the code under test), like a
recorder on another machine would: synthetic RGB-D frames with camera_info, colour and
depth raw or compressed, depth recorded a little before or after its colour frame, one
frame without depth and one whose depth is too far off in time to pair.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import CameraInfo, Image

from m4sam_ros.cli import main as m4sam
from m4sam_ros.compressed import encode_colour, encode_depth
from m4sam_ros.learn.camera_file import read_camera_file, video_intrinsics
from m4sam_ros.learn.datasets import DatasetError
from m4sam_ros.learn.synthetic import SyntheticConfig, SyntheticFrame, generate_video, write_video
from m4sam_ros.msg import SalientObjectArray
from m4sam_ros.offline_pairing import plan_frames
from m4sam_ros.postprocess import CameraIntrinsics, PostprocessConfig
from m4sam_ros.ros.bag_input import (REALSENSE_TOPICS, BagError, bag_messages, deserialize, header_stamp_ns,
                                     open_bag, resolve_streams)
from m4sam_ros.ros.bag_output import message_definition_dir
from m4sam_ros.ros.conversions import depth_from_msg, rgb_from_msg
from m4sam_ros.ros.parameters import defaults
from m4sam_ros.ros.player import folder_frames
from m4sam_ros.ros.settings_file import SettingsError, load_settings
from m4sam_ros.tracker import SaliencyTracker, TrackerConfig

ROOT = Path(__file__).resolve().parents[1]
TS = get_typestore(Stores.ROS2_KILTED)
T0_NS = 1_700_000_000_000_000_000
PERIOD_NS = 100_000_000  # 10 Hz
WIDTH, HEIGHT, FRAMES = 64, 48, 8
NO_DEPTH, LATE_DEPTH = 3, 5  # frame 3 has no depth message, frame 5's depth is stamped 40 ms late
FRAME_ID = "camera_color_optical_frame"
MODEL = ["-p", "model.preset:=test", "-p", "model.image_size:=64", "-p", "model.mode:=learned",
         "-p", "engine.num_threads:=1", "-p", "engine.device:=cpu"]
OUTPUTS = ("/saliency/mask", "/saliency/objects", "/saliency/markers")


# -- writing recordings with rosbags ----------------------------------------------------------

def _header(stamp_ns: int):
    time_ = TS.types["builtin_interfaces/msg/Time"](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
    return TS.types["std_msgs/msg/Header"](stamp=time_, frame_id=FRAME_ID)


def _image(stamp_ns: int, array: np.ndarray, encoding: str):
    channels = 1 if array.ndim == 2 else array.shape[2]
    step = array.shape[1] * channels * array.dtype.itemsize
    return TS.types["sensor_msgs/msg/Image"](header=_header(stamp_ns), height=array.shape[0], width=array.shape[1],
                                             encoding=encoding, is_bigendian=0, step=step,
                                             data=np.frombuffer(array.tobytes(), np.uint8))


def _compressed(stamp_ns: int, fmt: str, data: bytes):
    return TS.types["sensor_msgs/msg/CompressedImage"](header=_header(stamp_ns), format=fmt,
                                                       data=np.frombuffer(data, np.uint8))


def _camera_info(stamp_ns: int, k: CameraIntrinsics):
    return TS.types["sensor_msgs/msg/CameraInfo"](
        header=_header(stamp_ns), height=HEIGHT, width=WIDTH, distortion_model="plumb_bob", d=np.zeros(5),
        k=np.array([k.fx, 0, k.cx, 0, k.fy, k.cy, 0, 0, 1.0]), r=np.eye(3).reshape(-1),
        p=np.array([k.fx, 0, k.cx, 0, 0, k.fy, k.cy, 0, 0, 0, 1.0, 0]), binning_x=0, binning_y=0,
        roi=TS.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


@dataclass
class Recording:
    path: Path
    frames: list[SyntheticFrame]
    intrinsics: CameraIntrinsics
    colour_ns: list[int]
    rgb_topic: str
    depth_topic: str

    def expected_depth(self, i: int) -> np.ndarray | None:
        return None if i in (NO_DEPTH, LATE_DEPTH) else self.frames[i].depth_mm


def write_recording(path: Path, storage: str = "mcap", colour: str = "raw", depth: str = "raw",
                    frames: int = FRAMES, seed: int = 3) -> Recording:
    """colour: raw | png | jpeg; depth: raw | compressedDepth. Compressed streams sit on
    image_transport's topic names (<raw topic>/compressed, /compressedDepth)."""
    config = SyntheticConfig(width=WIDTH, height=HEIGHT, frames=frames, seed=seed)
    synthetic = list(generate_video(config))
    intrinsics = config.intrinsics()
    rgb_topic = REALSENSE_TOPICS["rgb"] + ("" if colour == "raw" else "/compressed")
    depth_topic = REALSENSE_TOPICS["depth"] + ("" if depth == "raw" else "/compressedDepth")
    rgb_type = "sensor_msgs/msg/" + ("Image" if colour == "raw" else "CompressedImage")
    depth_type = "sensor_msgs/msg/" + ("Image" if depth == "raw" else "CompressedImage")
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    messages = []  # (log time, connection key, message, type)
    colour_ns = []
    for i, frame in enumerate(synthetic):
        stamp = T0_NS + i * PERIOD_NS
        colour_ns.append(stamp)
        rgb = (_image(stamp, frame.rgb, "rgb8") if colour == "raw"
               else _compressed(stamp, *encode_colour(frame.rgb, colour)))
        messages.append((stamp + 5_000_000, "rgb", rgb, rgb_type))
        messages.append((stamp + 6_000_000, "info", _camera_info(stamp, intrinsics), "sensor_msgs/msg/CameraInfo"))
        if i == NO_DEPTH:
            continue
        depth_stamp = stamp + (40_000_000 if i == LATE_DEPTH else 3_000_000)
        image = (_image(depth_stamp, frame.depth_mm, "16UC1") if depth == "raw"
                 else _compressed(depth_stamp, *encode_depth(frame.depth_mm)))
        log = stamp + (1_000_000 if i % 2 else 30_000_000)  # recorded before its colour frame, or after
        messages.append((log, "depth", image, depth_type))
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        connections = {
            "rgb": writer.add_connection(rgb_topic, rgb_type, typestore=TS),
            "depth": writer.add_connection(depth_topic, depth_type, typestore=TS),
            "info": writer.add_connection(REALSENSE_TOPICS["info"], "sensor_msgs/msg/CameraInfo", typestore=TS),
            "other": writer.add_connection("/rosout_like", "std_msgs/msg/String", typestore=TS),
        }
        writer.write(connections["other"], T0_NS, TS.serialize_cdr(TS.types["std_msgs/msg/String"](data="x"),
                                                                     "std_msgs/msg/String"))
        for log, key, msg, msgtype in sorted(messages, key=lambda m: m[0]):
            writer.write(connections[key], log, TS.serialize_cdr(msg, msgtype))
    return Recording(path, synthetic, intrinsics, colour_ns, rgb_topic, depth_topic)


@pytest.fixture(scope="module")
def raw_mcap(tmp_path_factory) -> Recording:
    return write_recording(tmp_path_factory.mktemp("bags") / "raw_mcap", "mcap")


# -- reading ------------------------------------------------------------------------------------

@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
@pytest.mark.parametrize("compressed", [False, True])
def test_both_storages_read_back_with_their_stamps(tmp_path: Path, storage: str, compressed: bool) -> None:
    rec = write_recording(tmp_path / "bag", storage, colour="png" if compressed else "raw",
                          depth="compressedDepth" if compressed else "raw")
    with open_bag(rec.path) as reader:
        streams = resolve_streams(reader, **REALSENSE_TOPICS)  # raw names: transport variants found
        assert (streams.rgb.topic, streams.depth.topic) == (rec.rgb_topic, rec.depth_topic)
        assert streams.rgb.compressed is compressed and streams.rgb.count == FRAMES
        colours = [m for m in bag_messages(reader, streams) if m.role == "rgb"]
        stamps = [header_stamp_ns(m.raw) for m in colours]
        assert stamps == rec.colour_ns
        for i, message in enumerate(colours):
            msg = deserialize(message.raw, streams.rgb.msgtype)
            assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == stamps[i]
            assert msg.header.frame_id == FRAME_ID
            assert np.array_equal(rgb_from_msg(msg), rec.frames[i].rgb)
        depth = [m for m in bag_messages(reader, streams) if m.role == "depth"]
        assert np.array_equal(depth_from_msg(deserialize(depth[0].raw, streams.depth.msgtype)), rec.frames[0].depth_mm)
        assert streams.info.count == FRAMES
    storage_file = next(rec.path.glob("*.mcap" if storage == "mcap" else "*.db3"))
    with open_bag(storage_file) as reader:  # the storage file alone, as Foxglove users share them
        assert resolve_streams(reader, **REALSENSE_TOPICS).rgb.count == FRAMES


def test_missing_topics_list_what_the_bag_has(raw_mcap: Recording) -> None:
    with open_bag(raw_mcap.path) as reader:
        with pytest.raises(BagError) as caught:
            resolve_streams(reader, rgb="/camera/color/image_raw", depth="/nope", info=REALSENSE_TOPICS["info"])
        text = str(caught.value)
        assert "rgb topic '/camera/color/image_raw' (--rgb-topic)" in text and "depth topic '/nope'" in text
        for topic in (REALSENSE_TOPICS["rgb"], REALSENSE_TOPICS["depth"], REALSENSE_TOPICS["info"]):
            assert topic in text
        assert "/rosout_like" not in text  # only image and camera_info topics are listed
        with pytest.raises(BagError, match="is sensor_msgs/msg/CameraInfo, expected"):
            resolve_streams(reader, rgb=REALSENSE_TOPICS["info"], depth="", info="")
        streams = resolve_streams(reader, rgb=REALSENSE_TOPICS["rgb"], depth="", info="")
        assert streams.depth is None and streams.info is None
        with pytest.raises(BagError, match="one topic cannot be two streams"):
            resolve_streams(reader, rgb=REALSENSE_TOPICS["rgb"], depth=REALSENSE_TOPICS["rgb"], info="")
    with pytest.raises(BagError, match="bag not found"):
        with open_bag(raw_mcap.path.parent / "nothing_here"):
            pass
    with pytest.raises(BagError, match="cannot read"):
        with open_bag(ROOT / "config"):
            pass


def test_header_stamps_are_read_without_deserialising() -> None:
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1_700_000_123, 456_789_012
    from rclpy.serialization import serialize_message
    assert header_stamp_ns(serialize_message(msg)) == 1_700_000_123_456_789_012
    with pytest.raises(BagError, match="not a CDR message"):
        header_stamp_ns(b"\x07")


# -- the offline pairing rule --------------------------------------------------------------------

def test_offline_pairing_rule() -> None:
    ms = 1_000_000
    rgb = [0, 100 * ms, 200 * ms, 300 * ms, 400 * ms]
    depth = [3 * ms, 96 * ms, 104 * ms, 240 * ms, 400 * ms, 400 * ms]
    info = [0, 200 * ms, 200 * ms, 350 * ms]
    plans = plan_frames(rgb, depth, info, slop_ns=15 * ms)
    assert [p.depth for p in plans] == [0, 1, None, None, 4]  # tie 96/104 -> earlier; 240 too far; equal -> first
    assert [p.skew_ns for p in plans] == [3 * ms, -4 * ms, None, None, 0]
    assert [p.info for p in plans] == [0, 0, 2, 2, 3]  # latest at or before; equal stamps -> last recorded
    assert plan_frames([5], [], [10], slop_ns=0)[0] == plan_frames([5], [], [], 0)[0]  # info after: none
    with pytest.raises(ValueError):
        plan_frames([0], [0], [0], slop_ns=-1)


# -- the node's settings from its YAML ------------------------------------------------------------

def test_settings_file_is_read_as_the_node_reads_it(tmp_path: Path) -> None:
    assert load_settings(ROOT / "config" / "m4sam.yaml") == load_settings()
    settings = load_settings(ROOT / "config" / "m4sam.yaml", ["model.preset:=test", "sync.slop:=0.03"])
    assert settings.model.preset == "test" and settings.sync.slop == 0.03
    custom = tmp_path / "mine.yaml"
    custom.write_text("m4sam_saliency:\n  ros__parameters:\n    model:\n      image_size: 256\n")
    assert load_settings(custom).model.image_size == 256
    bad = {
        "sync.slop:=1": "write a decimal point",
        "sync.slop:=5.0": "outside",
        "model.image_size:=100": "multiple of 32",
        "model.preset:=huge": "must be one of",
        "modle.preset:=test": "unknown parameter",
        "model.preset": "name:=value",
    }
    for override, message in bad.items():
        with pytest.raises(SettingsError, match=message):
            load_settings(None, [override])
    other = tmp_path / "other.yaml"
    other.write_text("camera:\n  ros__parameters:\n    fps: 30\n")
    with pytest.raises(SettingsError, match="no parameters for m4sam_saliency"):
        load_settings(other)
    assert set(defaults()) >= {"sync.slop", "model.preset"}


# -- m4sam run ------------------------------------------------------------------------------------

def read_outputs(path: Path) -> dict[str, list]:
    out: dict[str, list] = {}
    classes = {"/saliency/mask": Image, "/saliency/objects": SalientObjectArray, "/saliency/overlay": Image,
               "/saliency/probability": Image}
    with Reader(path) as reader:
        for connection, log_ns, raw in reader.messages():
            if connection.topic in classes:
                out.setdefault(connection.topic, []).append((log_ns, deserialize_message(raw, classes[connection.topic])))
            else:
                out.setdefault(connection.topic, []).append((log_ns, None))
    return out


def expected_masks(rec: Recording, initial_mask: np.ndarray | None = None) -> list[np.ndarray]:
    """SaliencyTracker.step on the recording's frames, with the node's default settings spelled out
    (seeded from ``initial_mask`` when given)."""
    config = TrackerConfig(image_size=64, num_memory_frames=6, gap_timeout_s=1.0, lost_score_threshold=0.1,
                           lost_patience_frames=15, mode="learned", depth=None,
                           postprocess=PostprocessConfig(threshold=0.5, min_area_fraction=0.001, max_objects=10))
    tracker = SaliencyTracker.from_settings(preset="test", image_size=64, seed=0, config=config)
    if initial_mask is not None:
        tracker.reset(initial_mask=initial_mask)
    masks = []
    for i, frame in enumerate(rec.frames):
        stamp = rec.colour_ns[i]
        stamp_s = stamp // 10**9 + (stamp % 10**9) * 1e-9
        masks.append(tracker.step(frame.rgb, rec.expected_depth(i), stamp_s, rec.intrinsics).mask * 255)
    return masks


@pytest.mark.parametrize("storage,colour,depth,extra", [("sqlite3", "raw", "raw", "--overlay"),
                                                         ("mcap", "png", "compressedDepth", "--probability")])
def test_run_writes_the_trackers_masks_with_the_input_headers(tmp_path: Path, storage: str, colour: str,
                                                              depth: str, extra: str) -> None:
    rec = write_recording(tmp_path / "in", storage, colour, depth)
    out = tmp_path / "out"
    assert m4sam(["run", "--bag", str(rec.path), "--out", str(out), extra, *MODEL]) == 0
    outputs = read_outputs(out)
    assert set(outputs) == {*OUTPUTS, "/saliency/" + extra[2:]}
    for _, msg in outputs["/saliency/" + extra[2:]]:
        assert (msg.encoding, msg.width, msg.height) == ("bgr8" if extra == "--overlay" else "32FC1", WIDTH, HEIGHT)
    masks = outputs["/saliency/mask"]
    assert len(masks) == FRAMES, "every colour frame is processed offline"
    for (log_ns, msg), expected, stamp in zip(masks, expected_masks(rec), rec.colour_ns):
        assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == stamp
        assert msg.header.frame_id == FRAME_ID and log_ns == stamp + 5_000_000  # the colour frame's record time
        assert msg.encoding == "mono8" and (msg.width, msg.height) == (WIDTH, HEIGHT)
        assert np.array_equal(np.frombuffer(msg.data, np.uint8).reshape(HEIGHT, WIDTH), expected)
    assert [m.header for _, m in outputs["/saliency/objects"]] == [m.header for _, m in masks]
    assert len(outputs["/saliency/markers"]) == FRAMES
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == {"colour": FRAMES, "processed": FRAMES, "with_depth": FRAMES - 2, "rgb_only": 2,
                                 "skipped": 0}
    assert summary["written"]["/saliency/mask"] == FRAMES and not summary["interrupted"]
    assert summary["pairing"]["abs_skew_ms"]["max"] == pytest.approx(3.0)


def test_run_seeds_the_memory_from_an_initial_mask(tmp_path: Path) -> None:
    """--initial-mask: the first frame is initialised from the given mask (reason "prompt"), as
    SaliencyTracker.reset(initial_mask=...) does, and the rest tracks from there."""
    import cv2

    rec = write_recording(tmp_path / "in", "mcap", "raw", "raw", frames=4)
    mask = np.zeros((HEIGHT // 2, WIDTH // 2), np.uint8)  # another size than the frames: scaled
    mask[5:15, 8:20] = 255
    mask_file = tmp_path / "first.png"
    cv2.imwrite(str(mask_file), mask)
    out = tmp_path / "out"
    assert m4sam(["run", "--bag", str(rec.path), "--out", str(out), "--initial-mask", str(mask_file), *MODEL]) == 0
    masks = [np.frombuffer(m.data, np.uint8).reshape(HEIGHT, WIDTH) for _, m in read_outputs(out)["/saliency/mask"]]
    expected = expected_masks(rec, initial_mask=mask)
    assert all(np.array_equal(got, want) for got, want in zip(masks, expected, strict=True))
    assert not all(np.array_equal(got, want) for got, want in zip(masks, expected_masks(rec)))  # the mask mattered
    assert json.loads((out / "summary.json").read_text())["reinitialized"] == {"prompt": 1}
    empty = tmp_path / "empty.png"
    cv2.imwrite(str(empty), np.zeros_like(mask))
    assert m4sam(["run", "--bag", str(rec.path), "--out", str(tmp_path / "o2"), "--initial-mask", str(empty),
                  *MODEL]) == 2


def test_run_skips_undecodable_frames_and_goes_on(tmp_path: Path) -> None:
    rec = write_recording(tmp_path / "in", "mcap", colour="png", depth="compressedDepth", frames=4)
    corrupt = tmp_path / "corrupt"
    with Reader(rec.path) as reader, Writer(corrupt, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connections = {c.id: writer.add_connection(c.topic, c.msgtype, typestore=TS) for c in reader.connections}
        seen: dict[str, int] = {}
        for connection, log_ns, raw in reader.messages():
            index = seen[connection.topic] = seen.get(connection.topic, -1) + 1
            if (connection.topic, index) in ((rec.rgb_topic, 1), (rec.depth_topic, 2)):
                msg = TS.deserialize_cdr(raw, connection.msgtype)
                msg.data = msg.data[:len(msg.data) // 2]  # truncated in transit
                raw = TS.serialize_cdr(msg, connection.msgtype)
            writer.write(connections[connection.id], log_ns, raw)
    out = tmp_path / "out"
    assert m4sam(["run", "--bag", str(corrupt), "--out", str(out), *MODEL]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"]["processed"] == 3 and summary["skipped"] == {"colour_unusable": 1}
    assert summary["notes"] == {"depth_decode": 1}  # frame 2's depth; frame 3 has none
    assert summary["frames"]["with_depth"] == 1 and summary["frames"]["rgb_only"] == 2
    assert "corrupt or truncated" in " ".join(summary["examples"])
    assert len(read_outputs(out)["/saliency/mask"]) == 3


def test_run_refuses_bad_arguments_with_the_fix(tmp_path: Path, raw_mcap: Recording, capsys) -> None:
    existing = tmp_path / "exists"
    existing.mkdir()
    assert m4sam(["run", "--bag", str(raw_mcap.path), "--out", str(existing), *MODEL]) == 2
    assert "exists" in capsys.readouterr().err
    assert m4sam(["run", "--bag", str(raw_mcap.path), "--out", str(tmp_path / "o"), "-p", "sync.slop:=2"]) == 2
    assert "decimal point" in capsys.readouterr().err
    assert m4sam(["run", "--bag", str(raw_mcap.path), "--out", str(tmp_path / "o"), "--rgb-topic", "/x", *MODEL]) == 1
    err = capsys.readouterr().err
    assert "rgb topic '/x'" in err and REALSENSE_TOPICS["rgb"] in err
    assert not (tmp_path / "o").exists(), "nothing is written when the input is wrong"


def test_output_types_carry_rosidl_hashes(tmp_path: Path, raw_mcap: Recording) -> None:
    """The bag's type hash of our own message equals the one rosidl generated (ros2 bag checks it)."""
    out = tmp_path / "out"
    assert m4sam(["run", "--bag", str(raw_mcap.path), "--out", str(out), "--info-topic", "", *MODEL]) == 0
    generated = message_definition_dir() / "SalientObjectArray.json"
    with Reader(out) as reader:
        digests = {c.topic: c.digest for c in reader.connections}
    if generated.is_file():
        expected = json.loads(generated.read_text())["type_hashes"][0]["hash_string"]
        assert digests["/saliency/objects"] == expected
    assert digests["/saliency/mask"] == TS.hash_rihs01("sensor_msgs/msg/Image")


# -- camera.json ----------------------------------------------------------------------------------

def test_player_uses_a_videos_camera_json(tmp_path: Path) -> None:
    write_video(tmp_path, "clip", SyntheticConfig(width=64, height=48, frames=2, seed=1))
    write_video(tmp_path, "plain", SyntheticConfig(width=64, height=48, frames=1, seed=2))
    (tmp_path / "clip" / "camera.json").write_text(json.dumps(
        {"width": 128, "height": 96, "fx": 100.0, "fy": 101.0, "cx": 63.5, "cy": 47.5}))
    frames = list(folder_frames(str(tmp_path), "generic", None, None))
    clip, plain = frames[0].intrinsics, frames[-1].intrinsics
    assert (clip.fx, clip.fy, clip.cx, clip.cy) == (50.0, 50.5, 31.5, 23.5)  # scaled to the 64x48 frames
    assert plain.fx == pytest.approx(0.9 * 64)  # no file: the default
    assert video_intrinsics(tmp_path / "plain", 64, 48) is None
    for bad, message in [({"width": 64}, "missing height"), ({**json.loads((tmp_path / "clip" / "camera.json")
                         .read_text()), "fx": "wide"}, "fx must be a finite number")]:
        (tmp_path / "clip" / "camera.json").write_text(json.dumps(bad))
        with pytest.raises(DatasetError, match=message):
            read_camera_file(tmp_path / "clip" / "camera.json")


# -- the player and the node ----------------------------------------------------------------------

def _player(bag: Path, namespace: str, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "m4sam_ros.ros.player", "--bag", str(bag), *extra,
               "--ros-args", "-r", f"__ns:={namespace}"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process: subprocess.Popen) -> str:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
    output = process.communicate()[0]
    return output.decode(errors="replace") if output else ""


def _spin(node: Node, seconds: float, until=lambda: False) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not until():
        rclpy.spin_once(node, timeout_sec=0.05)


@pytest.mark.slow
def test_player_refuses_missing_topics_listing_the_bags(raw_mcap: Recording) -> None:
    result = subprocess.run([sys.executable, "-m", "m4sam_ros.ros.player", "--bag", str(raw_mcap.path),
                             "--depth-topic", "/camera/depth/image_rect_raw"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "depth topic '/camera/depth/image_rect_raw'" in result.stderr
    assert REALSENSE_TOPICS["depth"] in result.stderr and "sensor_msgs/msg/Image" in result.stderr


@pytest.mark.slow
def test_player_republishes_recorded_stamps_decoded_at_the_recorded_pace(tmp_path: Path) -> None:
    rec = write_recording(tmp_path / "bag", "sqlite3", colour="jpeg", depth="compressedDepth")
    rclpy.init()
    node = Node("bag_probe")
    got: dict[str, list] = {"rgb": [], "depth": [], "info": []}
    qos = QoSProfile(depth=50)
    node.create_subscription(Image, "/play/rgb/image", lambda m: got["rgb"].append((time.monotonic(), m)), qos)
    node.create_subscription(Image, "/play/depth/image", lambda m: got["depth"].append(m), qos)
    node.create_subscription(CameraInfo, "/play/rgb/camera_info", lambda m: got["info"].append(m), qos)
    process = _player(rec.path, "/play", "--rate", "2.0", "--wait-for-subscribers", "30")
    try:
        _spin(node, 60, until=lambda: process.poll() is not None)
        _spin(node, 1.0)
    finally:
        output = _stop(process)
        node.destroy_node()
        rclpy.try_shutdown()
    assert process.returncode == 0, output
    stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for _, m in got["rgb"]]
    assert stamps == rec.colour_ns, "every frame, with the recorded stamps, in order"
    first = got["rgb"][0][1]
    assert first.encoding == "rgb8" and first.header.frame_id == FRAME_ID
    assert np.abs(rgb_from_msg(first).astype(int) - rec.frames[0].rgb).mean() < 4.0  # decoded jpeg
    assert got["depth"][0].encoding == "16UC1"
    assert np.array_equal(depth_from_msg(got["depth"][0]), rec.frames[0].depth_mm)  # lossless png
    assert len(got["depth"]) == FRAMES - 1 and len(got["info"]) == FRAMES
    assert list(got["info"][0].k) == [rec.intrinsics.fx, 0, rec.intrinsics.cx, 0, rec.intrinsics.fy,
                                      rec.intrinsics.cy, 0, 0, 1]
    span = got["rgb"][-1][0] - got["rgb"][0][0]
    recorded = (FRAMES - 1) * PERIOD_NS * 1e-9
    assert 0.5 * recorded / 2.0 < span < recorded, f"--rate 2: {span:.2f} s for {recorded:.2f} s recorded"


@pytest.mark.slow
def test_player_loops_with_the_recorded_stamps(tmp_path: Path) -> None:
    rec = write_recording(tmp_path / "bag", "mcap", frames=4)
    rclpy.init()
    node = Node("loop_probe")
    stamps: list[int] = []
    node.create_subscription(Image, "/loop/rgb/image",
                             lambda m: stamps.append(m.header.stamp.sec * 10**9 + m.header.stamp.nanosec), 50)
    process = _player(rec.path, "/loop", "--loop", "--rate", "4", "--wait-for-subscribers", "30")
    try:
        _spin(node, 60, until=lambda: len(stamps) >= 10 or process.poll() is not None)
    finally:
        output = _stop(process)
        node.destroy_node()
        rclpy.try_shutdown()
    assert len(stamps) >= 10, output
    assert stamps[:10] == (rec.colour_ns * 3)[:10], "each pass replays the recorded stamps"


@pytest.mark.slow
def test_bag_played_into_the_node_gives_masks_with_the_bags_stamps(tmp_path: Path) -> None:
    rec = write_recording(tmp_path / "bag", "mcap", frames=20)
    rclpy.init()
    node = Node("bag_mask_probe")
    masks: list[Image] = []
    probe = node.create_subscription(Image, "/bagnode/saliency/mask", masks.append, QoSProfile(depth=50))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log = tmp_path / "node.log"
    with open(log, "wb") as out:
        saliency = subprocess.Popen(
            [sys.executable, "-m", "m4sam_ros.ros.saliency_node", "--ros-args", "-r", "__ns:=/bagnode",
             "-p", "model.preset:=test", "-p", "model.image_size:=64", "-p", "engine.num_threads:=1"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    player = None
    try:
        # masks published before our subscription matches the node's publisher are lost to us
        _spin(node, 120, until=lambda: probe.get_publisher_count() > 0 or saliency.poll() is not None)
        # half speed: the node's first frame (warm-up) is slow and it keeps only the latest pair
        player = _player(rec.path, "/bagnode", "--wait-for-subscribers", "60", "--rate", "0.5")
        _spin(node, 150, until=lambda: player.poll() is not None or saliency.poll() is not None)
        _spin(node, 3.0, until=lambda: len(masks) >= 20)
    finally:
        player_output = _stop(player) if player is not None else ""
        _stop(saliency)
        node.destroy_node()
        rclpy.try_shutdown()
    assert player is not None and player.returncode == 0, player_output + log.read_text()[-2000:]
    assert len(masks) >= 5, f"{len(masks)} masks; node log:\n{log.read_text()[-2000:]}"
    stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in masks]
    assert set(stamps) <= set(rec.colour_ns), "masks carry the bag's stamps"
    assert stamps == sorted(stamps) and all(m.header.frame_id == FRAME_ID for m in masks)
