"""Engines on a compiled graph (ONNX Runtime or TensorRT): same calls as the PyTorch ones.

A compiled graph is anything with ``device``, ``input_shapes``, ``output_shapes`` and
``run(feeds: dict[str, Tensor]) -> dict[str, Tensor]`` (``OrtGraph``, ``TrtGraph``).
The memory-attention engine packs the bank into the graph's fixed slots with PyTorch
(cheap gathers) and runs the transformer in the graph; the conditioning frame, which
has no memory, takes SAM2's no-memory path in PyTorch (one addition).
"""
from __future__ import annotations

from typing import Protocol

import torch

from m4sam_ros.engines.base import EncoderEngine, MemoryAttentionEngine, check_encoder_inputs, check_rgb_input
from m4sam_ros.engines.graphs import (ENCODER, ENCODER_INPUTS, ENCODER_OUTPUTS, ENCODER_SAM2, ENCODER_SAM2_INPUTS,
                                      MEMORY_INPUTS, MEMORY_OUTPUTS, feature_size)
from m4sam_ros.engines.memory_attention import MemorySlots, memory_tokens, pack_memory
from m4sam_ros.model.m4sam import M4SAM, EncodedFrame
from m4sam_ros.model.memory import MemoryView


class CompiledGraph(Protocol):
    device: torch.device
    input_shapes: dict[str, tuple[int, ...]]
    output_shapes: dict[str, tuple[int, ...]]

    def run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


def _check_names(graph: CompiledGraph, inputs: tuple[str, ...], outputs: tuple[str, ...], what: str) -> None:
    if set(graph.input_shapes) != set(inputs) or set(graph.output_shapes) != set(outputs):
        raise ValueError(f"this is not an M4-SAM {what} graph: inputs {sorted(graph.input_shapes)}, outputs "
                         f"{sorted(graph.output_shapes)}; expected {sorted(inputs)} -> {sorted(outputs)}")


class GraphEncoder(EncoderEngine):
    """The RGB-D graph (``encoder``, learned mode), SAM2's (``encoder_sam2``, zero-shot) or
    both. Frames without depth in learned mode run the RGB-D graph with depth marked absent."""

    def __init__(self, graphs: dict[str, CompiledGraph], backend: str, precision: str):
        if not graphs or set(graphs) - {ENCODER, ENCODER_SAM2}:
            raise ValueError(f"an encoder engine takes graphs {ENCODER} and/or {ENCODER_SAM2}, got {sorted(graphs)}")
        for name, graph in graphs.items():
            if name == ENCODER:
                _check_names(graph, ENCODER_INPUTS, ENCODER_OUTPUTS, "RGB-D encoder")
            else:
                _check_names(graph, ENCODER_SAM2_INPUTS, ENCODER_OUTPUTS, "SAM2 encoder")
        shapes = {graph.input_shapes["rgb"] for graph in graphs.values()}
        if len(shapes) != 1:
            raise ValueError(f"the encoder graphs were exported for different inputs: {sorted(shapes)}")
        self.graphs, self.backend, self.precision = graphs, backend, precision
        self.device = next(iter(graphs.values())).device
        self.batch, _, self.image_size, _ = shapes.pop()

    def _graph(self, name: str, mode: str) -> CompiledGraph:
        if name not in self.graphs:
            raise ValueError(f"this encoder engine has no {name} graph, which {mode} mode runs; create the engines "
                             f"with zero_shot={mode == 'zero-shot'}")
        return self.graphs[name]

    def __call__(self, rgb: torch.Tensor, depth: torch.Tensor, modality_present: torch.Tensor) -> EncodedFrame:
        graph = self._graph(ENCODER, "learned")
        check_encoder_inputs(rgb, depth, modality_present, self.image_size, batch=self.batch)
        out = graph.run({"rgb": rgb, "depth": depth, "modality_present": modality_present})
        return EncodedFrame(*(out[name] for name in ENCODER_OUTPUTS))

    def encode_sam2(self, rgb: torch.Tensor) -> EncodedFrame:
        graph = self._graph(ENCODER_SAM2, "zero-shot")
        check_rgb_input(rgb, self.image_size, batch=self.batch)
        out = graph.run({"rgb": rgb})
        return EncodedFrame(*(out[name] for name in ENCODER_OUTPUTS))


class GraphMemoryAttention(MemoryAttentionEngine):
    def __init__(self, graph: CompiledGraph, model: M4SAM, slots: MemorySlots, backend: str, precision: str):
        _check_names(graph, MEMORY_INPUTS, MEMORY_OUTPUTS, "memory-attention")
        self.graph, self.model, self.slots = graph, model, slots
        self.backend, self.precision, self.device = backend, precision, graph.device
        self.feat_size = feature_size(model)
        self.batch = graph.input_shapes["memory"][0]
        tokens = sum(memory_tokens(model, slots, self.feat_size))
        if graph.input_shapes["memory"][1] != tokens:
            raise ValueError(f"the memory-attention graph has {graph.input_shapes['memory'][1]} memory tokens but "
                             f"{slots} at feature size {self.feat_size} needs {tokens}; export it for these slots")

    def __call__(self, frame: EncodedFrame, memory: MemoryView | None) -> torch.Tensor:
        with torch.inference_mode():
            if memory is None:
                return self.model.condition_on_memory(frame, None)
            packed = pack_memory(self.model, memory, self.slots, self.feat_size, self.batch)
            out = self.graph.run({"image_embed": frame.image_embed, "pos_enc": frame.pos_enc, **packed._asdict()})
        return out["pix_feat"]
