"""Rewrites of a traced ONNX graph that change its form, not its results.

``fold_constants`` (onnxscript's folder) removes the ``If`` nodes and shape arithmetic the
tracer leaves around SAM2's position-embedding code, so TensorRT parses plain static layers.
``simplify`` (onnxslim, maintained) fuses and eliminates what folding leaves: the 512-px
Hiera-T encoder goes from about 5,500 nodes to about 2,000, with ONNX Runtime's output
bit-identical (tested). ``share_identical_initializers`` keeps one copy of tensors the tracer
embedded once per use: the memory attention's RoPE tables (4 layers x 3 rotations) are the
large ones, and onnxslim ties only tensors under 1,000 elements.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import onnx

from m4sam_ros.engines.base import ExportError

# Fold tensors up to this many elements: SAM2's interpolated + tiled position embedding
# (1 x C x S/4 x S/4, 9.4 M elements for Hiera-L at 1024) must fold, or the If nodes the
# tracer put around ``torch.tile`` stay in the graph.
_FOLD_LIMIT = 1 << 26


@contextmanager
def quiet(*loggers: str, level: int = logging.WARNING) -> Iterator[None]:
    """The optimizers log every rewrite at INFO; keep the user's log readable."""
    saved = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


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

    with quiet("onnxscript", "onnx_ir"):
        graph_ir = onnx_ir.serde.deserialize_model(model)
        onnxscript.optimizer.fold_constants(graph_ir, input_size_limit=_FOLD_LIMIT, output_size_limit=_FOLD_LIMIT)
        onnxscript.optimizer.remove_unused_nodes(graph_ir)
        folded = onnx_ir.serde.serialize_model(graph_ir)
    used = _used_names(folded.graph)
    kept = [init for init in folded.graph.initializer if init.name in used]
    del folded.graph.initializer[:]
    folded.graph.initializer.extend(kept)
    return folded


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxslim's graph simplification (fusions, dead and duplicate nodes, folding)."""
    try:
        import onnxslim
    except ImportError as error:
        raise ExportError("onnxslim is not installed: pip install onnxslim (in the package's onnx extra)") from error

    with quiet("onnxslim"):
        return onnxslim.slim(model)


def share_identical_initializers(model: onnx.ModelProto) -> int:
    """Make every node read the first of the initializers equal in type, shape and bytes and drop
    the others; returns how many were dropped. For graphs without subgraphs (the export refuses
    control flow)."""
    first: dict[tuple, str] = {}
    renamed: dict[str, str] = {}
    kept = []
    for initializer in model.graph.initializer:
        data = onnx.numpy_helper.to_array(initializer).tobytes()
        key = (initializer.data_type, tuple(initializer.dims), hashlib.sha256(data).hexdigest())
        if key in first:
            renamed[initializer.name] = first[key]
        else:
            first[key] = initializer.name
            kept.append(initializer)
    if renamed:
        for node in model.graph.node:
            node.input[:] = [renamed.get(name, name) for name in node.input]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
    return len(renamed)
