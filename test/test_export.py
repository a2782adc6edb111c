"""ONNX export of the encoder and the memory attention: valid, static, TensorRT-friendly,
and equal to PyTorch in ONNX Runtime on random and synthetic RGB-D input."""
import argparse

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

from m4sam_ros.tools import export as export_cmd
from m4sam_ros.engines.cache import ArtifactCache
from m4sam_ros.engines.export import FORBIDDEN_OPS, OPSET, ExportError, cached_onnx, check_onnx, export_onnx
from m4sam_ros.engines.graphs import (ENCODER_INPUTS, ENCODER_OUTPUTS, MEMORY_INPUTS, GraphSpec, encoder_sam2_spec,
                                     encoder_spec, memory_attention_spec)
from m4sam_ros.engines.memory_attention import MemorySlots
from m4sam_ros.engines.onnx_passes import share_identical_initializers
from m4sam_ros.engines.onnxruntime_backend import OrtGraph
from m4sam_ros.tools.model_args import default_graphs, model_from_args
from m4sam_ros.tools.parity import encoder_parity, encoder_sam2_parity, memory_attention_parity, worst
from m4sam_ros.model.checkpoint import save_adapter
from m4sam_ros.model.m4sam import build_m4sam

from helpers import randomize_adapters

# float32 ONNX Runtime vs PyTorch: both are float32 on CPU, differences are summation order
TOLERANCE = 1e-5
pytestmark = pytest.mark.slow  # every test here exports graphs


@pytest.fixture(scope="module")
def test_model():
    return randomize_adapters(build_m4sam("test", image_size=128, seed=0))


@pytest.fixture(scope="module")
def exported(test_model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("onnx")
    return {"encoder": export_onnx(encoder_spec(test_model), directory / "encoder.onnx"),
            "encoder_sam2": export_onnx(encoder_sam2_spec(test_model), directory / "encoder_sam2.onnx"),
            "memory_attention": export_onnx(memory_attention_spec(test_model), directory / "memory.onnx")}


def _io(model: onnx.ModelProto, values) -> dict[str, tuple[int, ...]]:
    return {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim) for v in values}


def test_encoder_onnx_is_static_named_opset17_and_checked(exported):
    model = onnx.load(str(exported["encoder"]))
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    assert _io(model, model.graph.input) == {"rgb": (1, 3, 128, 128), "depth": (1, 3, 128, 128),
                                             "modality_present": (1, 2)}
    assert list(_io(model, model.graph.output)) == list(ENCODER_OUTPUTS)
    assert _io(model, model.graph.output)["image_embed"] == (1, 32, 8, 8)
    ops = {node.op_type for node in model.graph.node}
    assert not ops & FORBIDDEN_OPS
    assert "LayerNormalization" in ops  # opset 17's native op: TensorRT can pin it to FP32
    assert {p.key: p.value for p in model.metadata_props}["m4sam_graph"] == "encoder"


def test_sam2_encoder_onnx_takes_rgb_alone(exported):
    model = onnx.load(str(exported["encoder_sam2"]))
    assert _io(model, model.graph.input) == {"rgb": (1, 3, 128, 128)}
    rgbd = onnx.load(str(exported["encoder"]))
    assert _io(model, model.graph.output) == _io(rgbd, rgbd.graph.output)  # same outputs, same shapes
    assert not {node.op_type for node in model.graph.node} & FORBIDDEN_OPS


def test_memory_attention_onnx_has_no_complex_or_tile_ops(exported):
    model = onnx.load(str(exported["memory_attention"]))
    assert list(_io(model, model.graph.input)) == list(MEMORY_INPUTS)
    ops = {node.op_type for node in model.graph.node}
    assert not ops & (FORBIDDEN_OPS | {"Tile"})  # real RoPE; expand/reshape instead of repeat_interleave
    # by default the full bank: 7 spatial slots of 8x8 tokens + 16 pointer slots of 32/16 = 2 tokens
    assert _io(model, model.graph.input)["memory"] == (1, 7 * 64 + 16 * 2, 16)


def test_encoder_parity_random_and_synthetic(test_model, exported):
    rows = encoder_parity(test_model, OrtGraph(exported["encoder"]), frames=3)
    assert {r.inputs for r in rows} == {"random", "synthetic frame 0", "synthetic frame 1",
                                        "synthetic frame 2 (no depth)"}
    assert worst(rows).relative < TOLERANCE


def test_sam2_encoder_parity_random_and_synthetic(test_model, exported):
    rows = encoder_sam2_parity(test_model, OrtGraph(exported["encoder_sam2"]), frames=3)
    assert {r.inputs for r in rows} == {"random", "synthetic frame 0", "synthetic frame 1", "synthetic frame 2"}
    assert {r.graph for r in rows} == {"encoder_sam2"}
    assert worst(rows).relative < TOLERANCE


