"""The saliency node end to end: its own process, real rclpy over DDS, the tiny model.

A test camera in this process publishes synthetic RGB-D video (m4sam_ros.learn.synthetic)
with camera_info at ~15 Hz; the checks read the node's outputs, /diagnostics, its reset
service and its parameter services. One node process is shared by the non-destructive
checks (namespace /shared); start-up failures and shutdown get their own processes.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import pytest
import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import ParameterType
from rcl_interfaces.srv import SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker, MarkerArray

from m4sam_ros.encodings import decode_image
from m4sam_ros.learn.synthetic import SyntheticConfig, generate_video
from m4sam_ros.msg import SalientObjectArray
from m4sam_ros.postprocess import SalientObject
from m4sam_ros.ros.conversions import image_msg, intrinsics_from_info, objects_msg
from m4sam_ros.ros.diagnostics import PipelineMonitor
from m4sam_ros.ros.frames import prepare_frame
from m4sam_ros.ros.markers import build_markers
from m4sam_ros.ros.model_loader import StartupError, check_model_files, node_device
from m4sam_ros.ros.overlay import render_overlay
from m4sam_ros.ros.parameters import PARAMETERS, NodeParameters, check, defaults, markdown_table

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "m4sam.yaml"
DOMAIN = 1 + os.getpid() % 100
HEIGHT, WIDTH = 96, 128
FRAME_ID = "test_camera_color_optical_frame"
RATE_HZ = 15.0
# one torch thread: on a shared, oversubscribed CPU OpenMP barriers stall for seconds
TEST_MODEL = ("model.preset:=test", "model.image_size:=64", "engine.num_threads:=1")


# -- helpers -------------------------------------------------------------------------------

def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def stamp_ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


class NodeProcess:
    """The node as its own process group (the venv's bootstrapper re-execs Python once)."""

    def __init__(self, log_dir: Path, namespace: str, *params: str, params_file: bool = True):
        self.log = log_dir / f"{namespace.strip('/') or 'root'}_{time.monotonic_ns()}.log"
        args = [sys.executable, "-m", "m4sam_ros.ros.saliency_node", "--ros-args", "-r", f"__ns:={namespace}"]
        if params_file:
            args += ["--params-file", str(CONFIG)]
        for param in params:
            args += ["-p", param]
        env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                   ROS_LOG_DIR=str(log_dir / "ros_log"), PYTHONUNBUFFERED="1", RCUTILS_COLORIZED_OUTPUT="0")
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log_dir,
                                            start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.killpg(self.process.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """Finalizer: SIGINT, then SIGKILL for the whole group if it does not go."""
        try:
            self.signal(signal.SIGINT)
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        finally:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=10)


@dataclass
class Received:
    """Messages of one topic with their arrival times."""

    items: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, msg) -> None:
        with self.lock:
            self.items.append((time.monotonic(), msg))

    def since(self, t: float) -> list:
        with self.lock:
            return [m for (arrival, m) in self.items if arrival >= t]

    def last(self):
        with self.lock:
            return self.items[-1][1] if self.items else None


