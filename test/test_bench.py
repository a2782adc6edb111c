"""`m4sam bench` on the tiny preset: JSON and PNG with per-stage latency, FPS, memory, the SAM2
peer and stream-length scaling."""
import argparse
import json

import pytest

from m4sam_ros.tools import bench
from m4sam_ros.tools.sam2_reference import PEER_STAGES
from m4sam_ros.tracker import STAGES


def _run(tmp_path, *extra: str) -> dict:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--preset", "test", "--image-size", "64", "--frames", "24", "--warmup", "2",
                              "--camera", "80x60", "--backend", "pytorch", "--output-dir", str(tmp_path), *extra])
    assert bench.run(args) == 0
    assert (tmp_path / "bench-test-64-pytorch.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return json.loads((tmp_path / "bench-test-64-pytorch.json").read_text())


def test_bench_reports_stages_fps_memory_peer_and_scaling(tmp_path, capsys):
    report = _run(tmp_path)
    ours, peer = report["m4sam"], report["sam2"]
    assert set(ours["stages_ms"]) == {"image_conversion", *STAGES}
    assert set(peer["stages_ms"]) == {"image_conversion", *PEER_STAGES}
    for run in (ours, peer):
        assert len(run["per_frame_ms"]) == len(run["state_mib_per_frame"]) == 24
        assert all(s["p95"] >= s["median"] >= 0 for s in run["stages_ms"].values())
        assert run["fps"] == pytest.approx(1e3 / run["end_to_end_ms"]["median"])
        assert [p["frame"] for p in run["scaling"]] == [10]  # 100 and 1000 lie beyond --frames 24
        assert run["scaling"][0]["frame_ms"] > 0 and run["scaling"][0]["state_mib"] > 0
    memory = report["memory"]
    assert [p["frame"] for p in memory["checkpoints"]] == [10] and memory["checkpoints"][0]["rss_mib"] > 0
    assert memory["peak_rss_mib"] >= memory["checkpoints"][0]["rss_mib"] * 0.99
    assert report["config"]["backend"] == "pytorch" and report["config"]["frames"] == 24
    # the bounded bank stops growing once full (16 pointers, 7 spatial memories); SAM2 keeps every frame
    assert ours["state_mib_per_frame"][-1] == ours["state_mib_per_frame"][17]
    assert peer["state_mib_per_frame"][-1] > peer["state_mib_per_frame"][17] > peer["state_mib_per_frame"][1]
    assert report["ratio"]["fps"] == pytest.approx(ours["fps"] / peer["fps"])
    assert "M4-SAM / SAM2: FPS ratio" in capsys.readouterr().out


def test_bench_runs_the_sam_daq_variant_with_its_constant_query_state(tmp_path):
    report = _run(tmp_path, "--adapter-kind", "sam_daq", "--mode", "learned", "--no-peer")
    ours = report["m4sam"]
    assert report["config"]["adapter"] == "sam_daq" and "learned (sam_daq, " in ours["name"]
    assert len(set(ours["state_mib_per_frame"])) == 1  # one query tensor from the first frame on


def test_bench_without_peer_and_bad_arguments(tmp_path):
    report = _run(tmp_path, "--no-peer")
    assert report["sam2"] is None and report["ratio"] is None
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    for bad, message in ((["--camera", "640"], "WIDTHxHEIGHT"), (["--frames", "1"], "--frames"),
                         (["--warmup", "30"], "--warmup")):
        with pytest.raises(ValueError, match=message):
            bench.run(parser.parse_args(["--image-size", "64", "--frames", "24", *bad]))
