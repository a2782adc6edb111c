"""INT8 on ONNX Runtime's CPU provider: dynamic quantisation of the exported graphs, cached.

Dynamic quantisation (``onnxruntime.quantization.quantize_dynamic``) stores the weights of
the MatMuls as int8 and quantises their activations per call from the activations' own
range, so it needs no calibration set. Attention products (two activations) stay float
(``MatMulConstBOnly``), and so do the MoE routers: their top-k is a discrete choice a small
error can flip, and they are a negligible share of the work. Nothing else changes: inputs
and outputs stay float32, LayerNorm and softmax run in float.

Measured on this repository's 2-core CPU (one thread, fp32 vs int8 interleaved in one
process, Hiera-T at 512 px, random weights): SAM2's encoder 2.2x faster, the RGB-D encoder
1.34x (its fusion convolutions stay float: quantising convolutions too made it 1.7x slower
than fp32 in ONNX Runtime's ConvInteger), the memory attention 1.24x (1.18x at 256 px; its
attention products stay float), with 1-3 % drift of the outputs' range.

Two things in ONNX Runtime's quantizer need help: it turns each ``Gemm`` into a MatMul by
transposing the weight in place, assuming no other node reads it, so a weight shared by
several Gemms (identical initializers are shared at export) is first given one copy per
Gemm; and its shape inference loses the types of what onnxslim's Gemm rewrite leaves, so
float is declared the default type.

Whether users get it is ``int8_policy.py``'s decision.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from m4sam_ros.engines.cache import ArtifactCache, EngineKey
from m4sam_ros.engines.onnx_passes import quiet
from m4sam_ros.engines.progress import stage

if TYPE_CHECKING:
    from m4sam_ros.engines.memory_attention import MemorySlots
    from m4sam_ros.model.m4sam import M4SAM

# names the method in the cache key: a change here must not reuse files quantised the old way
QUANTIZATION = "dynamic int8 weights of MatMul/Gemm, activations per call; attention products and routers float"
ROUTER_SCOPE = "/router/"  # ONNX node names follow the module path; the MoE routers live under it


def _one_weight_per_gemm(model: onnx.ModelProto) -> int:
    """Give every Gemm its own weight initializer; returns how many copies were made."""
    initializers = {init.name: init for init in model.graph.initializer}
    seen: set[str] = set()
    copies = 0
    for node in model.graph.node:
        if node.op_type != "Gemm" or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        weight = node.input[1]
        if weight in seen:
            copy = onnx.TensorProto()
            copy.CopyFrom(initializers[weight])
            copy.name = f"{weight}__{node.name or copies}"
            model.graph.initializer.append(copy)
            node.input[1] = copy.name
            copies += 1
        seen.add(weight)
    return copies


def _router_nodes(model: onnx.ModelProto) -> list[str]:
    """The routers' MatMul/Gemm nodes, under both names the quantizer may give them (a Gemm
    becomes ``<name>_MatMul``)."""
    names = [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and ROUTER_SCOPE in n.name]
    return names + [f"{name}_MatMul" for name in names]


def quantize(source: Path, destination: Path) -> Path:
    """fp32 ONNX -> dynamically quantised int8 ONNX (see the module docstring)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(source))
    _one_weight_per_gemm(model)
    prepared = destination.with_name(destination.stem + "-prepared.onnx")
    onnx.save(model, str(prepared))
    with quiet("", level=logging.ERROR):  # its advice to run its pre-processing (shape inference) goes to root
        quantize_dynamic(str(prepared), str(destination), op_types_to_quantize=["MatMul", "Gemm"],
                         weight_type=QuantType.QInt8, nodes_to_exclude=_router_nodes(model),
                         extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})
    prepared.unlink()
    return destination


def int8_key(model: "M4SAM", graph: str, weights: str, slots: "MemorySlots | None" = None) -> EngineKey:
    """The fp32 graph's key with precision int8, the quantisation method in its signature and
    the quantizer's version as its target (a new ONNX Runtime re-quantises)."""
    import onnxruntime

    from m4sam_ros.engines.export import onnx_key
    from m4sam_ros.engines.graphs import graph_spec

    fp32 = onnx_key(model, graph_spec(graph, model, slots=slots), weights)
    return EngineKey(graph=graph, weights_sha256=weights, image_size=fp32.image_size, precision="int8",
                     target=(("onnxruntime_version", onnxruntime.__version__),),
                     signature=tuple(sorted({**dict(fp32.signature), "quantization": QUANTIZATION}.items())))


def cached_int8_onnx(model: "M4SAM", graph: str, cache: ArtifactCache, weights: str,
                     slots: "MemorySlots | None" = None) -> Path:
    """The int8 ONNX file of ``graph`` from the cache, quantised from the fp32 one on a miss."""
    from m4sam_ros.engines.export import cached_onnx

    key = int8_key(model, graph, weights, slots)
    path = cache.lookup(key, ".onnx")
    if path is not None:
        return path
    source = cached_onnx(model, graph, cache, slots=slots, weights=weights)
    with cache.workspace() as tmp, stage(f"quantising {graph} to int8 (ONNX Runtime, dynamic)"):
        return cache.store(key, ".onnx", source=quantize(source, tmp / "graph.onnx"))