class SyntheticCamera:
    """Publishes synthetic RGB-D frames + camera_info at RATE_HZ; hooks let a test break them."""

    def __init__(self, node, namespace: str, qos: QoSProfile):
        config = SyntheticConfig(height=HEIGHT, width=WIDTH, frames=30, seed=3)
        self.frames = list(generate_video(config))
        self.intrinsics = config.intrinsics()
        self.node = node
        self.rgb_pub = node.create_publisher(Image, f"{namespace}/rgb/image", qos)
        self.depth_pub = node.create_publisher(Image, f"{namespace}/depth/image", qos)
        self.info_pub = node.create_publisher(CameraInfo, f"{namespace}/rgb/camera_info", qos)
        self.clock = node.get_clock()
        self.send_depth = True
        self.stamp_offset_ns = 0
        self.rgb_hook: Callable[[Image], Image] | None = None
        self.depth_hook: Callable[[Image], Image] | None = None
        self.sent: dict[int, str] = {}  # RGB stamp (ns) -> frame_id
        self.sent_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        index = 0
        period = 1.0 / RATE_HZ
        next_tick = time.monotonic()
        while not self._stop.is_set():
            frame = self.frames[index % len(self.frames)]
            index += 1
            now = self.clock.now()
            stamp = Time(nanoseconds=now.nanoseconds + self.stamp_offset_ns).to_msg()
            rgb = image_msg(self._header(stamp), frame.rgb, "rgb8")
            if self.rgb_hook is not None:
                rgb = self.rgb_hook(rgb)
            with self.sent_lock:
                self.sent[stamp_ns(rgb.header.stamp)] = rgb.header.frame_id
            info = CameraInfo(header=self._header(stamp), width=WIDTH, height=HEIGHT, distortion_model="plumb_bob")
            i = self.intrinsics
            info.k = [i.fx, 0.0, i.cx, 0.0, i.fy, i.cy, 0.0, 0.0, 1.0]
            self.rgb_pub.publish(rgb)
            self.info_pub.publish(info)
            if self.send_depth:
                depth = image_msg(self._header(stamp), frame.depth_mm, "16UC1")
                if self.depth_hook is not None:
                    depth = self.depth_hook(depth)
                self.depth_pub.publish(depth)
            next_tick += period
            self._stop.wait(max(0.0, next_tick - time.monotonic()))

    @staticmethod
    def _header(stamp) -> Header:
        return Header(stamp=stamp, frame_id=FRAME_ID)

    def was_sent(self, header) -> bool:
        with self.sent_lock:
            return self.sent.get(stamp_ns(header.stamp)) == header.frame_id

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for publisher in (self.rgb_pub, self.depth_pub, self.info_pub):
            self.node.destroy_publisher(publisher)


class Probe:
    """Subscribes to one node's outputs (in ``namespace``) and its /diagnostics status."""

    def __init__(self, node, namespace: str):
        self.node = node
        self.namespace = namespace
        qos = QoSProfile(depth=20)
        self.mask, self.objects, self.markers, self.probability = Received(), Received(), Received(), Received()
        self.diagnostics = Received()
        node.create_subscription(Image, f"{namespace}/saliency/mask", self.mask.add, qos)
        node.create_subscription(SalientObjectArray, f"{namespace}/saliency/objects", self.objects.add, qos)
        node.create_subscription(MarkerArray, f"{namespace}/saliency/markers", self.markers.add, qos)
        node.create_subscription(Image, f"{namespace}/saliency/probability", self.probability.add, qos)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)
        self._name = f"{namespace}/m4sam_saliency: pipeline"

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == self._name:
                level = status.level[0] if isinstance(status.level, bytes) else int(status.level)
                self.diagnostics.add({"level": level, "message": status.message,
                                      **{kv.key: kv.value for kv in status.values}})

    def diag(self) -> dict:
        return self.diagnostics.last() or {}

    def wait_diag(self, predicate: Callable[[dict], bool], timeout: float, what: str, since: float = 0.0) -> dict:
        return wait_until(lambda: next((d for d in reversed(self.diagnostics.since(since)) if predicate(d)), None),
                          timeout, what)

    def wait_masks(self, count: int, timeout: float, since: float) -> list[Image]:
        wait_until(lambda: len(self.mask.since(since)) >= count, timeout, f"{count} masks")
        return self.mask.since(since)

    def call(self, service_type, name: str, request, timeout: float = 10.0):
        client = self.node.create_client(service_type, name)
        try:
            assert client.wait_for_service(timeout_sec=timeout), f"service {name} not available"
            future = client.call_async(request)
            wait_until(future.done, timeout, f"response of {name}")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def set_parameters(self, **values) -> list:
        request = SetParameters.Request(parameters=[Parameter(k.replace("__", "."), value=v).to_parameter_msg()
                                                    for k, v in values.items()])
        return self.call(SetParameters, f"{self.namespace}/m4sam_saliency/set_parameters", request).results


