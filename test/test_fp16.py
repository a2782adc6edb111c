"""FP16 graphs for strongly typed TensorRT, checked on the CPU: the reference half of the FP16
TensorRT tests. LayerNorm, softmax and the MoE routers compute in fp32 inside the graph;
ONNX Runtime runs the fp16 ONNX within 1e-2 of the fp32 PyTorch model; the routers choose
the experts fp32 chooses; the residual stream stays far below fp16's largest value."""
from __future__ import annotations

import argparse
import collections
from pathlib import Path

import onnx
import pytest
import torch

from m4sam_ros.engines.cache import ArtifactCache
from m4sam_ros.engines.export import cached_onnx, export_onnx, onnx_key
from m4sam_ros.engines.fp16 import FP32_ISLANDS, Fp16Graph, residual_headroom
from m4sam_ros.engines.graphs import encoder_spec, graph_spec
from m4sam_ros.engines.onnxruntime_backend import OrtGraph
from m4sam_ros.model.adapters.moe_lora import ExpertRouter
from m4sam_ros.model.builder import load_m4sam
from m4sam_ros.model.m4sam import build_m4sam
from m4sam_ros.tools import export as export_cmd
from m4sam_ros.tools.parity import (_encoder_cases, encoder_parity, encoder_sam2_parity, memory_attention_parity,
                                    worst)

from helpers import randomize_adapters

DATA = Path(__file__).resolve().parents[1] / "m4sam_ros" / "data"
TOLERANCE = 1e-2  # relative to the output's scale; measured 1.3e-3 (encoders) and 5e-4 (memory attention)
PARITY = {"encoder": encoder_parity, "encoder_sam2": encoder_sam2_parity, "memory_attention": memory_attention_parity}


@pytest.fixture(scope="module")
def test_model():
    return randomize_adapters(build_m4sam("test", image_size=128, seed=0))


@pytest.fixture(scope="module")
def demo_model():
    return load_m4sam("test", 128, sam2_checkpoint=str(DATA / "demo_sam2.pt"), adapter=str(DATA / "demo_adapter.pt"))


def _input_types(model: onnx.ModelProto) -> collections.Counter:
    """(op, element type of its first input) for the ops whose precision matters."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({i.name: i.data_type for i in inferred.graph.initializer})
    return collections.Counter((n.op_type, onnx.TensorProto.DataType.Name(types[n.input[0]]))
                               for n in inferred.graph.node
                               if n.op_type in ("LayerNormalization", "Softmax", "TopK", "MatMul", "Conv"))


@pytest.mark.slow
@pytest.mark.parametrize("graph", ["encoder", "encoder_sam2", "memory_attention"])
def test_fp16_onnx_keeps_norms_and_softmax_fp32_and_matches_fp32_in_onnx_runtime(test_model, tmp_path, graph):
    path = export_onnx(graph_spec(graph, test_model, precision="fp16"), tmp_path / f"{graph}.onnx")
    model = onnx.load(str(path))
    assert {v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)} == \
        {onnx.TensorProto.FLOAT}  # float32 I/O, like every engine's
    types = _input_types(model)
    assert types[("MatMul", "FLOAT16")] > 0 and not types[("MatMul", "FLOAT")] and not types[("Conv", "FLOAT")]
    assert types[("LayerNormalization", "FLOAT")] > 0 and not types[("LayerNormalization", "FLOAT16")]
    assert types[("Softmax", "FLOAT")] > 0 and not types[("Softmax", "FLOAT16")]
    assert not types[("TopK", "FLOAT16")]  # the routers' top-k, where the graph has routers
    assert {p.key: p.value for p in model.metadata_props}["precision"] == "fp16"
    rows = PARITY[graph](test_model, OrtGraph(path), frames=3)
    assert worst(rows).relative < TOLERANCE


def _decisions(module: torch.nn.Module, inputs: tuple) -> list[torch.Tensor]:
    """Which experts every top-k router keeps, in call order."""
    chosen = []
    hooks = [m.register_forward_hook(lambda m, args, out: chosen.append(out > 0)) for m in module.modules()
             if isinstance(m, ExpertRouter) and m.top_k < m.proj.out_features]
    with torch.inference_mode():
        module(*inputs)
    for hook in hooks:
        hook.remove()
    return chosen


@pytest.mark.slow
def test_fp16_routers_choose_the_experts_fp32_chooses_on_the_demo_weights(demo_model):
    spec = encoder_spec(demo_model)
    half = Fp16Graph(spec.module)
    assert all(p.dtype == torch.float32 for m in half.modules() if isinstance(m, ExpertRouter) for p in m.parameters())
    compared = 0
    for _, inputs in _encoder_cases(demo_model, frames=6, seed=0):
        args = tuple(inputs[name] for name in spec.inputs)
        reference, got = _decisions(spec.module, args), _decisions(half, args)
        assert len(reference) == len(got) > 0
        for ref, chosen in zip(reference, got):
            assert torch.equal(ref, chosen)
            compared += ref.shape[0]
    assert compared >= 50


@pytest.mark.slow
def test_the_residual_stream_stays_far_below_fp16s_largest_value(demo_model):
    """TensorRT's fp32 LayerNorm does not help if what feeds it overflowed in fp16 before."""
    spec = encoder_spec(demo_model)
    for _, inputs in _encoder_cases(demo_model, frames=3, seed=0):
        assert residual_headroom(spec.module, tuple(inputs[name] for name in spec.inputs)) > 100


@pytest.mark.slow
def test_fp16_onnx_has_its_own_cache_entry_and_export_command(test_model, tmp_path, capsys):
    cache = ArtifactCache(tmp_path / "cache")
    fp32, fp16 = (cached_onnx(test_model, "memory_attention", cache, precision=p) for p in ("fp32", "fp16"))
    assert fp32 != fp16 and fp16.name.startswith("memory_attention-128-fp16-")
    key = onnx_key(test_model, graph_spec("memory_attention", test_model, precision="fp16"))
    assert key.precision == "fp16" and dict(key.signature)["fp32_islands"] == ",".join(FP32_ISLANDS)
    parser = argparse.ArgumentParser()
    export_cmd.add_arguments(parser)
    args = parser.parse_args(["--preset", "test", "--image-size", "64", "--output-dir", str(tmp_path),
                              "--graphs", "memory_attention", "--precision", "fp16", "--parity-frames", "2"])
    assert export_cmd.run(args) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "m4sam-test-64-memory_attention-6frames-fp16.onnx").is_file()
    assert "memory_attention: ONNX Runtime (fp16) vs PyTorch (fp32)" in out and ": OK" in out
    assert "fp16's largest value is" in out
