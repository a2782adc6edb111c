"""The saliency node end to end: its own process, real rclpy over DDS, the tiny model.

A test camera in this process publishes synthetic RGB-D video (m4sam_ros.learn.synthetic)
with camera_info at ~15 Hz; the checks read the node's outputs, /diagnostics, its reset
service and its parameter services. One node process is shared by the non-destructive
checks (namespace /shared); start-up failures and shutdown get their own processes.
The node's helper modules are tested in-process by test_ros_*.py.
"""
from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import Image, PointCloud2
from std_msgs.msg import Header
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker

from helpers import (FRAME_ID, HEIGHT, TEST_MODEL, WIDTH, NodeProcess, Probe, Received, SyntheticCamera, stamp_ns,
                     wait_until)
from m4sam_ros.encodings import decode_image
from m4sam_ros.ros.conversions import image_msg

pytestmark = pytest.mark.slow  # every test here starts node processes


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


def _advertised(ros, topic: str) -> bool:
    return ros.count_publishers(topic) > 0


def test_runtime_threshold_and_probability(healthy, ros):
    _, _, probe = healthy
    assert not _advertised(ros, "/shared/saliency/probability"), "advertised while publish_probability is false"
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
    wait_until(lambda: not _advertised(ros, "/shared/saliency/probability"), 10, "saliency/probability to go away")


def test_points_cloud_of_the_salient_pixels_while_subscribed(healthy, ros):
    _, camera, probe = healthy
    clouds = Received()
    subscription = ros.create_subscription(PointCloud2, "/shared/saliency/points", clouds.add, 10)
    try:
        cloud = wait_until(lambda: next((c for c in reversed([c for _, c in clouds.items]) if c.width > 0), None), 20,
                           "a point cloud with points")
        assert camera.was_sent(cloud.header) and cloud.point_step == 16 and cloud.height == 1
        xyz = np.frombuffer(bytes(cloud.data), np.float32).reshape(-1, 4)[:, :3]
        assert np.isfinite(xyz).all() and (xyz[:, 2] > 0).all()
    finally:
        ros.destroy_subscription(subscription)


