"""The managed (lifecycle) node ``m4sam_saliency``: RGB-D frames in, saliency mask / objects / markers out.

Lifecycle, as nav2 and yolo_ros users expect: configure = read parameters, load and check
the weights, export/build the engines (minutes for a first TensorRT build); activate =
subscribe and publish; deactivate; cleanup; shutdown. By default the node brings itself to
active (``lifecycle.autostart``), so ``ros2 launch``/``ros2 run`` just work; with autostart
false it waits, unconfigured, for a lifecycle manager. An error in configure goes through
ErrorProcessing back to unconfigured, with the reason logged and in /diagnostics.

Glue only: callbacks check cheap header fields and enqueue; pairing lives in
``m4sam_ros.pairing``, decoding in ``frames``/``conversions``, the model in the tracker,
RViz views in ``markers``/``overlay``/``points``. One worker thread runs inference on the
*latest* RGB/depth pair; older pairs are dropped and counted, so a slow model never builds
latency.

Topics (relative, so a namespace prefixes them; in the root namespace ``/saliency/...``):
subscribes ``rgb/image``, ``depth/image``, ``rgb/camera_info`` and ``saliency/prompt`` (a mono8
mask to track from); publishes ``saliency/mask``, ``saliency/probability`` (only with
``publish_probability``), ``saliency/objects``, ``saliency/markers``, ``saliency/overlay`` and
``saliency/points`` (both computed only while subscribed), ``saliency/candidates`` (zero-shot
(re-)initialisations: the RGB-D candidates and the chosen first mask, while subscribed) and
``/diagnostics``. Service
``~/reset`` (std_srvs/Trigger) clears the memory bank.
"""
from __future__ import annotations

import threading
import time
import traceback

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.executors import SingleThreadedExecutor
from rclpy.impl.rcutils_logger import RcutilsLogger
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from m4sam_ros.depth import depth_to_metres
from m4sam_ros.encodings import ImageLayoutError, UnsupportedEncodingError
from m4sam_ros.msg import SalientObjectArray
from m4sam_ros.pairing import ApproximateTimePairer, FramePair, LatestSlot
from m4sam_ros.postprocess import salient_points
from m4sam_ros.ros.conversions import check_image, image_msg, objects_msg, stamp_seconds
from m4sam_ros.ros.diagnostics import INPUT_SILENT_S, PipelineMonitor
from m4sam_ros.ros.frames import PreparedFrame, prepare_frame
from m4sam_ros.ros.log_bridge import bridge_python_logging
from m4sam_ros.ros.markers import build_markers
from m4sam_ros.ros.model_loader import StartupError, build_tracker, postprocess_config
from m4sam_ros.ros.overlay import draw_candidates, render_candidates, render_overlay
from m4sam_ros.ros.parameters import NodeParameters, ParameterError, declare_all
from m4sam_ros.ros.points import points_msg
from m4sam_ros.ros.process import StopSignals
from m4sam_ros.ros.qos import camera_qos
from m4sam_ros.tracker import NonFiniteOutput, SaliencyResult, SaliencyTracker

NODE_NAME = "m4sam_saliency"
THROTTLE_S = 5.0
WORKER_JOIN_S = 1.0  # an orderly stop waits this long for the frame in progress
# a stamp further than this from the node's clock is on another clock (0, a sim time, a bag
# replayed without --clock): its age would be meaningless
PLAUSIBLE_AGE_S = 3600.0
CAMERA_INPUTS = ("rgb/image", "depth/image", "rgb/camera_info")
# image_transport's names: <base topic>/<transport>, the base topic remapped first
TRANSPORT_SUFFIX = {"raw": "", "compressed": "/compressed", "compressedDepth": "/compressedDepth"}


