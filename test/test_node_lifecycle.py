"""The node in the field: a managed lifecycle, stops at any moment, QoS matched to the camera.

Each test starts node processes of its own (real rclpy over DDS, the tiny model)."""
from __future__ import annotations

import signal
import time

import pytest
import torch
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

from helpers import TEST_MODEL, NodeProcess, Probe, SyntheticCamera, wait_until
from m4sam_ros.engines.cache import ArtifactCache

pytestmark = pytest.mark.slow
STOP_WITHIN_S = 2.0


def _state(probe: Probe, namespace: str) -> str:
    return probe.call(GetState, f"{namespace}/m4sam_saliency/get_state", GetState.Request(), timeout=60).current_state.label


def _transition(probe: Probe, namespace: str, transition: int) -> bool:
    request = ChangeState.Request(transition=Transition(id=transition))
    return probe.call(ChangeState, f"{namespace}/m4sam_saliency/change_state", request, timeout=60).success


def _clean_exit(process: NodeProcess, code: int, seconds: float, what: str) -> None:
    output = process.output()
    assert code == 0, f"{what}: exit code {code}\n{output[-3000:]}"
    assert seconds < STOP_WITHIN_S, f"{what}: took {seconds:.1f} s to stop\n{output[-3000:]}"
    assert "Traceback" not in output and "context is invalid" not in output, f"{what}:\n{output[-3000:]}"


