"""What the node reports about its own health (``ros/diagnostics``), on a manual clock."""
from __future__ import annotations

import pytest
from diagnostic_msgs.msg import DiagnosticStatus

from m4sam_ros.ros.diagnostics import PipelineMonitor


class ManualClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


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


def test_non_finite_output_is_an_error_until_a_good_frame():
    clock = ManualClock()
    monitor = PipelineMonitor(clock=clock)
    for _ in range(31):
        monitor.rgb.tick()
        clock.now += 1 / 30
    monitor.record_result(inference_ms=20.0, age_s=0.05, memory_frames=3, used_depth=True,
                          reinitialized=None, overlay=False)
    healthy = dict(name="n", hardware_id="cpu", rgb_only=False, extra={}, hints=[])
    assert monitor.status(**healthy).level == DiagnosticStatus.OK
    status = monitor.status(**healthy, nonfinite=True)
    assert status.level == DiagnosticStatus.ERROR and "not finite" in status.message
    assert monitor.status(**healthy, nonfinite=False).level == DiagnosticStatus.OK
