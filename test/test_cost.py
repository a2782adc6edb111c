"""`m4sam cost` on the tiny preset: trainable parameters, per-frame GFLOP by stage, training memory,
for both model variants."""
import argparse
import json

import pytest

from m4sam_ros.tools import cost


def _cost(tmp_path, kind: str, *extra: str) -> dict:
    parser = argparse.ArgumentParser()
    cost.add_arguments(parser)
    path = tmp_path / f"{kind}{'-'.join(extra)}.json"
    args = parser.parse_args(["--preset", "test", "--image-size", "64", "--adapter-kind", kind, "--clip-length", "2",
                              "--json", str(path), *extra])
    assert cost.run(args) == 0
    return json.loads(path.read_text())


def test_cost_of_both_variants(tmp_path):
    m4sam, daq = _cost(tmp_path, "moe_lora"), _cost(tmp_path, "sam_daq")
    for report in (m4sam, daq):
        flops = report["gflop_per_frame"]
        assert set(flops) == {"encoder", "memory_attention", "decoder", "memory_encoder", "total"}
        assert all(value > 0 for value in flops.values())
        assert flops["total"] == pytest.approx(sum(v for k, v in flops.items() if k != "total"))
        assert report["training"]["saved_for_backward_mib"] > 0 and report["parameters"]["trainable"] > 0
    # QTM's read of the frame replaces SAM2's memory attention over the bank
    assert daq["gflop_per_frame"]["memory_attention"] < m4sam["gflop_per_frame"]["memory_attention"]
    through = _cost(tmp_path, "sam_daq", "--through-frozen-trunk")
    assert daq["training"]["saved_for_backward_mib"] < through["training"]["saved_for_backward_mib"]
    with pytest.raises(ValueError, match="no trunk bypass"):
        _cost(tmp_path, "moe_lora", "--through-frozen-trunk")


def test_learned_frame_costs_at_most_1_3x_sam2s_at_hiera_t_512(tmp_path, capsys):
    """The cheaper-encoder target (#13): counted with attention, hiera_t at 512²."""
    parser = argparse.ArgumentParser()
    cost.add_arguments(parser)
    path = tmp_path / "hiera_t.json"
    args = parser.parse_args(["--preset", "hiera_t", "--image-size", "512", "--clip-length", "0", "--json", str(path)])
    assert cost.run(args) == 0
    report = json.loads(path.read_text())
    sam2, learned = report["sam2_gflop_per_frame"], report["gflop_per_frame"]
    assert sam2["encoder"] == pytest.approx(62.8, abs=0.1) and sam2["total"] == pytest.approx(115.0, abs=0.2)
    assert report["learned_over_sam2"] <= 1.3 and learned["memory_attention"] == sam2["memory_attention"]
    parts = report["encoder_parts_gflop"]
    assert parts["adapter.fusion"] < 5 and parts["adapter.depth_levels"] < 2  # the paper's layout: 99 GFLOP of fusion
    assert parts["of which adapter.moe_lora"] < 0.1 * parts["trunk (frozen Hiera; hooks inside)"]
    assert "| **frame** |" in capsys.readouterr().out