def test_memory_attention_parity_on_tracker_banks(test_model, exported):
    rows = memory_attention_parity(test_model, OrtGraph(exported["memory_attention"]), frames=4)
    assert [r.inputs.split(",")[0] for r in rows] == ["random", "synthetic frame 1", "synthetic frame 2",
                                                      "synthetic frame 3"]
    assert worst(rows).relative < TOLERANCE


@pytest.mark.parametrize("frames", range(1, 7))
def test_memory_attention_per_slot_count_matches_sam2(test_model, tmp_path, frames):
    """One graph per bank size (1 conditioning + ``frames`` recent frames, 16 pointers): its
    token axis is what the bank holds, and it equals SAM2 on banks the tracker built."""
    slots = MemorySlots.for_bank(test_model, frames)
    path = export_onnx(memory_attention_spec(test_model, slots), tmp_path / "memory.onnx")
    model = onnx.load(str(path))
    assert _io(model, model.graph.input)["memory"] == (1, (1 + frames) * 64 + 16 * 2, 16)
    rows = memory_attention_parity(test_model, OrtGraph(path), frames=frames + 2, num_memory_frames=frames)
    assert rows[-1].inputs.endswith(f"bank of {1 + frames} frames")  # the last bank fills every spatial slot
    assert worst(rows).relative < TOLERANCE


def _initializers(model: onnx.ModelProto) -> list[tuple[tuple[int, ...], int]]:
    return [(tuple(i.dims), onnx.numpy_helper.to_array(i).nbytes) for i in model.graph.initializer]


def test_memory_attention_holds_one_frame_of_rope_tables_whatever_its_slots(test_model, tmp_path):
    """The RoPE tables (8x8 tokens, head dim 32 -> (64, 16) cos and sin) are stored once: the
    same for queries and keys, one frame's worth broadcast over the memory frames, not tiled
    per slot nor copied per use; so the file does not grow with the slots."""
    one, six = (onnx.load(str(export_onnx(memory_attention_spec(test_model, MemorySlots.for_bank(test_model, n)),
                                          tmp_path / f"memory{n}.onnx"))) for n in (1, 6))
    for model in (one, six):
        shapes = [shape for shape, _ in _initializers(model)]
        assert shapes.count((64, 16)) == 2  # cos, sin
        assert not any(len(shape) == 2 and shape[0] in (2 * 64, 7 * 64) for shape in shapes)  # no tiled table
    assert sum(b for _, b in _initializers(one)) == sum(b for _, b in _initializers(six))


def test_share_identical_initializers_keeps_one_copy_and_the_results():
    weight = onnx.numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w1")
    copy = onnx.numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w2")
    other = onnx.numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(3, 2), "w3")  # same bytes, not shape
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w1"], ["a"]), helper.make_node("Mul", ["a", "w2"], ["b"]),
         helper.make_node("MatMul", ["b", "w3"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])], initializer=[weight, copy, other])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    assert share_identical_initializers(model) == 1
    assert [i.name for i in model.graph.initializer] == ["w1", "w3"]
    assert list(model.graph.node[1].input) == ["a", "w1"]
    onnx.checker.check_model(model, full_check=True)


def test_onnxslim_keeps_onnx_runtime_output_bit_identical(test_model, exported, tmp_path):
    """The simplified graphs (fewer nodes) give exactly the outputs of the merely folded ones."""
    for name, spec in (("encoder", encoder_spec(test_model)), ("encoder_sam2", encoder_sam2_spec(test_model)),
                       ("memory_attention", memory_attention_spec(test_model))):
        folded = export_onnx(spec, tmp_path / f"{name}-folded.onnx", slim=False)
        assert len(onnx.load(str(exported[name])).graph.node) < len(onnx.load(str(folded)).graph.node)
        slimmed, reference = OrtGraph(exported[name]).run(spec.inputs), OrtGraph(folded).run(spec.inputs)
        for output, value in reference.items():
            assert torch.equal(slimmed[output], value), (name, output)


def test_hiera_t_exports_with_parity(tmp_path):
    """The real Hiera-T structure (random weights) at a small input."""
    model = randomize_adapters(build_m4sam("hiera_t", image_size=128, seed=0))
    encoder = export_onnx(encoder_spec(model), tmp_path / "encoder.onnx")
    assert worst(encoder_parity(model, OrtGraph(encoder), frames=1)).relative < 1e-4
    encoder_sam2 = export_onnx(encoder_sam2_spec(model), tmp_path / "encoder_sam2.onnx")
    assert worst(encoder_sam2_parity(model, OrtGraph(encoder_sam2), frames=1)).relative < 1e-4
    memory = export_onnx(memory_attention_spec(model), tmp_path / "memory.onnx")
    assert worst(memory_attention_parity(model, OrtGraph(memory), frames=2)).relative < 1e-4


