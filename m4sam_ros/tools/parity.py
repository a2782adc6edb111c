"""Parity of a compiled graph with the PyTorch model, on random and on synthetic RGB-D input.

Random inputs exercise every weight; synthetic frames (the procedural RGB-D generator,
depth through the package's one normalisation, a frame with depth dropped) exercise the
value ranges a camera produces. The memory-attention graph is checked on memory banks
the real tracker built from those frames, against SAM2's own memory attention.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from m4sam_ros.depth import normalize_depth
from m4sam_ros.engines.graph_engines import CompiledGraph, GraphMemoryAttention
from m4sam_ros.engines.graphs import (ENCODER, ENCODER_INPUTS, ENCODER_OUTPUTS, ENCODER_SAM2, MEMORY_ATTENTION,
                                      MEMORY_INPUTS, example_encoder_inputs, example_memory_inputs)
from m4sam_ros.engines.memory_attention import MemorySlots, StaticMemoryAttention
from m4sam_ros.model.m4sam import M4SAM
from m4sam_ros.preprocess import model_inputs


@dataclass(frozen=True)
class ErrorStats:
    """max_abs = max |candidate - reference|; relative = max_abs / max |reference|
    (relative to the output's scale: elementwise ratios explode near zero)."""

    max_abs: float
    relative: float


@dataclass(frozen=True)
class ParityRow:
    graph: str
    inputs: str  # "random", "synthetic frame 2 (no depth)", ...
    output: str
    error: ErrorStats


def compare_outputs(reference: dict[str, torch.Tensor], candidate: dict[str, torch.Tensor]) -> dict[str, ErrorStats]:
    """Per output name: error of ``candidate`` against ``reference`` (same names and shapes)."""
    if set(reference) != set(candidate):
        raise ValueError(f"outputs differ: reference {sorted(reference)} vs candidate {sorted(candidate)}")
    stats = {}
    for name, ref in reference.items():
        ref, got = ref.detach().float().cpu(), candidate[name].detach().float().cpu()
        if ref.shape != got.shape:
            raise ValueError(f"output {name}: shape {tuple(got.shape)} != reference {tuple(ref.shape)}")
        max_abs = float((got - ref).abs().max())
        stats[name] = ErrorStats(max_abs, max_abs / max(float(ref.abs().max()), 1e-12))
    return stats


def worst(rows: list[ParityRow]) -> ErrorStats:
    return ErrorStats(max(r.error.max_abs for r in rows), max(r.error.relative for r in rows))


def frame_inputs(rgb: np.ndarray, depth: np.ndarray | None, model: M4SAM) -> dict[str, torch.Tensor]:
    """A camera frame -> encoder inputs through the tracker's own preprocessing (learned mode:
    depth normalised as the model was trained, absent depth -> zeros and modality_present [1, 0])."""
    depth_normalized = normalize_depth(depth, model.config.depth)[0] if depth is not None else None
    arrays = model_inputs(rgb, depth_normalized, model.config.image_size)
    return {name: torch.from_numpy(array) for name, array in zip(ENCODER_INPUTS, arrays)}


def parity_frames(frames: int, seed: int = 0):
    """Synthetic RGB-D frames (160 x 120); the last one has its depth dropped."""
    from m4sam_ros.learn.synthetic import SyntheticConfig, generate_video

    for frame in generate_video(SyntheticConfig(height=120, width=160, frames=frames, seed=seed)):
        yield frame.index, frame.rgb, None if frame.index == frames - 1 else frame.depth_mm


def _to(device: torch.device, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.to(device) for name, tensor in tensors.items()}


def _encoder_cases(model: M4SAM, frames: int, seed: int) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """(label, RGB-D encoder inputs): one random input and ``frames`` synthetic frames."""
    cases = [("random", example_encoder_inputs(model, generator=torch.Generator().manual_seed(seed)))]
    for index, rgb, depth in parity_frames(frames, seed):
        label = f"synthetic frame {index}" + (" (no depth)" if depth is None else "")
        cases.append((label, frame_inputs(rgb, depth, model)))
    return cases


def encoder_parity(model: M4SAM, graph: CompiledGraph, frames: int = 3, seed: int = 0) -> list[ParityRow]:
    """RGB-D encoder graph vs ``model.encode`` on one random input and ``frames`` synthetic frames."""
    device = next(model.parameters()).device
    rows = []
    for label, inputs in _encoder_cases(model, frames, seed):
        inputs = _to(device, inputs)
        with torch.inference_mode():
            reference = dict(zip(ENCODER_OUTPUTS, model.encode(*(inputs[n] for n in ENCODER_INPUTS))))
        for output, error in compare_outputs(reference, graph.run(inputs)).items():
            rows.append(ParityRow(ENCODER, label, output, error))
    return rows


def encoder_sam2_parity(model: M4SAM, graph: CompiledGraph, frames: int = 3, seed: int = 0) -> list[ParityRow]:
    """SAM2-encoder graph vs ``model.encode_sam2`` on the same cases' RGB."""
    device = next(model.parameters()).device
    rows = []
    for label, inputs in _encoder_cases(model, frames, seed):
        rgb = inputs["rgb"].to(device)
        with torch.inference_mode():
            reference = dict(zip(ENCODER_OUTPUTS, model.encode_sam2(rgb)))
        for output, error in compare_outputs(reference, graph.run({"rgb": rgb})).items():
            rows.append(ParityRow(ENCODER_SAM2, label.replace(" (no depth)", ""), output, error))
    return rows


def memory_attention_parity(model: M4SAM, graph: CompiledGraph, frames: int = 4, seed: int = 0,
                            num_memory_frames: int | None = None) -> list[ParityRow]:
    """Memory-attention graph (exported for a bank of ``num_memory_frames``, None: SAM2's 6)
    vs SAM2's memory attention.

    random: the static module on random packed inputs (some slots empty);
    synthetic: banks the real tracker (same ``num_memory_frames``) built over ``frames``
    synthetic frames, the graph engine (packing included) against ``model.condition_on_memory``
    on the bank's view.
    """
    from m4sam_ros.tracker import SaliencyTracker, TrackerConfig

    device = next(model.parameters()).device
    slots = MemorySlots.for_bank(model, num_memory_frames)
    static = StaticMemoryAttention(model, slots, (model.config.image_size // 16,) * 2)
    inputs = _to(device, example_memory_inputs(model, slots, generator=torch.Generator().manual_seed(seed)))
    with torch.inference_mode():
        reference = {"pix_feat": static(*(inputs[n] for n in MEMORY_INPUTS))}
    rows = [ParityRow(MEMORY_ATTENTION, "random", "pix_feat", e)
            for e in compare_outputs(reference, graph.run(inputs)).values()]
    engine = GraphMemoryAttention(graph, model, slots, "graph", "fp32")
    config = TrackerConfig(image_size=model.config.image_size, num_memory_frames=slots.recent_frames, mode="learned")
    tracker = SaliencyTracker(model, config, device=str(device))
    for index, rgb, depth in parity_frames(frames, seed):
        if index > 0:  # the bank holds frames 0 .. index-1; frame `index` attends to it
            encoder_feed = _to(device, frame_inputs(rgb, depth, model))
            with torch.inference_mode():
                frame = model.encode(*(encoder_feed[n] for n in ENCODER_INPUTS))
                view = tracker.memory.view()
                sam2_reference = {"pix_feat": model.condition_on_memory(frame, view)}
            got = {"pix_feat": engine(frame, view)}
            label = f"synthetic frame {index}, bank of {len(tracker.memory)} frames"
            rows += [ParityRow(MEMORY_ATTENTION, label, "pix_feat", e)
                     for e in compare_outputs(sam2_reference, got).values()]
        tracker.step(rgb, depth, stamp=index / 30.0)
    return rows


PARITY_CHECKS = {ENCODER: encoder_parity, ENCODER_SAM2: encoder_sam2_parity, MEMORY_ATTENTION: memory_attention_parity}