def test_managed_node_waits_for_a_lifecycle_manager_then_serves(ros, log_dir):
    namespace = "/managed"
    process = NodeProcess(log_dir, namespace, *TEST_MODEL, "lifecycle.autostart:=false")
    probe = Probe(ros, namespace)
    camera = SyntheticCamera(ros, namespace, QoSProfile(depth=5))
    try:
        assert _state(probe, namespace) == "unconfigured"
        waiting = probe.wait_diag(lambda d: d["lifecycle_state"] == "unconfigured", 20, "diagnostics while unconfigured")
        assert waiting["level"] == 1 and "waiting for configure" in waiting["message"]
        time.sleep(1.0)
        assert probe.mask.last() is None, "an unconfigured node must not publish"
        assert _transition(probe, namespace, Transition.TRANSITION_CONFIGURE)
        assert _state(probe, namespace) == "inactive"
        time.sleep(1.0)
        assert probe.mask.last() is None, "an inactive node must not publish"
        assert _transition(probe, namespace, Transition.TRANSITION_ACTIVATE)
        probe.wait_masks(3, timeout=20, since=time.monotonic())
        assert _transition(probe, namespace, Transition.TRANSITION_DEACTIVATE)
        stopped = time.monotonic() + 0.5
        time.sleep(1.5)
        assert not probe.mask.since(stopped), "deactivated, yet masks keep coming"
        assert _transition(probe, namespace, Transition.TRANSITION_CLEANUP)
        assert _state(probe, namespace) == "unconfigured"
        assert _transition(probe, namespace, Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
        code = process.wait(timeout=10)  # finalized: the process ends by itself
        assert code == 0 and "Traceback" not in process.output(), process.output()[-3000:]
    finally:
        camera.stop()
        process.kill()


def test_configure_error_goes_through_error_processing_with_its_reason(ros, log_dir, tmp_path):
    namespace = "/managed_error"
    missing = tmp_path / "sam2.1_hiera_tiny.pt"
    process = NodeProcess(log_dir, namespace, "model.preset:=hiera_t", f"model.sam2_checkpoint:={missing}",
                          "lifecycle.autostart:=false")
    probe = Probe(ros, namespace)
    try:
        assert not _transition(probe, namespace, Transition.TRANSITION_CONFIGURE)
        assert _state(probe, namespace) == "unconfigured" and process.alive()
        report = probe.wait_diag(lambda d: d["level"] == 2, 10, "an ERROR status with the reason")
        assert str(missing) in report["message"] and "model.sam2_checkpoint" in report["message"]
        output = process.output()
        assert "error processing" in output and "Traceback" not in output
    finally:
        process.kill()


def test_stop_signals_during_import_end_the_process_at_once(log_dir):
    for sig in (signal.SIGTERM, signal.SIGINT):
        process = NodeProcess(log_dir, f"/import_{sig.name.lower()}", *TEST_MODEL)
        try:
            wait_until(process.handles_stop_signals, 30, "the node's signal handling")
            _clean_exit(process, *process.stop_and_time(sig), f"{sig.name} during import")
        finally:
            process.kill()


def test_sigterm_during_an_onnx_export_ends_at_once_and_leaves_no_half_written_file(log_dir, tmp_path):
    """Export of a hiera_t graph takes seconds: SIGTERM in the middle ends the process within 2 s
    (a TensorRT build the same way), and the cache holds only complete files."""
    from m4sam_ros.model.m4sam import build_m4sam

    source = build_m4sam("hiera_t", image_size=256, seed=1)
    checkpoint = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": {k: v for k, v in source.state_dict().items() if k in set(source.frozen_keys())}}, checkpoint)
    del source
    cache = tmp_path / "cache"
    process = NodeProcess(log_dir, "/export_stop", "model.preset:=hiera_t", f"model.sam2_checkpoint:={checkpoint}",
                          "model.image_size:=256", "engine.num_threads:=1", "engine.backend:=onnxruntime",
                          f"engine.cache_dir:={cache}")
    try:
        wait_until(lambda: "exporting encoder_sam2 to ONNX" in process.output() or not process.alive(), 120,
                   "the ONNX export to start")
        time.sleep(0.5)
        _clean_exit(process, *process.stop_and_time(signal.SIGTERM), "SIGTERM during the export")
    finally:
        process.kill()
    leftovers = ArtifactCache(cache).sweep_incomplete()  # the dead process's work in progress, if any
    complete = {p.name for p in cache.iterdir()}
    assert all(name.endswith(".json") or f"{name}.json" in complete for name in complete), (complete, leftovers)


def test_double_ctrl_c_during_inference_still_ends_cleanly(ros, log_dir):
    namespace = "/double_sigint"
    process = NodeProcess(log_dir, namespace, *TEST_MODEL, "engine.simulated_latency_ms:=1500.0")
    probe = Probe(ros, namespace)
    camera = SyntheticCamera(ros, namespace, QoSProfile(depth=5))
    try:
        wait_until(lambda: probe.mask.last() is not None or not process.alive(), 60, "the first mask")
        time.sleep(0.3)  # inside the next (1.5 s) inference
        process.signal(signal.SIGINT)
        time.sleep(0.05)
        _clean_exit(process, *process.stop_and_time(signal.SIGINT), "double SIGINT")
    finally:
        camera.stop()
        process.kill()


@pytest.mark.parametrize("reliability", [ReliabilityPolicy.RELIABLE, ReliabilityPolicy.BEST_EFFORT],
                         ids=["reliable_camera", "best_effort_camera"])
def test_auto_qos_matches_the_camera_even_when_it_starts_late(ros, log_dir, reliability):
    namespace = f"/qos_{reliability.name.lower()}"
    process = NodeProcess(log_dir, namespace, *TEST_MODEL)
    probe = Probe(ros, namespace)
    cameras = []
    topic = f"{namespace}/rgb/image"
    try:
        wait_until(lambda: "BEST_EFFORT until a publisher appears" in process.output() or not process.alive(), 60,
                   "the node to subscribe before any camera exists")
        qos = QoSProfile(depth=5) if reliability == ReliabilityPolicy.RELIABLE else qos_profile_sensor_data
        cameras.append(SyntheticCamera(ros, namespace, qos))

        def node_reliability():
            mine = [s for s in ros.get_subscriptions_info_by_topic(topic) if s.node_name == "m4sam_saliency"]
            return mine[0].qos_profile.reliability if len(mine) == 1 else None

        wait_until(lambda: node_reliability() == reliability, 15, f"the node's subscription to become {reliability.name}")
        probe.wait_masks(3, timeout=20, since=time.monotonic())
    finally:
        for camera in cameras:
            camera.stop()
        process.kill()


def test_compressed_colour_and_depth_input(ros, log_dir):
    """input.*_transport: CompressedImage on image_transport's names, derived from the remapped base topics."""
    from sensor_msgs.msg import CompressedImage
    from std_msgs.msg import Header

    from helpers import FRAME_ID, HEIGHT, WIDTH
    from m4sam_ros.compressed import encode_colour, encode_depth
    from m4sam_ros.learn.synthetic import SyntheticConfig, generate_video

    namespace = "/compressed"
    process = NodeProcess(log_dir, namespace, *TEST_MODEL, "input.rgb_transport:=compressed",
                          "input.depth_transport:=compressedDepth")
    probe = Probe(ros, namespace)
    rgb_pub = ros.create_publisher(CompressedImage, f"{namespace}/rgb/image/compressed", QoSProfile(depth=5))
    depth_pub = ros.create_publisher(CompressedImage, f"{namespace}/depth/image/compressedDepth", QoSProfile(depth=5))
    frames = list(generate_video(SyntheticConfig(height=HEIGHT, width=WIDTH, frames=10, seed=4)))
    try:
        wait_until(lambda: rgb_pub.get_subscription_count() and depth_pub.get_subscription_count(), 60,
                   "the node to subscribe the compressed topics")
        start = time.monotonic()
        for index in range(40):
            frame = frames[index % len(frames)]
            header = Header(stamp=ros.get_clock().now().to_msg(), frame_id=FRAME_ID)
            colour_format, colour = encode_colour(frame.rgb)
            depth_format, depth = encode_depth(frame.depth_mm)
            rgb_pub.publish(CompressedImage(header=header, format=colour_format, data=colour))
            depth_pub.publish(CompressedImage(header=header, format=depth_format, data=depth))
            time.sleep(1 / 15)
            if len(probe.mask.since(start)) >= 3:
                break
        masks = probe.wait_masks(3, timeout=10, since=start)
        assert (masks[-1].width, masks[-1].height) == (WIDTH, HEIGHT)
        report = probe.wait_diag(lambda d: d["last_used_depth"] == "True", 10, "RGB-D from compressed depth")
        assert report["mode"] == "RGB-D"
    finally:
        ros.destroy_publisher(rgb_pub)
        ros.destroy_publisher(depth_pub)
        process.kill()