def test_a_prompt_mask_reinitialises_the_memory_from_it(healthy, ros):
    _, _, probe = healthy
    before = probe.wait_diag(lambda d: int(d["frames_processed"]) > 0, 10, "frames processed")
    publisher = ros.create_publisher(Image, "/shared/saliency/prompt", 2)
    try:
        mask = np.zeros((HEIGHT // 2, WIDTH // 2), np.uint8)  # another size than the RGB image: scaled
        mask[10:30, 20:40] = 255
        wait_until(lambda: publisher.get_subscription_count() > 0, 10, "the node to subscribe saliency/prompt")
        publisher.publish(image_msg(Header(frame_id=FRAME_ID), mask, "mono8"))
        probe.wait_diag(lambda d: d["last_reinit"] == "prompt" and int(d["reinit_count"]) > int(before["reinit_count"]),
                        10, "a re-initialisation from the prompt")
    finally:
        ros.destroy_publisher(publisher)


def test_zero_shot_initialisation_shows_its_candidates_and_says_which_rule_chose(healthy, ros):
    _, camera, probe = healthy
    views = Received()
    subscription = ros.create_subscription(Image, "/shared/saliency/candidates", views.add, 10)
    try:
        wait_until(lambda: subscription.get_publisher_count() > 0, 10, "the candidates publisher")
        reset_at = time.monotonic()
        response = probe.call(Trigger, "/shared/m4sam_saliency/reset", Trigger.Request())
        assert response.success
        view = wait_until(lambda: next(iter(views.since(reset_at)), None), 15, "a candidates image after the reset")
        assert (view.encoding, view.width, view.height) == ("bgr8", WIDTH, HEIGHT) and camera.was_sent(view.header)
        probe.wait_diag(lambda d: d["last_reinit"] == "reset" and
                        d["last_init_rule"].split(":")[0] in ("geometry", "sam2", "prior"), 10,
                        "the rule of the initial mask in diagnostics", since=reset_at)
    finally:
        ros.destroy_subscription(subscription)


def test_both_streams_pausing_is_not_reported_as_depth_loss(healthy):
    process, camera, probe = healthy
    before = int(probe.diag().get("problems.depth_missing", 0))
    camera.pause(2.0)  # a driver restart or a paused bag: RGB and depth stop together
    probe.wait_masks(3, timeout=15, since=time.monotonic())
    report = probe.wait_diag(lambda d: True, 5, "a status after the pause", since=time.monotonic())
    assert int(report.get("problems.depth_missing", 0)) == before, report
    assert int(report["rgb_only_frames"]) == int(probe.diag()["rgb_only_frames"])


def test_stamps_on_another_clock_give_no_meaningless_age(healthy):
    _, camera, probe = healthy
    camera.stamp_offset_ns = -camera.clock.now().nanoseconds + 1_000_000  # stamps near 0 (a camera without time)
    start = time.monotonic()
    report = probe.wait_diag(lambda d: d["result_age_ms"].startswith("n/a"), 15, "result_age_ms n/a", since=start)
    assert "clock" in report["result_age_ms"]


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
    from m4sam_ros.model.checkpoint import save_adapter
    from m4sam_ros.model.m4sam import build_m4sam

    poisoned = save_adapter(build_m4sam("test", image_size=64), log_dir / "poisoned_adapter.pt")
    payload = torch.load(poisoned, weights_only=True)
    tensor = sorted(payload["state_dict"])[0]
    payload["state_dict"][tensor].view(-1).view(torch.int32)[:2] = -1  # eight 0xFF bytes: a NaN
    torch.save(payload, poisoned)
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
        "nonfinite_adapter": (["model.preset:=test", "model.image_size:=64", f"model.adapter:={poisoned}"],
                              ["non-finite", tensor, str(poisoned)]),
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


def test_weights_that_overflow_give_no_masks_and_an_error_in_diagnostics(ros, log_dir):
    """Finite weights can still overflow: every frame's output is then NaN/inf. The node publishes
    nothing from it, counts it, reports ERROR (not healthy) and keeps serving."""
    from m4sam_ros.model.checkpoint import save_adapter
    from m4sam_ros.model.m4sam import build_m4sam

    model = build_m4sam("test", image_size=64)
    with torch.no_grad():
        for dispatcher in model.adapter.moe_lora:
            dispatcher.rgb.up.weight.fill_(3e38)  # finite, so it loads; the first block's update overflows
    adapter = save_adapter(model, log_dir / "overflowing_adapter.pt")
    namespace = "/overflow"
    process = NodeProcess(log_dir, namespace, *TEST_MODEL, f"model.adapter:={adapter}", "diagnostics.period:=0.5")
    probe = Probe(ros, namespace)
    camera = SyntheticCamera(ros, namespace, QoSProfile(depth=5))
    try:
        report = probe.wait_diag(lambda d: int(d.get("problems.nonfinite_output", 0)) >= 3, 60,
                                 "non-finite outputs counted")
        assert report["level"] == 2 and "not finite" in report["message"], report
        assert probe.mask.last() is None, "a mask was published from a non-finite output"
        assert process.alive(), f"node died:\n{process.output()[-3000:]}"
        assert "not finite" in process.output()
    finally:
        camera.stop()
        process.kill()


@pytest.mark.parametrize("sig,reliable", [(signal.SIGINT, False), (signal.SIGTERM, True)],
                         ids=["SIGINT-best_effort", "SIGTERM-reliable"])
def test_qos_hints_and_clean_shutdown_during_inference(ros, log_dir, sig, reliable):
    """Silent inputs are explained in diagnostics; a signal mid-inference exits 0 without a traceback."""
    namespace = f"/shutdown_{sig.name.lower()}"
    process = NodeProcess(log_dir, namespace, *TEST_MODEL, "engine.simulated_latency_ms:=400.0",
                          f"qos.reliability:={'reliable' if reliable else 'auto'}")
    probe = Probe(ros, namespace)
    cameras = []
    try:
        hint = probe.wait_diag(lambda d: "hint.0" in d, 60, "an input hint before any camera")
        assert f"{namespace}/rgb/image: no publisher" in hint["hint.0"] and hint["level"] == 1
        if reliable:  # a BEST_EFFORT camera cannot reach a RELIABLE subscription: say so
            cameras.append(SyntheticCamera(ros, namespace, qos_profile_sensor_data))
            probe.wait_diag(lambda d: any("BEST_EFFORT" in v and "qos.reliability auto" in v
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
