"""Export the encoder and the memory attention to ONNX, check them, measure parity.

Exporter: PyTorch's TorchScript-based ``torch.onnx.export(dynamo=False)`` at opset 17.
Opset 17 because it is the first with a native ``LayerNormalization`` (TensorRT >= 8.6
maps it to one normalisation layer that can be pinned to FP32, see tensorrt_backend), and
the highest that TensorRT 8.6 - still the TensorRT of JetPack 5 on Jetson Orin - parses;
TensorRT 10 reads it too. (The torch.export-based exporter emits opset 18 and, for this
graph, fails to convert down to 17.) The traced graph is then constant-folded with
onnxscript's optimizer, which removes the ``If`` nodes and shape arithmetic the tracer
leaves around SAM2's position-embedding code (``torch.tile`` with computed repeats), so
TensorRT parses plain static layers.
"""
from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx
import torch

from m4sam_ros.engines.base import ExportError
from m4sam_ros.engines.cache import ArtifactCache, EngineKey, weights_hash
from m4sam_ros.engines.graphs import GraphSpec, graph_spec
from m4sam_ros.engines.memory_attention import MemorySlots
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


def export_onnx(spec: GraphSpec, path: Path | str, opset: int = OPSET, metadata: dict[str, str] | None = None) -> Path:
    """Trace ``spec.module`` to ``path`` (static shapes, named inputs/outputs), fold, check."""
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
        with stage(f"folding constants of the {spec.name} graph"), _quiet("onnxscript", "onnx_ir"):
            model = fold_constants(onnx.load(str(traced)))
    _declare_output_shapes(model, spec)
    for key, value in {"m4sam_graph": spec.name, "opset": str(opset), **(metadata or {})}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    check_onnx(model)
    onnx.save(model, str(path))
    log.info("wrote %s (%d nodes, %.1f MB)", path, len(model.graph.node), path.stat().st_size / 1e6)
    return path


# Fold tensors up to this many elements: SAM2's interpolated + tiled position embedding
# (1 x C x S/4 x S/4, 9.4 M elements for Hiera-L at 1024) must fold, or the If nodes the
# tracer put around ``torch.tile`` stay in the graph.
_FOLD_LIMIT = 1 << 26


def _used_names(graph: onnx.GraphProto) -> set[str]:
    """Every value name a node of ``graph`` or of its subgraphs (If branches) reads, plus outputs."""
    used = {v.name for v in graph.output}
    for node in graph.node:
        used.update(node.input)
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs):
                used |= _used_names(subgraph)
    return used


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant-fold (onnxscript's folder only, not its slow pattern rewriter) and drop what
    no node uses any more."""
    import onnx_ir
    import onnxscript.optimizer

    graph_ir = onnx_ir.serde.deserialize_model(model)
    onnxscript.optimizer.fold_constants(graph_ir, input_size_limit=_FOLD_LIMIT, output_size_limit=_FOLD_LIMIT)
    onnxscript.optimizer.remove_unused_nodes(graph_ir)
    folded = onnx_ir.serde.serialize_model(graph_ir)
    used = _used_names(folded.graph)
    kept = [init for init in folded.graph.initializer if init.name in used]
    del folded.graph.initializer[:]
    folded.graph.initializer.extend(kept)
    return folded


@contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """The optimizer logs every folded constant at INFO; keep the user's log readable."""
    saved = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


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
                     image_size=model.config.image_size, precision="fp32",
                     signature=tuple(sorted({**spec.signature, "opset": opset}.items())))


def cached_onnx(model: M4SAM, graph: str, cache: ArtifactCache, batch: int = 1, slots: MemorySlots | None = None,
                weights: str | None = None) -> Path:
    """The ONNX file of ``graph`` for this model from the cache, exported on a miss."""
    spec = graph_spec(graph, model, batch=batch, slots=slots)
    key = onnx_key(model, spec, weights)
    path = cache.lookup(key, ".onnx")
    if path is not None:
        return path
    with cache.workspace() as tmp:
        exported = export_onnx(spec, tmp / "graph.onnx",
                               metadata={"weights_sha256": key.weights_sha256, "preset": model.config.name,
                                         "image_size": str(model.config.image_size)})
        return cache.store(key, ".onnx", source=exported)