class SaliencyNode(LifecycleNode):
    """Parameters, lifecycle, subscriptions, publishers and the inference worker (module docstring)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        try:
            self.settings: NodeParameters = declare_all(self, on_change=self._on_settings)
        except ParameterError as exc:
            raise StartupError(str(exc)) from None
        bridge_python_logging(self.get_logger())
        self._loggers: dict[str, RcutilsLogger] = {}
        self._log_lock = threading.Lock()
        self._monitor = PipelineMonitor()
        self.phase = "unconfigured"  # unconfigured | configuring | inactive | active | finalized
        self._error = ""  # why the last configure failed
        self._tracker: SaliencyTracker | None = None
        self._engine_info = "not configured"
        self._applied_settings = self.settings
        s = self.settings
        self._pairer = ApproximateTimePairer(slop=s.sync.slop, queue_size=s.sync.queue_size,
                                             depth_timeout=s.sync.depth_timeout)
        self._slot: LatestSlot[FramePair] = LatestSlot()
        self._worker: threading.Thread | None = None
        self._camera_info: CameraInfo | None = None
        self._last_rgb_stamp: float | None = None
        self._rgb_only = False
        self._reset_requested = threading.Event()
        self._prompt: Image | None = None  # the latest mask to track from, taken by the worker
        self._prompt_lock = threading.Lock()
        self._inputs: dict = {}
        self._unsettled_qos: set[str] = set()
        self._outputs: dict = {}
        self._nonfinite = False  # the last frame's output was NaN/inf: ERROR until a good frame
        self.on_finalized = lambda: None  # the process ends when the node is shut down (set by ``run``)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(s.diagnostics.period, self._publish_diagnostics)
        self.create_service(Trigger, "~/reset", self._on_reset)

    # -- lifecycle ----------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.phase, self._error = "configuring", ""
        try:
            self._tracker, self._engine_info = build_tracker(self.settings)
        except StartupError as exc:
            self._error = str(exc)
            self.get_logger().error(f"configure failed: {exc}")
            self.phase = "unconfigured"
            return TransitionCallbackReturn.ERROR
        self._applied_settings = self.settings
        out_qos = QoSProfile(depth=2)  # reliable: a best-effort subscriber (RViz) connects too
        self._outputs = {
            "mask": self.create_lifecycle_publisher(Image, "saliency/mask", out_qos),
            "objects": self.create_lifecycle_publisher(SalientObjectArray, "saliency/objects", out_qos),
            "markers": self.create_lifecycle_publisher(MarkerArray, "saliency/markers", out_qos),
            "overlay": self.create_lifecycle_publisher(Image, "saliency/overlay", out_qos),
            "points": self.create_lifecycle_publisher(PointCloud2, "saliency/points", out_qos),
            "candidates": self.create_lifecycle_publisher(Image, "saliency/candidates", out_qos),
        }
        self._probability_publisher(self.settings.publish_probability)
        self.get_logger().info(f"model ready: {self._engine_info}")
        self.phase = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error processing: {self._error or 'unknown error'}; back to unconfigured")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._slot = LatestSlot()
        self._worker = threading.Thread(target=self._run_worker, name="m4sam_inference", daemon=True)
        self._worker.start()
        for topic in CAMERA_INPUTS:
            self._subscribe(topic)
        self._inputs["saliency/prompt"] = self.create_subscription(Image, "saliency/prompt", self._on_prompt, 2)
        self._qos_timer = self.create_timer(1.0, self._match_qos)
        self.phase = "active"
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_serving()
        self.phase = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        for publisher in self._outputs.values():
            self.destroy_lifecycle_publisher(publisher)
        self._outputs, self._tracker, self._engine_info = {}, None, "not configured"
        self.phase = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_serving()
        self.phase = "finalized"
        self.on_finalized()
        return TransitionCallbackReturn.SUCCESS

    def stop(self) -> None:
        """An orderly stop of the worker (bounded: the frame in progress gets WORKER_JOIN_S)."""
        self._stop_serving()

    def _stop_serving(self) -> None:
        for subscription in self._inputs.values():
            self.destroy_subscription(subscription)
        self._inputs, self._unsettled_qos = {}, set()
        if getattr(self, "_qos_timer", None) is not None:
            self.destroy_timer(self._qos_timer)
            self._qos_timer = None
        self._slot.close()
        if self._worker is not None:
            self._worker.join(timeout=WORKER_JOIN_S)

    @property
    def worker_alive(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    # -- subscriptions ------------------------------------------------------------------

    def _input(self, topic: str) -> tuple[str, type, object]:
        """(resolved topic name, message type, callback) of a camera input and its transport."""
        transports = {"rgb/image": self.settings.input.rgb_transport, "depth/image": self.settings.input.depth_transport}
        transport = transports.get(topic, "raw")
        kind = CameraInfo if topic == "rgb/camera_info" else (Image if transport == "raw" else CompressedImage)
        callback = {"rgb/image": self._on_rgb, "depth/image": self._on_depth, "rgb/camera_info": self._on_camera_info}
        return self.resolve_topic_name(topic) + TRANSPORT_SUFFIX[transport], kind, callback[topic]

    def _subscribe(self, topic: str) -> None:
        """Subscribe a camera topic with the QoS its publishers call for (``ros/qos.py``)."""
        name, kind, callback = self._input(topic)
        qos, why, settled = camera_qos(self.settings.qos.reliability, self.get_publishers_info_by_topic(name))
        if topic in self._inputs:
            self.destroy_subscription(self._inputs[topic])
        self._inputs[topic] = self.create_subscription(kind, name, callback, qos)
        (self._unsettled_qos.discard if settled else self._unsettled_qos.add)(topic)
        self.get_logger().info(f"{name}: {why}")

    def _match_qos(self) -> None:
        """While ``auto`` had no publisher to match, look again; re-subscribe once one is there."""
        for topic in list(self._unsettled_qos):
            if self.get_publishers_info_by_topic(self._input(topic)[0]):
                self._subscribe(topic)

    # -- callbacks: check cheap header fields, enqueue, return ----------------------------

    def _on_rgb(self, msg: Image | CompressedImage) -> None:
        self._monitor.rgb.tick()
        if not self._acceptable(msg, "colour", "rgb/image"):
            return
        stamp = stamp_seconds(msg.header.stamp)
        if self._last_rgb_stamp is not None and stamp < self._last_rgb_stamp:
            self._problem("stamp_backwards", f"RGB stamp went backwards ({self._last_rgb_stamp:.3f} -> {stamp:.3f} s, "
                          "bag loop or clock reset?): pairing restarted, memory bank re-initialised")
        self._last_rgb_stamp = stamp
        self._offer(self._pairer.add_rgb(stamp, msg))
        self._note_mode()

    def _on_depth(self, msg: Image | CompressedImage) -> None:
        self._monitor.depth.tick()
        if not self._acceptable(msg, "depth", "depth/image"):
            return
        self._offer(self._pairer.add_depth(stamp_seconds(msg.header.stamp), msg))

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._monitor.camera_info.tick()
        self._camera_info = msg

    def _on_prompt(self, msg: Image) -> None:
        if msg.encoding != "mono8":
            self._problem("prompt", f"saliency/prompt: encoding {msg.encoding!r}, expected mono8 (a mask, nonzero = "
                          "the object); prompt ignored")
            return
        with self._prompt_lock:
            self._prompt = msg
        self.get_logger().info("prompt received: the memory re-initialises from it on the next frame")

    def _acceptable(self, msg: Image | CompressedImage, role: str, topic: str) -> bool:
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
                self._problem("depth_missing", f"no depth for {self.settings.sync.depth_timeout:.2f} s of RGB frames: "
                              "running RGB-only until depth returns")
            else:
                self.get_logger().info("depth is back: running RGB-D")

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self.phase != "active":
            response.success, response.message = False, f"the node is {self.phase}, not active: nothing to reset"
            return response
        self._reset_requested.set()  # the worker owns the tracker; it resets before the next frame
        response.success = True
        response.message = "memory bank cleared: the next frame re-initialises it"
        self.get_logger().info("reset requested: memory bank will be re-initialised on the next frame")
        return response

    def _on_settings(self, settings: NodeParameters) -> None:
        """A validated run-time parameter change: pairing applies now, the worker before its next frame."""
        self._pairer.configure(slop=settings.sync.slop, queue_size=settings.sync.queue_size,
                               depth_timeout=settings.sync.depth_timeout)
        if self._outputs and settings.publish_probability != self.settings.publish_probability:
            self._probability_publisher(settings.publish_probability)
        self.settings = settings

    def _probability_publisher(self, enabled: bool) -> None:
        """saliency/probability exists only while publish_probability is true."""
        current = self._outputs.pop("probability", None)
        if current is not None and not enabled:
            self.destroy_lifecycle_publisher(current)
        elif enabled:
            publisher = current or self.create_lifecycle_publisher(Image, "saliency/probability", QoSProfile(depth=2))
            if self.phase == "active":
                publisher.on_activate(None)
            self._outputs["probability"] = publisher

    # -- worker thread -------------------------------------------------------------------

    def _run_worker(self) -> None:
        slot = self._slot
        while True:
            pair = slot.get(timeout=0.5)
            if pair is None:
                if slot.closed:
                    return
                continue
            try:
                self._process(pair)
            except NonFiniteOutput as exc:
                self._nonfinite = True
                self._problem("nonfinite_output", str(exc))
            except Exception as exc:  # one bad frame must not end the worker
                if not self.context.ok() or slot.closed:
                    return  # shutting down: publishers are gone, nothing to report
                self._problem("inference", f"{type(exc).__name__}: {exc}")
                self.get_logger().debug(traceback.format_exc())

    def _process(self, pair: FramePair) -> None:
        settings = self.settings
        try:
            frame = prepare_frame(pair.rgb, pair.depth, self._camera_info)
        except (UnsupportedEncodingError, ImageLayoutError) as exc:  # compressed colour that passed its header check
            self._problem("image_decode", f"rgb/image: {exc}; frame dropped")
            return
        for note in frame.notes:
            self._problem(note.kind, note.message, warning=note.warning)
        tracker = self._tracker
        if settings is not self._applied_settings:
            tracker.set_postprocess(postprocess_config(settings))  # same thread as step()
            self._applied_settings = settings
        prompted = self._take_prompt(tracker, frame)
        if not prompted and self._reset_requested.is_set():
            self._reset_requested.clear()
            tracker.reset()

        arrived = time.perf_counter()
        if settings.engine.simulated_latency_ms > 0:
            time.sleep(settings.engine.simulated_latency_ms * 1e-3)
        result = tracker.step(frame.rgb, frame.depth, frame.stamp, frame.intrinsics)
        inference_ms = (time.perf_counter() - arrived) * 1e3
        self._nonfinite = False
        self._publish(pair.rgb.header, frame, result, settings)
        if result.reinitialized == "prompt":  # asked for from outside: always said
            self.get_logger().info("memory bank re-initialised from the prompt mask (saliency/prompt)")
        elif result.reinitialized:  # rclpy binds a throttle to its call site: one site per throttle
            self.get_logger().info(f"memory bank re-initialised ({result.reinitialized})",
                                   throttle_duration_sec=THROTTLE_S)
        age_s = self.get_clock().now().nanoseconds * 1e-9 - frame.stamp
        if result.initialisation is not None:
            self.get_logger().info(f"initial mask: {result.initialisation.rule}", throttle_duration_sec=THROTTLE_S)
        self._monitor.record_result(inference_ms=inference_ms, age_s=age_s if abs(age_s) < PLAUSIBLE_AGE_S else None,
                                    memory_frames=result.memory_frames, used_depth=result.used_depth,
                                    reinitialized=result.reinitialized, overlay="overlay" in self._wanted(),
                                    init_rule=result.initialisation.rule if result.initialisation else None)

    def _take_prompt(self, tracker: SaliencyTracker, frame: PreparedFrame) -> bool:
        """A mask from saliency/prompt re-initialises the memory on this frame."""
        with self._prompt_lock:
            prompt, self._prompt = self._prompt, None
        if prompt is None:
            return False
        try:
            check_image(prompt, "colour")
            mask = np.frombuffer(prompt.data, np.uint8).reshape(prompt.height, prompt.step)[:, :prompt.width]
        except (UnsupportedEncodingError, ImageLayoutError, ValueError) as exc:
            self._problem("prompt", f"saliency/prompt: {exc}; prompt ignored")
            return False
        tracker.reset(initial_mask=mask)  # another size than the RGB image's is scaled by the tracker
        self._reset_requested.clear()
        return True

    def _wanted(self) -> set[str]:
        """Outputs that cost work and are rendered only while someone subscribes."""
        return {name for name in ("overlay", "points", "candidates") if self._outputs[name].get_subscription_count() > 0}

    def _publish(self, header: Header, frame: PreparedFrame, result: SaliencyResult, settings: NodeParameters) -> None:
        out = self._outputs
        out["mask"].publish(image_msg(header, result.mask * 255, "mono8"))
        if "probability" in out:
            out["probability"].publish(image_msg(header, result.probability, "32FC1"))
        out["objects"].publish(objects_msg(header, result.objects))
        out["markers"].publish(build_markers(header, result.objects))
        wanted = self._wanted()
        if "overlay" in wanted:
            bgr = render_overlay(frame.rgb, result.mask, result.objects, settings.overlay_alpha)
            if result.initialisation is not None:  # the frame the memory started from: show how
                draw_candidates(bgr, result.initialisation)
            out["overlay"].publish(image_msg(header, bgr, "bgr8"))
        if "candidates" in wanted and result.initialisation is not None:
            out["candidates"].publish(image_msg(header, render_candidates(frame.rgb, result.initialisation), "bgr8"))
        if "points" in wanted and frame.depth is not None and frame.intrinsics is not None \
                and frame.depth.dtype != np.uint8:
            xyz, rgb = salient_points(result.mask, depth_to_metres(frame.depth), frame.rgb, frame.intrinsics,
                                      settings.points.decimation)
            out["points"].publish(points_msg(header, xyz, rgb))

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
        """Explain silent inputs: no publisher (remapping), or a QoS that cannot connect."""
        hints = []
        meters = {"rgb/image": self._monitor.rgb, "depth/image": self._monitor.depth,
                  "rgb/camera_info": self._monitor.camera_info}
        for name, meter in meters.items():
            since = meter.seconds_since_last()
            if since is not None and since < INPUT_SILENT_S:
                continue
            topic = self._input(name)[0]
            publishers = self.get_publishers_info_by_topic(topic)
            if not publishers:
                hints.append(f"{topic}: no publisher (check remapping)")
                continue
            best_effort = [p for p in publishers if p.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT]
            if best_effort and self.settings.qos.reliability == "reliable":
                hints.append(f"{topic}: {len(best_effort)} BEST_EFFORT publisher(s) cannot reach this RELIABLE "
                             "subscription; set qos.reliability auto or best_effort")
            else:
                hints.append(f"{topic}: {len(publishers)} publisher(s) but no message for {INPUT_SILENT_S:.0f} s")
        return hints

    def _publish_diagnostics(self) -> None:
        name = f"{self.get_fully_qualified_name()}: pipeline"
        if self.phase != "active":
            self._diagnostics_pub.publish(self._lifecycle_status(name))
            return
        stats = self._pairer.stats
        queued_rgb, queued_depth = self._pairer.queued
        extra = {
            "lifecycle_state": self.phase,
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
        status = self._monitor.status(name=name, hardware_id=self._engine_info, rgb_only=self._rgb_only, extra=extra,
                                      hints=self._input_hints(), nonfinite=self._nonfinite)
        self._diagnostics_pub.publish(DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()),
                                                      status=[status]))

    def _lifecycle_status(self, name: str) -> DiagnosticArray:
        """Outside the active state: which state, and why when configure failed."""
        messages = {"configuring": "configuring: loading the model and building engines",
                    "inactive": "inactive: configured, waiting for activation",
                    "finalized": "finalized"}
        if self._error:
            level, message = DiagnosticStatus.ERROR, f"unconfigured: configure failed: {self._error}"
        else:
            level, message = DiagnosticStatus.WARN, messages.get(self.phase, f"{self.phase}: waiting for configure")
        status = DiagnosticStatus(level=level, name=name, hardware_id=self._engine_info, message=message,
                                  values=[KeyValue(key="lifecycle_state", value=self.phase),
                                          KeyValue(key="last_error", value=self._error)])
        return DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()), status=[status])


def run(stop: StopSignals, args: list[str] | None = None) -> int:
    """Create the node, bring it up (unless a lifecycle manager will), serve until told to stop."""
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = SaliencyNode()
    except StartupError as exc:
        rclpy.logging.get_logger(NODE_NAME).fatal(str(exc))
        rclpy.try_shutdown()
        return 1
    stop.graceful_when(lambda: node.phase not in ("configuring",))
    node.on_finalized = stop.request
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, name="m4sam_executor", daemon=True)
    spinner.start()
    if node.settings.lifecycle.autostart:
        threading.Thread(target=_autostart, args=(node, stop), name="m4sam_autostart", daemon=True).start()
    stop.wait()
    node.stop()
    executor.shutdown(timeout_sec=0.5)
    spinner.join(timeout=0.5)
    node.destroy_node()
    rclpy.try_shutdown()
    return stop.code


def _autostart(node: SaliencyNode, stop: StopSignals) -> None:
    """configure, then activate; a failed configure ends the process with exit code 1 (there is
    no lifecycle manager to retry it)."""
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        node.get_logger().fatal(f"could not configure: {node._error}")
        stop.request(1)
        return
    if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
        stop.request(1)
