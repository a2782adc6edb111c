"""Export the encoder and the memory attention to ONNX, check them, measure parity.

Exporter: PyTorch's TorchScript-based ``torch.onnx.export(dynamo=False)`` at opset 17.
Opset 17 because it is the first with a native ``LayerNormalization`` (TensorRT >= 8.6
maps it to one normalisation layer that can be kept in FP32, see tensorrt_backend), and
the highest TensorRT 8.6 parses; TensorRT 10 reads it too. TensorRT 8.5 (JetPack 5) parses
no LayerNormalization: a Jetson needs JetPack 6 (tensorrt_backend says why not a decomposed
graph). (The torch.export-based exporter emits opset 18 and, for this graph, fails to
convert down to 17.) The traced graph is then rewritten without changing its results
(``onnx_passes``): constant folding removes the ``If`` nodes and shape arithmetic the tracer
leaves around SAM2's position-embedding code, onnxslim simplifies what is left (and with it
the ``Mod`` nodes of Hiera's window padding), and identical tensors are stored once.
"""
from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path

import onnx
import torch

from m4sam_ros.engines.base import ExportError
from m4sam_ros.engines.cache import ArtifactCache, EngineKey, weights_hash
from m4sam_ros.engines.graphs import GraphSpec, graph_spec
from m4sam_ros.engines.memory_attention import MemorySlots
from m4sam_ros.engines.onnx_passes import fold_constants, share_identical_initializers, simplify
from m4sam_ros.engines.progress import stage
from m4sam_ros.model.m4sam import M4SAM

log = logging.getLogger(__name__)

OPSET = 17
# Ops TensorRT cannot take (control flow) or that mean a complex-number path leaked in.
FORBIDDEN_OPS = frozenset({"If", "Loop", "Scan", "SequenceConstruct", "DFT", "STFT"})


def check_onnx(model: onnx.ModelProto) -> None:
    """onnx.checker (full, with shape inference), static shapes and no forbidden op."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"onnx.checker rejected the graph: {error}") from error
    found = sorted({node.op_type for node in model.graph.node} & FORBIDDEN_OPS)
    if found:
        raise ExportError(f"the graph contains {found}, which TensorRT cannot build; the export must be static")
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            raise ExportError(f"{value.name} has a dynamic shape; the engines need static shapes")


def export_onnx(spec: GraphSpec, path: Path | str, opset: int = OPSET, metadata: dict[str, str] | None = None,
                slim: bool = True) -> Path:
    """Trace ``spec.module`` to ``path`` (static shapes, named inputs/outputs), fold, simplify
    (``slim``: onnxslim; off only to compare against), share identical tensors, check."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # the tracer warns on every Python-level shape check in SAM2/our code; with static
        # shapes they are constants by design, and the legacy exporter warns it is legacy
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = Path(tmp) / "traced.onnx"
        with stage(f"exporting {spec.name} to ONNX (opset {opset})"), torch.no_grad():
            torch.onnx.export(spec.module, tuple(spec.inputs.values()), str(traced), dynamo=False,
                              input_names=list(spec.inputs), output_names=list(spec.outputs),
                              opset_version=opset, do_constant_folding=True)
        with stage(f"folding constants of the {spec.name} graph"):
            model = fold_constants(onnx.load(str(traced)))
    if slim:
        with stage(f"simplifying the {spec.name} graph (onnxslim)"):
            model = simplify(model)
    shared = share_identical_initializers(model)
    _declare_output_shapes(model, spec)
    for key, value in {"m4sam_graph": spec.name, "opset": str(opset), "precision": spec.precision, **spec.signature,
                       **(metadata or {})}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    check_onnx(model)
    onnx.save(model, str(path))
    log.info("wrote %s (%d nodes, %.1f MB; %d duplicate tensors shared)", path, len(model.graph.node),
             path.stat().st_size / 1e6, shared)
    return path


def _declare_output_shapes(model: onnx.ModelProto, spec: GraphSpec) -> None:
    """Write the traced output shapes into the graph where ONNX shape inference could not
    (outputs computed through Tile/Expand of shape arithmetic); the trace is static, so they hold."""
    shapes = {name: tuple(t.shape) for name, t in spec.run().items()}
    for value in model.graph.output:
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(shapes[value.name]) or any(not d.HasField("dim_value") for d in dims):
            value.type.tensor_type.ClearField("shape")
            for size in shapes[value.name]:
                value.type.tensor_type.shape.dim.add().dim_value = size


def onnx_key(model: M4SAM, spec: GraphSpec, weights: str | None = None, opset: int = OPSET) -> EngineKey:
    """Cache key of an exported graph (portable: no TensorRT or GPU fields)."""
    return EngineKey(graph=spec.name, weights_sha256=weights or weights_hash(model),
                     image_size=model.config.image_size, precision=spec.precision,
                     signature=tuple(sorted({**spec.signature, "opset": opset}.items())))


def cached_onnx(model: M4SAM, graph: str, cache: ArtifactCache, batch: int = 1, slots: MemorySlots | None = None,
                weights: str | None = None, precision: str = "fp32") -> Path:
    """The ONNX file of ``graph`` (fp32, or fp16 for strongly typed TensorRT) for this model from
    the cache, exported on a miss."""
    spec = graph_spec(graph, model, batch=batch, slots=slots, precision=precision)
    key = onnx_key(model, spec, weights)
    path = cache.lookup(key, ".onnx")
    if path is not None:
        return path
    with cache.workspace() as tmp:
        exported = export_onnx(spec, tmp / "graph.onnx",
                               metadata={"weights_sha256": key.weights_sha256, "preset": model.config.name,
                                         "image_size": str(model.config.image_size)})
        return cache.store(key, ".onnx", source=exported)
