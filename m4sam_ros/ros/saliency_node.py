"""ROS 2 node ``m4sam_saliency``: RGB-D frames in, saliency mask / objects / markers out.

Glue only: callbacks check cheap header fields and enqueue; pairing lives in
``m4sam_ros.pairing``, decoding in ``frames``/``conversions``, the model in the tracker,
RViz views in ``markers``/``overlay``. One worker thread runs inference on the *latest*
RGB/depth pair; older pairs are dropped and counted, so a slow model never builds latency.

Topics (relative, so a namespace prefixes them; in the root namespace they are
``/saliency/...``): subscribes ``rgb/image``, ``depth/image``, ``rgb/camera_info``;
publishes ``saliency/mask``, ``saliency/probability`` (optional), ``saliency/objects``,
``saliency/markers``, ``saliency/overlay`` (only rendered while subscribed) and
``/diagnostics``. Service ``~/reset`` (std_srvs/Trigger) clears the memory bank.
"""
from __future__ import annotations

import sys
import threading
import time
import traceback

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import ExternalShutdownException
from rclpy.impl.rcutils_logger import RcutilsLogger
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from m4sam_ros.encodings import ImageLayoutError, UnsupportedEncodingError
from m4sam_ros.msg import SalientObjectArray
from m4sam_ros.pairing import ApproximateTimePairer, FramePair, LatestSlot
from m4sam_ros.ros.conversions import check_image, image_msg, objects_msg, stamp_seconds
from m4sam_ros.ros.diagnostics import INPUT_SILENT_S, PipelineMonitor
from m4sam_ros.ros.frames import prepare_frame
from m4sam_ros.ros.markers import build_markers
from m4sam_ros.ros.model_loader import StartupError, build_tracker, postprocess_config
from m4sam_ros.ros.overlay import render_overlay
from m4sam_ros.ros.parameters import NodeParameters, ParameterError, declare_all

NODE_NAME = "m4sam_saliency"
THROTTLE_S = 5.0
WORKER_JOIN_S = 10.0


