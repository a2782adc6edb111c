"""`m4sam flops`: the per-frame FLOP counts behind the learned-encoder cost target (#13)."""
from __future__ import annotations

import pytest

from m4sam_ros.cli import main
from m4sam_ros.model.builder import load_m4sam
from m4sam_ros.tools.flops import frame_flops


def test_learned_frame_costs_at_most_1_3x_sam2s_at_hiera_t_512():
    report = frame_flops(load_m4sam("hiera_t", 512))
    gflops = report["gflops"]
    assert gflops["encoder_sam2"] == pytest.approx(62.8, abs=0.1)  # SAM2 Hiera-T, attention counted
    assert report["sam2_frame"] == pytest.approx(115.0, abs=0.2)
    assert report["learned_over_sam2"] <= 1.3
    parts = report["encoder_breakdown"]["encoder"]
    assert parts["adapter.fusion"] < 5 and parts["adapter.depth_levels"] < 2  # was 99 GFLOP of fusion
    # a frame without depth costs what SAM2's encoder costs, plus the small top-down pass
    assert gflops["encoder_sam2"] < gflops["encoder_rgb"] < 1.1 * gflops["encoder_sam2"]


def test_flops_command_prints_the_table(capsys):
    assert main(["flops", "--preset", "test", "--image-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "| **learned frame** |" in out and "× SAM2" in out and "memory attention, every slot" in out
