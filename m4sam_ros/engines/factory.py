"""Build the engines a tracker runs with: backend selection, export and engine cache in one call.

    engines = create_engines(model, EngineSettings(backend="auto"))
    tracker = SaliencyTracker(model, config, device=engines.device,
                              encoder=engines.encoder, memory_attention=engines.memory_attention)

ONNX Runtime and TensorRT need the exported graphs; they are exported on first use into
the cache directory (keyed by weights hash, input size and static shapes) and TensorRT
engines are built from them once per (weights, size, precision, TensorRT, GPU). How each
backend compiles a graph is its row of the backend table (``backends.py``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from m4sam_ros.engines.backends import BACKENDS
from m4sam_ros.engines.base import EncoderEngine, EngineBuildError, EngineUnavailable, ExportError, MemoryAttentionEngine
from m4sam_ros.engines.cache import ArtifactCache, weights_hash
from m4sam_ros.engines.graph_engines import GraphEncoder, GraphMemoryAttention
from m4sam_ros.engines.graphs import ENCODER, ENCODER_SAM2, MEMORY_ATTENTION, graphs_for
from m4sam_ros.engines.memory_attention import MemorySlots
from m4sam_ros.engines.platform import Platform
from m4sam_ros.engines.selection import AUTO, Choice, select_backend
from m4sam_ros.engines.torch_backend import TorchEncoder, TorchMemoryAttention
from m4sam_ros.model.m4sam import M4SAM

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSettings:
    """backend: auto | pytorch | onnxruntime | tensorrt; device: auto | cpu | cuda | cuda:N;
    precision: auto | fp32 | fp16 | bf16 (int8 refused until calibration exists);
    cache_dir: exported graphs and engines (None = $M4SAM_CACHE_DIR or ~/.cache/m4sam_ros);
    memory_attention: also run memory attention on the chosen backend (False keeps it in PyTorch);
    num_memory_frames: the tracker's (``TrackerConfig.num_memory_frames``): the memory-attention
    graph has slots for that many recent frames and costs what they hold (None: SAM2's 6);
    zero_shot: export/build SAM2's own encoder (zero-shot mode: one pass, no adapters) instead
    of the RGB-D one (learned mode);
    workspace_gib: TensorRT builder workspace; threads: ONNX Runtime intra-op threads (0 = default)."""

    backend: str = AUTO
    device: str = AUTO
    precision: str = AUTO
    cache_dir: str | None = None
    memory_attention: bool = True
    num_memory_frames: int | None = None
    zero_shot: bool = False
    workspace_gib: float = 4.0
    threads: int = 0

    def __post_init__(self) -> None:
        if not self.workspace_gib > 0:
            raise ValueError(f"workspace_gib must be > 0, got {self.workspace_gib}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0 = ONNX Runtime's default), got {self.threads}")


@dataclass
class Engines:
    encoder: EncoderEngine
    memory_attention: MemoryAttentionEngine
    choice: Choice

    @property
    def device(self) -> torch.device:
        return self.encoder.device


def _create(model: M4SAM, choice: Choice, settings: EngineSettings) -> Engines:
    backend = BACKENDS[choice.backend]
    if backend.compile is None:
        return Engines(TorchEncoder(model, choice.device, choice.precision),
                       TorchMemoryAttention(model, choice.device, choice.precision), choice)
    device = torch.device(choice.device)
    model.to(device).eval()  # the memory is packed, and the light stages run, next to the graphs
    cache = ArtifactCache(settings.cache_dir)
    weights = weights_hash(model)
    graphs = graphs_for(model, settings.zero_shot, settings.memory_attention)
    slots = MemorySlots.for_bank(model, settings.num_memory_frames)
    compiled = {g: backend.compile(model, g, cache, choice, settings, weights, slots) for g in graphs}
    encoder = GraphEncoder({g: compiled[g] for g in (ENCODER, ENCODER_SAM2) if g in compiled},
                           choice.backend, choice.precision)
    if MEMORY_ATTENTION in compiled:
        memory = GraphMemoryAttention(compiled[MEMORY_ATTENTION], model, slots, choice.backend, choice.precision)
    else:
        memory = TorchMemoryAttention(model, device, "fp32")
    return Engines(encoder, memory, choice)


def create_engines(model: M4SAM, settings: EngineSettings = EngineSettings(),
                   platform: Platform | None = None) -> Engines:
    """Engines for ``model`` per ``settings``; logs what was picked and why.

    With backend ``auto`` a candidate that fails to start (e.g. ONNX Runtime lists CUDA but
    its libraries are missing, or its graph fails to export or build) is logged and the next
    one is tried; an explicit backend that cannot run raises the error with the reason.
    """
    selection = select_backend(settings.backend, settings.device, settings.precision, platform)
    for choice in selection.candidates:
        try:
            engines = _create(model, choice, settings)
        except (EngineUnavailable, ExportError, EngineBuildError) as error:
            if settings.backend != AUTO:
                raise
            selection.skipped.append(f"{choice.backend} on {choice.device}: {error}")
            log.warning("engine %s on %s could not start: %s", choice.backend, choice.device, error)
            continue
        log.info("engine: %s", selection.explain(choice))
        return engines
    raise EngineUnavailable("no engine could start: " + "; ".join(selection.skipped))
