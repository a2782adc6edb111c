"""The node's helper modules in-process, no DDS: decoding a pair (``frames``), start-up checks
(``model_loader``), objects, markers and the overlay."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from helpers import FRAME_ID, HEIGHT, WIDTH
from m4sam_ros.postprocess import SalientObject
from m4sam_ros.ros.conversions import image_msg, intrinsics_from_info, objects_msg
from m4sam_ros.ros.frames import prepare_frame
from m4sam_ros.ros.markers import build_markers
from m4sam_ros.ros.model_loader import StartupError, check_model_files, node_device
from m4sam_ros.ros.overlay import render_overlay
from m4sam_ros.ros.parameters import NodeParameters, defaults


def _image(array: np.ndarray, encoding: str) -> Image:
    return image_msg(Header(frame_id=FRAME_ID), array, encoding)


def test_startup_checks_name_the_file_and_the_fix(tmp_path):
    settings = NodeParameters.from_values(defaults())
    with pytest.raises(StartupError, match="sam2.1_hiera_tiny.pt.*model.sam2_checkpoint"):
        check_model_files(settings.model)
    missing = replace(settings.model, sam2_checkpoint=str(tmp_path / "nope.pt"))
    with pytest.raises(StartupError, match=f"not found: {tmp_path / 'nope.pt'}"):
        check_model_files(missing)
    checkpoint = tmp_path / "sam2.1_hiera_tiny.pt"
    checkpoint.write_bytes(b"x")
    assert check_model_files(replace(settings.model, sam2_checkpoint=str(checkpoint))) == (checkpoint, None)
    with pytest.raises(StartupError, match="adapter weights not found"):
        check_model_files(replace(settings.model, preset="test", adapter=str(tmp_path / "a.pt")))
    assert node_device(replace(settings.engine, device="cpu")) == torch.device("cpu")
    with pytest.raises(StartupError, match="model.adapter is a directory, not an adapter file"):
        check_model_files(replace(settings.model, preset="test", adapter=str(tmp_path)))
    with pytest.raises(StartupError, match="model.sam2_checkpoint is a directory.*sam2.1_hiera_tiny.pt"):
        check_model_files(replace(settings.model, sam2_checkpoint=str(tmp_path)))


def test_prepare_frame_fits_depth_or_drops_it():
    rgb = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    info = CameraInfo(width=WIDTH * 2, height=HEIGHT * 2, k=[200.0, 0, 127.5, 0, 200.0, 95.5, 0, 0, 1])
    depth = np.arange(HEIGHT * WIDTH // 4, dtype=np.uint16).reshape(HEIGHT // 2, WIDTH // 2) + 1
    frame = prepare_frame(_image(rgb, "rgb8"), _image(depth, "16UC1"), info)
    assert frame.depth.shape == (HEIGHT, WIDTH) and frame.depth[1, 1] == depth[0, 0]  # nearest, no new values
    assert set(np.unique(frame.depth)) <= set(np.unique(depth))
    assert [n.kind for n in frame.notes] == ["depth_size"] and "resized" in frame.notes[0].message
    assert frame.intrinsics.fx == pytest.approx(100.0) and frame.intrinsics.cx == pytest.approx(63.5)

    frame = prepare_frame(_image(rgb, "rgb8"), _image(np.ones((HEIGHT, WIDTH // 2), np.uint16), "16UC1"), None)
    assert frame.depth is None and "depth dropped" in frame.notes[0].message and frame.notes[0].warning

    metres = np.full((HEIGHT, WIDTH), np.nan, np.float32)
    metres[0, :4] = [1.0, np.inf, 2.0, -np.inf]
    frame = prepare_frame(_image(rgb, "bgr8"), _image(metres, "32FC1"), None)
    assert [n.kind for n in frame.notes] == ["depth_nonfinite"] and frame.depth.dtype == np.float32
    frame = prepare_frame(_image(rgb, "rgb8"), _image(np.zeros((HEIGHT, WIDTH), np.uint16), "16UC1"), None)
    assert frame.depth is None and [n.kind for n in frame.notes] == ["depth_empty"]

    bad_info = CameraInfo(width=WIDTH, height=HEIGHT, k=[100.0, 0, float("nan"), 0, 100.0, 50.0, 0, 0, 1])
    frame = prepare_frame(_image(rgb, "rgb8"), None, bad_info)
    assert frame.intrinsics is None and frame.notes[0].kind == "camera_info"
    assert intrinsics_from_info(CameraInfo(), WIDTH, HEIGHT) is None  # K unset: 2D only
    for k, reason in (([0.0] * 9, "all zero"), ([-100.0, 0, 60.0, 0, 100.0, 50.0, 0, 0, 1], "fx, fy > 0")):
        frame = prepare_frame(_image(rgb, "rgb8"), None, CameraInfo(width=WIDTH, height=HEIGHT, k=k))
        assert frame.intrinsics is None and [n.kind for n in frame.notes] == ["camera_info"], k
        assert reason in frame.notes[0].message and "no 3D" in frame.notes[0].message


def test_objects_and_markers_messages():
    objects = [SalientObject(id=3, score=0.8, box=(4, 5, 20, 10), area=150, age=2,
                             centroid=np.array([0.1, -0.2, 1.5]), extent=np.array([0.3, 0.0, 0.2])),
               SalientObject(id=7, score=0.4, box=(50, 60, 8, 8), area=40, age=0, centroid=None, extent=None)]
    header = Header(frame_id=FRAME_ID)
    msg = objects_msg(header, objects)
    first, second = msg.objects
    assert (first.id, first.age, first.area, first.has_3d) == (3, 2, 150, True)
    assert (first.roi.x_offset, first.roi.y_offset, first.roi.width, first.roi.height) == (4, 5, 20, 10)
    assert (first.centroid.z, first.extent.x) == pytest.approx((1.5, 0.3))
    assert not second.has_3d and msg.header.frame_id == FRAME_ID
    markers = build_markers(header, objects).markers
    assert markers[0].action == Marker.DELETEALL
    cube, label = markers[1:]
    assert (cube.type, cube.id, label.type, label.text) == (Marker.CUBE, 3, Marker.TEXT_VIEW_FACING, "#3 0.80")
    assert cube.scale.y == pytest.approx(0.01)  # a flat extent still gets a visible box
    assert label.pose.position.y < cube.pose.position.y  # label above the box (optical y points down)
    bgr = render_overlay(np.zeros((HEIGHT, WIDTH, 3), np.uint8), np.ones((HEIGHT, WIDTH), np.uint8), objects, 0.5)
    assert bgr.shape == (HEIGHT, WIDTH, 3) and bgr[HEIGHT - 1, 0, 2] > 0  # tinted


def test_overlay_leaves_a_bgr8_input_message_untouched():
    """bgr8 decodes to a view whose reverse is the message buffer itself: the overlay must copy."""
    msg = image_msg(Header(frame_id=FRAME_ID), np.full((HEIGHT, WIDTH, 3), 40, np.uint8), "bgr8")
    before = bytes(msg.data)
    mask = np.ones((HEIGHT, WIDTH), np.uint8)
    objects = [SalientObject(id=1, score=0.9, box=(2, 2, 10, 10), area=100, age=0, centroid=None, extent=None)]
    bgr = render_overlay(prepare_frame(msg, None, None).rgb, mask, objects, 0.5)
    assert bgr[HEIGHT - 1, 0, 2] > 40  # tinted
    assert bytes(msg.data) == before


def test_points_cloud_layout_is_the_standard_xyz_rgb_one():
    """What sensor_msgs_py.point_cloud2 and RViz read: fields by the PointField definitions,
    little-endian, 16 bytes a point, rgb packed 0x00RRGGBB in a FLOAT32 field."""
    from sensor_msgs.msg import PointField

    from m4sam_ros.ros.points import points_msg

    xyz = np.array([[0.1, -0.2, 1.5], [0.0, 0.0, 2.0]], np.float32)
    rgb = np.array([[255, 0, 10], [1, 2, 3]], np.uint8)
    msg = points_msg(Header(frame_id=FRAME_ID), xyz, rgb)
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ("x", 0, PointField.FLOAT32, 1), ("y", 4, PointField.FLOAT32, 1), ("z", 8, PointField.FLOAT32, 1),
        ("rgb", 12, PointField.FLOAT32, 1)]
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 2, 16, 32)
    assert not msg.is_bigendian and msg.is_dense and len(msg.data) == 32
    sizes = {PointField.FLOAT32: 4}  # decode as a reader does: from the fields alone
    dtype = np.dtype({"names": [f.name for f in msg.fields], "formats": ["<f4"] * 4,
                      "offsets": [f.offset for f in msg.fields], "itemsize": msg.point_step})
    assert all(sizes[f.datatype] * f.count <= msg.point_step - f.offset for f in msg.fields)
    cloud = np.frombuffer(bytes(msg.data), dtype)
    np.testing.assert_array_equal(np.stack([cloud["x"], cloud["y"], cloud["z"]], 1), xyz)
    packed = cloud["rgb"].view("<u4")
    assert [(p >> 16 & 255, p >> 8 & 255, p & 255) for p in packed] == [(255, 0, 10), (1, 2, 3)]


def test_library_logging_reaches_the_ros_logger(tmp_path, capfd):
    """The engine cache logs with Python logging; in the node its lines carry the node's logger name."""
    import logging

    import rclpy

    from m4sam_ros.engines.cache import ArtifactCache, EngineKey
    from m4sam_ros.ros.log_bridge import bridge_python_logging

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("bridge_test", context=context)
    handler = bridge_python_logging(node.get_logger())
    try:
        key = EngineKey(graph="encoder", weights_sha256="ab", image_size=64, precision="fp32")
        cache = ArtifactCache(tmp_path)
        cache.store(key, ".onnx", data=b"graph").write_bytes(b"tampered")
        assert cache.lookup(key, ".onnx") is None
        err = capfd.readouterr().err
        assert "[bridge_test.cache]" in err and "refusing cached" in err, err
    finally:
        for name in ("m4sam_ros", "m4sam"):
            logger = logging.getLogger(name)
            logger.removeHandler(handler)
            logger.propagate, logger.level = True, logging.NOTSET
        node.destroy_node()
        rclpy.try_shutdown(context=context)