class SaliencyNode(Node):
    """Parameters, subscriptions, publishers and the inference worker; see the module docstring."""

    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        try:
            self._settings: NodeParameters = declare_all(self, on_change=self._on_settings)
        except ParameterError as exc:
            raise StartupError(str(exc)) from None
        self._loggers: dict[str, RcutilsLogger] = {}
        self._log_lock = threading.Lock()
        self._monitor = PipelineMonitor()

        s = self._settings
        self._tracker, self._engine_info = build_tracker(s)
        self.get_logger().info(f"model ready: {self._engine_info}")
        self._applied_settings = s
        self._pairer = ApproximateTimePairer(slop=s.sync.slop, queue_size=s.sync.queue_size,
                                             depth_timeout=s.sync.depth_timeout)
        self._slot: LatestSlot[FramePair] = LatestSlot()
        self._camera_info: CameraInfo | None = None
        self._last_rgb_stamp: float | None = None
        self._rgb_only = False
        self._reset_requested = threading.Event()

        camera_qos = qos_profile_sensor_data if not s.qos.reliable else QoSProfile(
            depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self._inputs = {
            "rgb/image": self.create_subscription(Image, "rgb/image", self._on_rgb, camera_qos),
            "depth/image": self.create_subscription(Image, "depth/image", self._on_depth, camera_qos),
            "rgb/camera_info": self.create_subscription(CameraInfo, "rgb/camera_info", self._on_camera_info,
                                                        camera_qos),
        }
        out_qos = QoSProfile(depth=2)  # reliable: a best-effort subscriber (RViz) connects too
        self._mask_pub = self.create_publisher(Image, "saliency/mask", out_qos)
        self._probability_pub = self.create_publisher(Image, "saliency/probability", out_qos)
        self._objects_pub = self.create_publisher(SalientObjectArray, "saliency/objects", out_qos)
        self._markers_pub = self.create_publisher(MarkerArray, "saliency/markers", out_qos)
        self._overlay_pub = self.create_publisher(Image, "saliency/overlay", out_qos)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.create_timer(s.diagnostics.period, self._publish_diagnostics)

        self._worker = threading.Thread(target=self._run_worker, name="m4sam_inference", daemon=True)
        self._worker.start()

    # -- callbacks: check cheap header fields, enqueue, return ----------------------------

    def _on_rgb(self, msg: Image) -> None:
        self._monitor.rgb.tick()
        if not self._acceptable(msg, "colour", "rgb/image"):
            return
        stamp = stamp_seconds(msg.header.stamp)
        if self._last_rgb_stamp is not None and stamp < self._last_rgb_stamp:
            self._problem("stamp_backwards", f"RGB stamp went backwards ({self._last_rgb_stamp:.3f} -> {stamp:.3f} s, "
                          "bag loop or clock reset?): pairing restarted, memory bank re-initialised")
        self._last_rgb_stamp = stamp
        self._note_mode()
        self._offer(self._pairer.add_rgb(stamp, msg))

    def _on_depth(self, msg: Image) -> None:
        self._monitor.depth.tick()
        if not self._acceptable(msg, "depth", "depth/image"):
            return
        self._offer(self._pairer.add_depth(stamp_seconds(msg.header.stamp), msg))

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._monitor.camera_info.tick()
        self._camera_info = msg

    def _acceptable(self, msg: Image, role: str, topic: str) -> bool:
        try:
            check_image(msg, role)
        except UnsupportedEncodingError as exc:
            self._problem("encoding", f"{topic}: {exc}; frame dropped")
            return False
        except ImageLayoutError as exc:
            self._problem("image_layout", f"{topic}: {exc}; frame dropped")
            return False
        return True

    def _offer(self, pair: FramePair | None) -> None:
        if pair is not None:
            self._monitor.pairs.tick()
            self._slot.put(pair)

    def _note_mode(self) -> None:
        rgb_only = not self._pairer.depth_available
        if rgb_only != self._rgb_only:
            self._rgb_only = rgb_only
            if rgb_only:
                self._problem("depth_missing", f"no depth for {self._settings.sync.depth_timeout:.2f} s: "
                              "running RGB-only until depth returns")
            else:
                self.get_logger().info("depth is back: running RGB-D")

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self._reset_requested.set()  # the worker owns the tracker; it resets before the next frame
        response.success = True
        response.message = "memory bank cleared: the next frame re-initialises it"
        self.get_logger().info("reset requested: memory bank will be re-initialised on the next frame")
        return response

    def _on_settings(self, settings: NodeParameters) -> None:
        """A validated run-time parameter change: pairing applies now, the worker before its next frame."""
        self._pairer.configure(slop=settings.sync.slop, queue_size=settings.sync.queue_size,
                               depth_timeout=settings.sync.depth_timeout)
        self._settings = settings

    # -- worker thread -------------------------------------------------------------------

    def _run_worker(self) -> None:
        while True:
            pair = self._slot.get(timeout=0.5)
            if pair is None:
                if self._slot.closed:
                    return
                continue
            try:
                self._process(pair)
            except Exception as exc:  # one bad frame must not end the worker
                if not self.context.ok():
                    return  # shutting down: publishers are gone, nothing to report
                self._problem("inference", f"{type(exc).__name__}: {exc}")
                self.get_logger().debug(traceback.format_exc())

    def _process(self, pair: FramePair) -> None:
        settings = self._settings
        frame = prepare_frame(pair.rgb, pair.depth, self._camera_info)
        for note in frame.notes:
            self._problem(note.kind, note.message, warning=note.warning)
        if self._reset_requested.is_set():
            self._reset_requested.clear()
            self._tracker.reset()
        if settings is not self._applied_settings:
            self._tracker.set_postprocess(postprocess_config(settings))  # same thread as step()
            self._applied_settings = settings

        started = time.perf_counter()
        if settings.engine.simulated_latency_ms > 0:
            time.sleep(settings.engine.simulated_latency_ms * 1e-3)
        result = self._tracker.step(frame.rgb, frame.depth, frame.stamp, frame.intrinsics)
        inference_ms = (time.perf_counter() - started) * 1e3

        header: Header = pair.rgb.header
        self._mask_pub.publish(image_msg(header, result.mask * 255, "mono8"))
        if settings.publish_probability:
            self._probability_pub.publish(image_msg(header, result.probability, "32FC1"))
        self._objects_pub.publish(objects_msg(header, result.objects))
        self._markers_pub.publish(build_markers(header, result.objects))
        overlay = self._overlay_pub.get_subscription_count() > 0
        if overlay:
            bgr = render_overlay(frame.rgb, result.mask, result.objects, settings.overlay_alpha)
            self._overlay_pub.publish(image_msg(header, bgr, "bgr8"))
        if result.reinitialized:
            self.get_logger().info(f"memory bank re-initialised ({result.reinitialized})",
                                   throttle_duration_sec=THROTTLE_S)
        age_s = self.get_clock().now().nanoseconds * 1e-9 - frame.stamp
        self._monitor.record_result(inference_ms=inference_ms, age_s=age_s, memory_frames=result.memory_frames,
                                    used_depth=result.used_depth, reinitialized=result.reinitialized,
                                    overlay=overlay)

    # -- reporting -----------------------------------------------------------------------

    def _problem(self, kind: str, message: str, warning: bool = True) -> None:
        """Count for diagnostics and log, throttled per kind (each kind has its own child logger)."""
        self._monitor.problems.record(kind, message, warning)
        with self._log_lock:
            logger = self._loggers.get(kind)
            if logger is None:
                logger = self._loggers[kind] = self.get_logger().get_child(kind)
            if warning:
                logger.warning(message, throttle_duration_sec=THROTTLE_S)
            else:
                logger.info(message, throttle_duration_sec=THROTTLE_S)

    def _input_hints(self) -> list[str]:
        """Explain silent inputs that do have publishers (QoS mismatch is the usual cause)."""
        hints = []
        meters = {"rgb/image": self._monitor.rgb, "depth/image": self._monitor.depth,
                  "rgb/camera_info": self._monitor.camera_info}
        for name, subscription in self._inputs.items():
            since = meters[name].seconds_since_last()
            if since is not None and since < INPUT_SILENT_S:
                continue
            publishers = self.get_publishers_info_by_topic(subscription.topic_name)
            if not publishers:
                hints.append(f"{subscription.topic_name}: no publisher (check remapping)")
                continue
            best_effort = [p for p in publishers if p.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT]
            if best_effort and self._settings.qos.reliable:
                hints.append(f"{subscription.topic_name}: {len(best_effort)} BEST_EFFORT publisher(s) cannot reach "
                             "this RELIABLE subscription; set qos.reliable false")
            else:
                hints.append(f"{subscription.topic_name}: {len(publishers)} publisher(s) but no message "
                             f"for {INPUT_SILENT_S:.0f} s")
        return hints

    def _publish_diagnostics(self) -> None:
        stats = self._pairer.stats
        queued_rgb, queued_depth = self._pairer.queued
        extra = {
            "pairs_dropped": self._slot.dropped,
            "pairs_total": self._slot.put_count,
            "unmatched_rgb": stats.unmatched_rgb,
            "unmatched_depth": stats.unmatched_depth,
            "rgb_only_frames": stats.rgb_only,
            "stamp_resets": stats.stamp_resets,
            "queued_rgb": queued_rgb,
            "queued_depth": queued_depth,
            "engine": self._engine_info,
        }
        status = self._monitor.status(name=f"{self.get_fully_qualified_name()}: pipeline",
                                      hardware_id=self._engine_info, rgb_only=self._rgb_only, extra=extra,
                                      hints=self._input_hints())
        self._diagnostics_pub.publish(DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()),
                                                      status=[status]))

    def stop(self) -> None:
        """Stop the worker (finishing the frame in progress) before the node goes away."""
        self._slot.close()
        self._worker.join(timeout=WORKER_JOIN_S)


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    node: SaliencyNode | None = None
    code = 0
    try:
        node = SaliencyNode()
        rclpy.spin(node)
    except StartupError as exc:
        rclpy.logging.get_logger(NODE_NAME).fatal(str(exc))
        code = 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.stop()
            node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