# -- fixtures -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ros():
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=DOMAIN)
    node = rclpy.create_node("m4sam_test", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    yield node
    executor.shutdown(timeout_sec=5)
    node.destroy_node()
    rclpy.try_shutdown(context=context)
    spinner.join(timeout=5)


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("node_logs")


@pytest.fixture(scope="module")
def shared(ros, log_dir):
    """One node for the non-destructive checks, its camera and its probe."""
    process = NodeProcess(log_dir, "/shared", *TEST_MODEL, "diagnostics.period:=0.5")
    probe = Probe(ros, "/shared")
    camera = SyntheticCamera(ros, "/shared", QoSProfile(depth=5))  # RELIABLE publisher, like realsense-ros
    try:
        wait_until(lambda: probe.mask.last() is not None or not process.alive(), 60, "the first mask")
        assert process.alive(), f"node exited:\n{process.output()[-3000:]}"
        yield process, camera, probe
    finally:
        camera.stop()
        process.kill()


@pytest.fixture
def healthy(shared):
    """Every check on the shared node ends with it alive and still producing masks from good frames."""
    process, camera, probe = shared
    camera.send_depth, camera.rgb_hook, camera.depth_hook, camera.stamp_offset_ns = True, None, None, 0
    yield shared
    camera.send_depth, camera.rgb_hook, camera.depth_hook, camera.stamp_offset_ns = True, None, None, 0
    after = time.monotonic()
    masks = probe.wait_masks(3, timeout=15, since=after)
    assert all(camera.was_sent(m.header) for m in masks)
    assert process.alive(), f"node died:\n{process.output()[-3000:]}"


# -- parameters file ----------------------------------------------------------------------

def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_readme_parameter_table_is_the_declared_one():
    assert markdown_table().strip() in (ROOT / "README.md").read_text(), \
        "README's parameter table differs from the code: paste `python -m m4sam_ros.ros.parameters`"


def test_config_yaml_equals_declared_defaults():
    config = yaml.safe_load(CONFIG.read_text())
    assert list(config) == ["/**/m4sam_saliency"]
    values = _flatten(config["/**/m4sam_saliency"]["ros__parameters"])
    assert values == defaults()
    for spec in PARAMETERS:  # same type too: 1 vs 1.0 would be an INTEGER vs DOUBLE override
        assert type(values[spec.name]) is type(spec.default), spec.name


# -- the node's helper modules, in-process ----------------------------------------------

class ManualClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _image(array: np.ndarray, encoding: str) -> Image:
    return image_msg(Header(frame_id=FRAME_ID), array, encoding)


def test_parameter_table_descriptors_and_checks():
    by_name = {p.name: p for p in PARAMETERS}
    threshold = by_name["mask_threshold"].descriptor()
    assert threshold.type == ParameterType.PARAMETER_DOUBLE and not threshold.read_only
    assert (threshold.floating_point_range[0].from_value, threshold.floating_point_range[0].to_value) == (0.01, 0.99)
    size = by_name["model.image_size"].descriptor()
    assert size.read_only and size.integer_range[0].step == 32
    assert "tensorrt" in by_name["engine.backend"].descriptor().additional_constraints
    assert all(p.description for p in PARAMETERS)
    assert check("engine.backend", "cuda") and "one of" in check("engine.backend", "cuda")
    assert check("engine.device", "cuda:1") is None and "cuda:N" in check("engine.device", "gpu")
    assert check("model.preset", "test") is None and check("model.preset", "hiera_x")
    settings = NodeParameters.from_values(defaults())
    assert settings.sync.slop == by_name["sync.slop"].default and settings.model.preset == "hiera_t"
    with pytest.raises(ValueError, match="missing parameters: mask_threshold"):
        NodeParameters.from_values({k: v for k, v in defaults().items() if k != "mask_threshold"})
    assert "`mask_threshold` | double | 0.5 |" in markdown_table()


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


def test_monitor_rates_levels_and_problems():
    clock = ManualClock()
    monitor = PipelineMonitor(clock=clock)
    status = monitor.status(name="n", hardware_id="cpu", rgb_only=False, extra={}, hints=[])
    assert status.level == DiagnosticStatus.WARN and "no RGB" in status.message
    for _ in range(31):
        monitor.rgb.tick()
        clock.now += 1 / 30
    monitor.record_result(inference_ms=20.0, age_s=0.05, memory_frames=3, used_depth=True,
                          reinitialized="start", overlay=False)
    values = {kv.key: kv.value for kv in monitor.status(name="n", hardware_id="cpu", rgb_only=False,
                                                         extra={"pairs_dropped": 4}, hints=[]).values}
    assert float(values["rgb_hz"]) == pytest.approx(30.0, rel=0.05)
    assert (values["mode"], values["memory_frames"], values["last_reinit"], values["pairs_dropped"]) == \
        ("RGB-D", "3", "start", "4")
    assert values["result_age_ms_max"] == "50.0"
    values = {kv.key: kv.value for kv in monitor.status(name="n", hardware_id="cpu", rgb_only=False, extra={},
                                                         hints=[]).values}
    assert values["result_age_ms_max"] == "0.0"  # the window maximum restarts after each report
    monitor.problems.record("encoding", "rgb/image: unsupported 'yuv422'")
    status = monitor.status(name="n", hardware_id="cpu", rgb_only=False, extra={}, hints=[])
    assert status.level == DiagnosticStatus.WARN and "yuv422" in status.message
    counts, last = monitor.problems.snapshot()
    monitor.problems.record("inference", "RuntimeError: boom")
    monitor.problems.record("depth_size", "resized", warning=False)
    assert counts == {"encoding": 1} and last.kind == "encoding"  # a copy: later records leave it alone
    assert monitor.status(name="n", hardware_id="cpu", rgb_only=False, extra={}, hints=[]).level == \
        DiagnosticStatus.ERROR
    clock.now += 10.0
    for _ in range(3):
        monitor.rgb.tick()
    status = monitor.status(name="n", hardware_id="cpu", rgb_only=True, extra={}, hints=[])
    assert status.level == DiagnosticStatus.WARN and status.message.startswith("RGB-only")


# -- outputs ------------------------------------------------------------------------------

def test_mask_is_mono8_with_the_rgb_header(healthy):
    _, camera, probe = healthy
    masks = probe.wait_masks(5, timeout=15, since=time.monotonic())
    for mask in masks:
        assert (mask.encoding, mask.height, mask.width) == ("mono8", HEIGHT, WIDTH)
        assert mask.step == WIDTH and len(mask.data) == WIDTH * HEIGHT
        assert camera.was_sent(mask.header), "mask stamp/frame_id must be copied from an RGB frame"
        values = set(np.unique(decode_image("mono8", mask.height, mask.width, mask.step, False, mask.data)))
        assert values <= {0, 255}


def test_objects_and_markers_describe_the_same_frame(healthy):
    _, camera, probe = healthy
    start = time.monotonic()

    def frame_with_3d():
        markers = {stamp_ns(m.markers[0].header.stamp): m for m in probe.markers.since(start) if m.markers}
        for objects in probe.objects.since(start):
            if any(o.has_3d for o in objects.objects) and stamp_ns(objects.header.stamp) in markers:
                return objects, markers[stamp_ns(objects.header.stamp)]
        return None

    objects, markers = wait_until(frame_with_3d, 20, "objects with 3D and their markers")
    assert camera.was_sent(objects.header)
    for obj in objects.objects:
        assert 0.0 <= obj.score <= 1.0 and obj.area > 0
        assert obj.roi.x_offset + obj.roi.width <= WIDTH and obj.roi.y_offset + obj.roi.height <= HEIGHT
        if obj.has_3d:
            assert obj.centroid.z > 0 and math.isfinite(obj.centroid.x)
    assert markers.markers[0].action == Marker.DELETEALL  # stale markers vanish
    assert all(m.header.frame_id == FRAME_ID for m in markers.markers)
    cubes = {m.id for m in markers.markers if m.type == Marker.CUBE}
    labels = {m.id: m.text for m in markers.markers if m.type == Marker.TEXT_VIEW_FACING}
    with_3d = {o.id for o in objects.objects if o.has_3d}
    assert cubes == with_3d and set(labels) == with_3d
    for obj in objects.objects:
        if obj.has_3d:
            assert labels[obj.id].startswith(f"#{obj.id} ")


def test_overlay_is_rendered_only_while_subscribed(healthy, ros):
    _, camera, probe = healthy
    start = time.monotonic()
    before = probe.wait_diag(lambda d: int(d["frames_processed"]) > 0, 10, "frames processed", since=start)
    time.sleep(1.0)
    idle = probe.wait_diag(lambda d: int(d["frames_processed"]) >= int(before["frames_processed"]) + 5, 10,
                           "more frames", since=start)
    assert int(idle["overlays_computed"]) == int(before["overlays_computed"]), "overlay rendered with no subscriber"

    overlays = Received()
    subscription = ros.create_subscription(Image, "/shared/saliency/overlay", overlays.add, 10)
    try:
        wait_until(lambda: len(overlays.items) >= 3, 15, "overlay images")
        overlay = overlays.last()
        assert (overlay.encoding, overlay.height, overlay.width) == ("bgr8", HEIGHT, WIDTH)
        assert camera.was_sent(overlay.header)
        probe.wait_diag(lambda d: int(d["overlays_computed"]) > int(idle["overlays_computed"]), 10,
                        "overlays_computed to grow")
    finally:
        ros.destroy_subscription(subscription)


def test_runtime_threshold_and_probability(healthy):
    _, _, probe = healthy
    results = probe.set_parameters(publish_probability=True, mask_threshold=0.9)
    assert all(r.successful for r in results), [r.reason for r in results]
    try:
        start = time.monotonic() + 0.5  # frames already in flight used the old settings

        def matched_pair():
            probabilities = {stamp_ns(p.header.stamp): p for p in probe.probability.since(start)}
            for mask in probe.mask.since(start):
                if stamp_ns(mask.header.stamp) in probabilities:
                    return mask, probabilities[stamp_ns(mask.header.stamp)]
            return None

        mask_msg, prob_msg = wait_until(matched_pair, 15, "a mask and probability of the same frame")
        assert (prob_msg.encoding, prob_msg.height, prob_msg.width) == ("32FC1", HEIGHT, WIDTH)
        probability = decode_image("32FC1", prob_msg.height, prob_msg.width, prob_msg.step, prob_msg.is_bigendian,
                                   prob_msg.data)
        mask = decode_image("mono8", mask_msg.height, mask_msg.width, mask_msg.step, False, mask_msg.data)
        assert probability.min() >= 0.0 and probability.max() <= 1.0
        assert np.all(probability[mask == 255] >= 0.9 - 1e-6), "mask must follow the new threshold"
    finally:
        results = probe.set_parameters(publish_probability=False, mask_threshold=0.5)
        assert all(r.successful for r in results)


@pytest.mark.parametrize("values,reason", [
    ({"mask_threshold": 1.5}, "out of range"),
    ({"mask_threshold": 1}, "type"),
    ({"sync__queue_size": 0}, "out of range"),
    ({"engine__backend": "pytorch"}, "read-only"),
    ({"model__preset": "hiera_l"}, "read-only"),
])
def test_invalid_parameter_values_are_refused(shared, values, reason):
    _, _, probe = shared
    (result,) = probe.set_parameters(**values)
    assert not result.successful and reason in result.reason.lower(), result.reason


def test_reset_service_reinitialises_memory(healthy):
    _, _, probe = healthy
    before = probe.wait_diag(lambda d: int(d["frames_processed"]) > 0, 10, "frames processed")
    response = probe.call(Trigger, "/shared/m4sam_saliency/reset", Trigger.Request())
    assert response.success and "memory" in response.message
    after = probe.wait_diag(lambda d: d["last_reinit"] == "reset" and int(d["reinit_count"]) > int(before["reinit_count"]),
                            10, "a re-initialisation with reason 'reset'")
    assert int(after["memory_frames"]) >= 1


def test_rgb_only_fallback_and_recovery(healthy):
    _, camera, probe = healthy
    probe.wait_diag(lambda d: d["mode"] == "RGB-D" and d["last_used_depth"] == "True", 10, "RGB-D mode")
    camera.send_depth = False
    stopped = time.monotonic()
    rgb_only = probe.wait_diag(lambda d: d["mode"] == "RGB-only" and d["last_used_depth"] == "False", 10,
                               "RGB-only mode", since=stopped)
    assert rgb_only["level"] == 1  # WARN says why the output degraded
    masks = probe.wait_masks(5, timeout=10, since=time.monotonic())  # still serving without depth
    assert all(camera.was_sent(m.header) for m in masks)
    camera.send_depth = True
    back = time.monotonic()
    probe.wait_diag(lambda d: d["mode"] == "RGB-D" and d["last_used_depth"] == "True", 10, "RGB-D again", since=back)


# -- bad input: the node logs, reports and keeps serving ------------------------------------

def _with(**fields):
    def hook(msg: Image) -> Image:
        for key, value in fields.items():
            setattr(msg, key, value)
        return msg
    return hook


def _depth_metres(fill: Callable[[np.ndarray], None], height: int = HEIGHT, width: int = WIDTH):
    def hook(msg: Image) -> Image:
        depth = np.full((height, width), 1.5, dtype=np.float32)
        fill(depth)
        return image_msg(msg.header, depth, "32FC1")
    return hook


def _depth_size(height: int, width: int):
    def hook(msg: Image) -> Image:
        return image_msg(msg.header, np.full((height, width), 1200, dtype=np.uint16), "16UC1")
    return hook


def _nan_inf(depth: np.ndarray) -> None:
    depth[:10] = np.nan
    depth[-10:] = np.inf


def _all_nan(depth: np.ndarray) -> None:
    depth[:] = np.nan


BAD_INPUTS = {
    "rgb_encoding": ("rgb", _with(encoding="yuv422"), "encoding", "'yuv422'"),
    "depth_encoding": ("depth", _with(encoding="rgb8"), "encoding", "depth encoding 'rgb8'"),
    "rgb_zero_size": ("rgb", _with(height=0, width=0, step=0, data=[]), "image_layout", "empty"),
    "rgb_short_data": ("rgb", _with(height=HEIGHT + 1), "image_layout", "expected step*height"),
    "depth_short_data": ("depth", _with(step=2 * WIDTH + 2), "image_layout", "expected step*height"),
    "depth_resized": ("depth", _depth_size(HEIGHT // 2, WIDTH // 2), "depth_size", "resized"),
    "depth_other_aspect": ("depth", _depth_size(HEIGHT, WIDTH // 2), "depth_size", "depth dropped"),
    "depth_nan_inf": ("depth", _depth_metres(_nan_inf), "depth_nonfinite", "NaN/inf"),
    "depth_all_nan": ("depth", _depth_metres(_all_nan), "depth_empty", "no valid pixel"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_reported_and_survived(healthy, case):
    process, camera, probe = healthy
    stream, hook, kind, text = BAD_INPUTS[case]
    before = int(probe.diag().get(f"problems.{kind}", 0))
    start = time.monotonic()
    if stream == "rgb":
        camera.rgb_hook = hook
    else:
        camera.depth_hook = hook
    report = probe.wait_diag(lambda d: int(d.get(f"problems.{kind}", 0)) > before and text in d["last_error"],
                             10, f"diagnostics reporting {kind}", since=start)
    assert report["level"] >= 1 or kind in ("depth_size", "depth_nonfinite")
    assert process.alive()
    assert f"m4sam_saliency.{kind}" in process.output(), "a log line per problem kind"
    # the healthy fixture then checks that good frames produce masks again


def test_stamps_going_backwards_reinitialise(healthy):
    process, camera, probe = healthy
    probe.wait_masks(2, timeout=10, since=time.monotonic())
    start = time.monotonic()
    camera.stamp_offset_ns = -5_000_000_000  # a bag loop: time jumps back 5 s
    report = probe.wait_diag(lambda d: int(d.get("problems.stamp_backwards", 0)) > 0
                             and d["last_reinit"] == "stamp_backwards", 10, "stamp_backwards", since=start)
    assert int(report["stamp_resets"]) >= 1
    masks = probe.wait_masks(3, timeout=10, since=time.monotonic())
    assert all(camera.was_sent(m.header) for m in masks)  # the looped frames are served
    assert process.alive()


def test_result_age_stays_bounded_when_inference_is_slow(healthy):
    """300 ms per inference at 15 Hz input: drop stale pairs, never queue them."""
    _, camera, probe = healthy
    (result,) = probe.set_parameters(engine__simulated_latency_ms=300.0)
    assert result.successful, result.reason
    try:
        time.sleep(1.0)  # let the frame in flight with the old latency finish
        start = time.monotonic()
        dropped_before = int(probe.diag()["pairs_dropped"])
        time.sleep(4.0)
        masks = probe.mask.since(start)
        reports = probe.diagnostics.since(start)
        now_ns = camera.clock.now().nanoseconds
        assert 6 <= len(masks) <= 16, f"{len(masks)} masks in 4 s at ~3 Hz of inference"
        ages = [float(d["result_age_ms"]) for d in reports] + [float(d["result_age_ms_max"]) for d in reports]
        assert ages and max(ages) < 1000.0, f"result age grew: {max(ages):.0f} ms"
        assert min(float(d["inference_ms"]) for d in reports) >= 300.0
        assert int(reports[-1]["pairs_dropped"]) > dropped_before + 20, "stale pairs must be dropped and counted"
        # the newest mask is recent, not a backlog: its stamp is within 1 s of now
        assert (now_ns - stamp_ns(masks[-1].header.stamp)) * 1e-9 < 1.0
    finally:
        probe.set_parameters(engine__simulated_latency_ms=0.0)


# -- processes of their own ---------------------------------------------------------------

def test_startup_errors_are_clear_and_exit_nonzero(log_dir):
    corrupt = log_dir / "sam2.1_hiera_tiny.pt"
    corrupt.write_bytes(b"PK\x03\x04 truncated download")
    cases = {
        "missing_checkpoint": (["model.preset:=hiera_t", "model.sam2_checkpoint:=/nonexistent/sam2.1_hiera_tiny.pt"],
                               ["/nonexistent/sam2.1_hiera_tiny.pt", "sam2.1_hiera_tiny.pt", "model.sam2_checkpoint",
                                "github.com/facebookresearch/sam2"]),
        "no_checkpoint": (["model.preset:=hiera_s"], ["sam2.1_hiera_small.pt", "model.sam2_checkpoint"]),
        "out_of_range": (["model.preset:=test", "mask_threshold:=2.0"], ["mask_threshold", "out of range"]),
        "bad_choice": (["model.preset:=test", "engine.device:=gpu0"], ["engine.device", "cuda:N"]),
        "backend": (["model.preset:=test", "engine.backend:=tensorrt"], ["engine.backend", "tensorrt", "pip install tensorrt"]),
        "corrupt_checkpoint": (["model.preset:=hiera_t", f"model.sam2_checkpoint:={corrupt}"],
                               ["cannot build the model", str(corrupt)]),
    }
    processes = {name: NodeProcess(log_dir, f"/startup_{name}", *params) for name, (params, _) in cases.items()}
    try:
        for name, (_, expected) in cases.items():
            process = processes[name]
            code = process.wait(timeout=90)
            output = process.output()
            assert code == 1, f"{name}: exit code {code}\n{output[-2000:]}"
            assert "Traceback" not in output, f"{name}: traceback instead of a message\n{output}"
            for text in expected:
                assert text in output, f"{name}: {text!r} missing from\n{output}"
    finally:
        for process in processes.values():
            process.kill()


@pytest.mark.parametrize("sig,reliable", [(signal.SIGINT, False), (signal.SIGTERM, True)],
                         ids=["SIGINT-best_effort", "SIGTERM-reliable"])
def test_qos_hints_and_clean_shutdown_during_inference(ros, log_dir, sig, reliable):
    """Silent inputs are explained in diagnostics; a signal mid-inference exits 0 without a traceback."""
    namespace = f"/shutdown_{sig.name.lower()}"
    process = NodeProcess(log_dir, namespace, *TEST_MODEL, "engine.simulated_latency_ms:=400.0",
                          f"qos.reliable:={str(reliable).lower()}")
    probe = Probe(ros, namespace)
    cameras = []
    try:
        hint = probe.wait_diag(lambda d: "hint.0" in d, 60, "an input hint before any camera")
        assert f"{namespace}/rgb/image: no publisher" in hint["hint.0"] and hint["level"] == 1
        if reliable:  # a BEST_EFFORT camera cannot reach a RELIABLE subscription: say so
            cameras.append(SyntheticCamera(ros, namespace, qos_profile_sensor_data))
            probe.wait_diag(lambda d: any("BEST_EFFORT" in v and "qos.reliable false" in v
                                          for k, v in d.items() if k.startswith("hint.")),
                            15, "a QoS mismatch hint")
            assert probe.mask.last() is None
            cameras.pop().stop()
        cameras.append(SyntheticCamera(ros, namespace, QoSProfile(depth=5) if reliable else qos_profile_sensor_data))
        wait_until(lambda: probe.mask.last() is not None or not process.alive(), 30, "the first mask")
        assert process.alive(), process.output()[-3000:]
        time.sleep(0.2)  # most likely inside the 400 ms inference now
        process.signal(sig)
        code = process.wait(timeout=20)
        output = process.output()
        assert code == 0, f"exit code {code}\n{output[-3000:]}"
        assert "Traceback" not in output and "context is invalid" not in output, output
    finally:
        for camera in cameras:
            camera.stop()
        process.kill()


def test_onnxruntime_backend_exports_caches_and_serves(ros, log_dir, tmp_path):
    """engine.backend onnxruntime: the graphs are exported at start-up into the cache, and masks flow."""
    namespace = "/onnxruntime"
    process = NodeProcess(log_dir, namespace, *TEST_MODEL, "engine.backend:=onnxruntime",
                          f"engine.cache_dir:={tmp_path}")
    probe = Probe(ros, namespace)
    camera = SyntheticCamera(ros, namespace, QoSProfile(depth=5))
    try:
        wait_until(lambda: probe.mask.last() is not None or not process.alive(), 120, "the first mask")
        assert process.alive(), f"node exited:\n{process.output()[-3000:]}"
        masks = probe.wait_masks(3, timeout=30, since=0.0)
        assert all(camera.was_sent(m.header) for m in masks)
        assert "on onnxruntime/cpu" in process.output(), process.output()[-3000:]
        assert len(list(tmp_path.rglob("*.onnx"))) == 2, "encoder and memory attention graphs in the cache"
    finally:
        camera.stop()
        process.kill()


def test_default_preset_zero_shot_with_an_official_format_checkpoint(ros, log_dir, tmp_path):
    """The day-one path: preset hiera_t, an official SAM2.1-format checkpoint, no adapter -> zero-shot."""
    from m4sam_ros.model.m4sam import build_m4sam

    source = build_m4sam("hiera_t", image_size=128, seed=1)
    frozen = set(source.frozen_keys())
    checkpoint = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": {k: v for k, v in source.state_dict().items() if k in frozen}}, checkpoint)
    del source
    namespace = "/zero_shot"
    process = NodeProcess(log_dir, namespace, "model.preset:=hiera_t", f"model.sam2_checkpoint:={checkpoint}",
                          "model.image_size:=128", "engine.num_threads:=1")
    probe = Probe(ros, namespace)
    camera = SyntheticCamera(ros, namespace, QoSProfile(depth=5))
    try:
        wait_until(lambda: probe.mask.last() is not None or not process.alive(), 180, "the first mask")
        assert process.alive(), f"node exited:\n{process.output()[-3000:]}"
        masks = probe.wait_masks(2, timeout=60, since=0.0)
        assert all(camera.was_sent(m.header) and (m.width, m.height) == (WIDTH, HEIGHT) for m in masks)
        assert "hiera_t 128px zero_shot on pytorch/cpu" in process.output(), process.output()[-3000:]
    finally:
        camera.stop()
        process.kill()