class _TiledPositionEmbedding(torch.nn.Module):
    """SAM2 Hiera's position-embedding pattern (bicubic resize + ``tile``), large enough that the
    folded constant exceeds the folder's default size limit: the tracer wraps ``tile`` in If nodes."""

    def __init__(self):
        super().__init__()
        self.pos = torch.nn.Parameter(torch.randn(1, 8, 16, 16))
        self.window = torch.nn.Parameter(torch.randn(1, 8, 8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = F.interpolate(self.pos, size=x.shape[-2:], mode="bicubic")
        return x + pos + self.window.tile([a // b for a, b in zip(pos.shape, self.window.shape)])


def test_large_tiled_position_embeddings_fold_away(tmp_path):
    """Regression: Hiera-T at 256 px kept two If nodes (and lost an initializer they read)."""
    spec = GraphSpec("tiled", _TiledPositionEmbedding().eval(), {"x": torch.randn(1, 8, 256, 256)}, ("y",))
    model = onnx.load(str(export_onnx(spec, tmp_path / "tiled.onnx")))
    assert {node.op_type for node in model.graph.node} == {"Add"}
    got = OrtGraph(tmp_path / "tiled.onnx").run(spec.inputs)
    torch.testing.assert_close(got["y"], spec.run()["y"], rtol=1e-5, atol=1e-5)


def test_cached_onnx_exports_once(test_model, tmp_path):
    cache = ArtifactCache(tmp_path)
    first = cached_onnx(test_model, "memory_attention", cache)
    stamp = first.stat().st_mtime_ns
    assert cached_onnx(test_model, "memory_attention", cache) == first and first.stat().st_mtime_ns == stamp


def test_check_onnx_refuses_control_flow_and_dynamic_shapes():
    then = helper.make_graph([helper.make_node("Identity", ["x"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1])])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=then)], "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    with pytest.raises(ExportError, match="If"):
        check_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]))
    dynamic = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])])
    with pytest.raises(ExportError, match="dynamic shape"):
        check_onnx(helper.make_model(dynamic, opset_imports=[helper.make_opsetid("", OPSET)]))


def test_export_command_writes_files_and_reports_errors(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    export_cmd.add_arguments(parser)
    args = parser.parse_args(["--preset", "test", "--image-size", "64", "--output-dir", str(tmp_path),
                              "--parity-frames", "2"])
    assert export_cmd.run(args) == 0
    out = capsys.readouterr().out
    # no adapter: what a zero-shot node runs
    for graph, name in (("encoder_sam2", "encoder_sam2"), ("memory_attention", "memory_attention-6frames")):
        assert (tmp_path / f"m4sam-test-64-{name}.onnx").is_file()
        assert f"{graph}: ONNX Runtime (fp32) vs PyTorch (fp32) max abs" in out
    assert not (tmp_path / "m4sam-test-64-encoder.onnx").exists()
    assert "max abs err" in out and "rel err" in out and "FAILED" not in out
    args = parser.parse_args(["--preset", "test", "--image-size", "64", "--output-dir", str(tmp_path),
                              "--graphs", "encoder", "--parity-frames", "2"])
    assert export_cmd.run(args) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "m4sam-test-64-encoder.onnx").is_file() and "encoder: ONNX Runtime (fp32) vs PyTorch" in out
    assert set(ENCODER_INPUTS) <= set(out.replace("(", " ").split())
    args = parser.parse_args(["--preset", "test", "--image-size", "64", "--output-dir", str(tmp_path),
                              "--graphs", "memory_attention", "--num-memory-frames", "2", "--parity-frames", "3"])
    assert export_cmd.run(args) == 0
    model = onnx.load(str(tmp_path / "m4sam-test-64-memory_attention-2frames.onnx"))
    assert _io(model, model.graph.input)["memory"] == (1, 3 * 16 + 16 * 2, 16)  # 1 + 2 frames of 4x4, 16 pointers
    assert {p.key: p.value for p in model.metadata_props}["recent_frames"] == "2"


def test_default_graphs_follow_the_mode_the_weights_give(tmp_path):
    parser = argparse.ArgumentParser()
    export_cmd.add_arguments(parser)
    adapter = save_adapter(build_m4sam("test", image_size=64), tmp_path / "a.pt")
    no_adapter, with_adapter = (model_from_args(parser.parse_args(["--image-size", "64", *extra]))
                                for extra in ([], ["--adapter", str(adapter)]))
    assert default_graphs(no_adapter) == ["encoder_sam2", "memory_attention"]
    assert default_graphs(with_adapter) == ["encoder", "memory_attention"]
