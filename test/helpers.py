"""What the test modules share: waiting, the node as a process, a test camera, a probe of the
node's outputs, and (re-exported from the ROS-free ``model_helpers``) model helpers. Imported
by the tests (``from helpers import ...``); fixtures built on them live in ``conftest.py``."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from m4sam_ros.learn.synthetic import SyntheticConfig, generate_video
from m4sam_ros.msg import SalientObjectArray
from m4sam_ros.ros.conversions import image_msg

from model_helpers import memory_output, memory_view, randomize_adapters  # noqa: F401  (re-exported)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "m4sam.yaml"
DOMAIN = int(os.environ["ROS_DOMAIN_ID"])  # conftest gives each session its own
HEIGHT, WIDTH = 96, 128
FRAME_ID = "test_camera_color_optical_frame"
RATE_HZ = 15.0
# one torch thread: on a shared, oversubscribed CPU OpenMP barriers stall for seconds
TEST_MODEL = ("model.preset:=test", "model.image_size:=64", "engine.num_threads:=1")


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

    def handles_stop_signals(self) -> bool:
        """True once the node's own SIGTERM handler is installed (Python catches only SIGINT by
        default): from then on it is importing or running our code, the moment to test signals."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return False
        caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
        return bool(caught & (1 << (signal.SIGTERM - 1)))

    def stop_and_time(self, sig: int, timeout: float = 20.0) -> tuple[int, float]:
        """Send ``sig``; (exit code, seconds until the process ended)."""
        start = time.monotonic()
        self.signal(sig)
        code = self.process.wait(timeout=timeout)
        return code, time.monotonic() - start

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
        self._paused_until = 0.0
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
            if time.monotonic() < self._paused_until:
                self._stop.wait(period)
                next_tick = time.monotonic()
                continue
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

    def pause(self, seconds: float) -> None:
        """Both streams stop for ``seconds``, then resume."""
        self._paused_until = time.monotonic() + seconds

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


def sourced_environment(install: Path) -> dict[str, str]:
    """The environment a ROS user has after ``source <install>/setup.bash``."""
    result = subprocess.run(["bash", "-c", f'. "{install}/setup.bash" && env -0'], capture_output=True, text=True,
                            timeout=60, check=True)
    return dict(item.split("=", 1) for item in result.stdout.split("\0") if "=" in item)
