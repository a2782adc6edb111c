"""`m4sam bench` on the tiny preset: JSON and PNG with per-stage latency, FPS, memory, the SAM2
peer and stream-length scaling."""
import argparse
import json

import pytest

from m4sam_ros.tools import bench
from m4sam_ros.tools.sam2_reference import PEER_STAGES
from m4sam_ros.tracker import STAGES


def _run(tmp_path, *extra: str, backend: str = "pytorch") -> dict:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--preset", "test", "--image-size", "64", "--frames", "24", "--warmup", "2",
                              "--camera", "80x60", "--backend", backend, "--output-dir", str(tmp_path),
                              "--cache-dir", str(tmp_path / "cache"), *extra])
    assert bench.run(args) == 0
    assert (tmp_path / f"bench-test-64-{backend}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return json.loads((tmp_path / f"bench-test-64-{backend}.json").read_text())


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
    assert "ours / SAM2: FPS ratio" in capsys.readouterr().out


def test_bench_runs_the_sam_daq_variant_with_its_constant_query_state(tmp_path):
    report = _run(tmp_path, "--adapter-kind", "sam_daq", "--mode", "learned", "--no-peer")
    ours = report["m4sam"]
    assert report["config"]["adapter"] == "sam_daq" and ours["name"].startswith("SAM-DAQ learned (")
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


def test_bench_reports_parity_and_engine_options(tmp_path, caplog):
    """--parity-frames tracks the first frames on the engines and on FP32 eager calls; --cuda-graphs
    on this CPU is refused with a warning and the run goes on eagerly, so parity is exact."""
    report = _run(tmp_path, "--no-peer", "--cuda-graphs", "--parity-frames", "3")
    config, parity = report["config"], report["parity"]
    assert config["cuda_graphs"] is False and config["compile"] is False and config["setup_s"] == {}
    assert config["encoder_engine"] == "pytorch on cpu (fp32)" and config["mode"] == "zero_shot"
    assert "CUDA graphs need a CUDA device" in caplog.text
    assert parity["frames"] == 3 and parity["reference"] == "pytorch on cpu (fp32, eager)"
    assert parity["max_abs_probability"] == 0.0 and parity["min_mask_iou"] == 1.0


def test_bench_records_the_machine_and_threads(tmp_path, capsys):
    report = _run(tmp_path, "--no-peer", "--threads", "1")
    config = report["config"]
    assert config["threads_requested"] == 1 and config["torch_threads"] == 1 and config["cpu_count"] >= 1
    assert len(config["load_average_start"]) == len(config["load_average"]) == 3
    assert report["memory_sweep"] is None
    assert "load average" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_sweeps_bank_sizes_on_exported_memory_attention(tmp_path, capsys):
    """One encoder, a memory-attention graph per bank size, all on the same frames: the report
    and the chart's fourth panel give per-frame cost against num_memory_frames."""
    report = _run(tmp_path, "--no-peer", "--num-memory-frames", "6", "--sweep-memory-frames", "1", "3",
                  backend="onnxruntime")
    sweep = report["memory_sweep"]
    assert [point["num_memory_frames"] for point in sweep] == [1, 3, 6]
    for point in sweep:
        assert point["memory_attention_ms"]["p95"] >= point["memory_attention_ms"]["median"] > 0
        assert point["end_to_end_ms"]["median"] > point["memory_attention_ms"]["median"]
    assert sweep[-1]["end_to_end_ms"] == report["m4sam"]["end_to_end_ms"]
    assert len(list((tmp_path / "cache").glob("memory_attention-*.onnx"))) == 3
    assert len(list((tmp_path / "cache").glob("encoder_sam2-*.onnx"))) == 1
    assert "num_memory_frames 1: memory attention median" in capsys.readouterr().out
