"""The adapter seam: what M4SAM asks of a trainable RGB-D adapter, and how modalities are routed.

An adapter is everything a model variant trains on top of the frozen SAM2. It hooks into
the Hiera trunk's blocks (``attach``), encodes a frame (``encode`` for RGB-D, ``encode_rgb``
for RGB alone) by composing SAM2's frozen pieces with its own, and says which temporal
memory its learned mode streams with (``memory``: SAM2's bank, or one of its own from
``new_memory``). Its parameters are the trainable ones, all of them, so the model,
checkpoints and training never name an adapter's parts.

Two ways to encode: an adapter that fuses SAM2's FPN levels implements ``fuse``/``refine``
and keeps the default ``encode`` (RGB and depth through the whole trunk as one batch of
two, like the papers' shared encoder); one that changes how the trunk runs (M4-SAM's short
depth branch) overrides ``encode``/``encode_rgb``, running the trunk stage by stage
(``model.trunk``). Which layout the trunk's batch currently has is the *routing*, set for
a block of code with ``routing(mode)`` and read by the hooks with ``current_routing()``;
it lives in a context variable, so two threads encoding at once never see each other's:
"pair" (B RGB then B depth), "rgb" (B RGB only) or "off" (adapters bypassed: SAM2's own
encoder, zero-shot mode).
"""
from __future__ import annotations

import contextvars
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from sam2.modeling.backbones.hieradet import Hiera
from torch import nn

from m4sam_ros.model.features import EncodedFrame
from m4sam_ros.model.trunk import stage_widths

if TYPE_CHECKING:
    from m4sam_ros.model.m4sam import M4SAM

ROUTINGS = ("pair", "rgb", "off")
_ROUTING: contextvars.ContextVar[str] = contextvars.ContextVar("m4sam_adapter_routing", default="pair")


@contextmanager
def routing(mode: str) -> Iterator[None]:
    """Within the block the trunk's batch is laid out as ``mode`` (see the module docstring)."""
    if mode not in ROUTINGS:
        raise ValueError(f"routing must be one of {ROUTINGS}, got {mode!r}")
    token = _ROUTING.set(mode)
    try:
        yield
    finally:
        _ROUTING.reset(token)


def current_routing() -> str:
    return _ROUTING.get()


@dataclass(frozen=True)
class AdapterConfig:
    """Base of every adapter's config: the fields of a subclass describe its trained weights,
    so an adapter file must agree on all of them (``kind`` included)."""

    kind: ClassVar[str]

    def to_dict(self) -> dict:
        """Plain types only (lists), so it survives ``torch.load(weights_only=True)``."""
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        return {"kind": self.kind, **values}

    def differences(self, other: "AdapterConfig") -> dict[str, tuple]:
        """Field name -> (self, other) for every field that differs (``kind`` first)."""
        if type(other) is not type(self):
            return {"kind": (self.kind, other.kind)}
        return {f.name: (getattr(self, f.name), getattr(other, f.name)) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(other, f.name)}


@dataclass(frozen=True)
class TrunkGeometry:
    """What an adapter needs to know of the model it attaches to."""

    trunk: Hiera
    d_model: int  # FPN / decoder width
    image_size: int  # square model input
    mem_dim: int  # SAM2's memory encoder output width (for an adapter with a memory of its own)

    @property
    def stage_widths(self) -> list[int]:
        """Channels of each trunk stage's output, first stage first."""
        return stage_widths(self.trunk)

    @property
    def decoder_widths(self) -> tuple[int, int, int]:
        """Widths SAM2's decoder reads at strides 4, 8, 16 (after its conv_s0 / conv_s1)."""
        return self.d_model // 8, self.d_model // 4, self.d_model

    def block_input_sizes(self) -> list[int]:
        """Side of each Hiera block's input token grid: stride 4 after the patch embedding,
        halved after every block that pools its queries."""
        side, sides = self.image_size // 4, []
        for block in self.trunk.blocks:
            sides.append(side)
            if block.q_stride:
                side //= block.q_stride[0]
        return sides


class Adapter(nn.Module, ABC):
    """A trainable RGB-D adapter of the frozen SAM2 (see the module docstring)."""

    kind: ClassVar[str]
    method: ClassVar[str]  # the method's name in the literature, for reports ("M4-SAM", "SAM-DAQ")
    config_type: ClassVar[type[AdapterConfig]]
    memory: ClassVar[str] = "sam2"  # temporal memory of learned mode: "sam2" = SAM2's memory bank

    def __init__(self, config: AdapterConfig):
        super().__init__()
        self.config = config

    @abstractmethod
    def attach(self, geometry: TrunkGeometry) -> None:
        """Hook into the trunk's blocks; called once, by the model that owns both."""

    def encode(self, model: "M4SAM", rgb: torch.Tensor, depth: torch.Tensor,
               modality_present: torch.Tensor) -> EncodedFrame:
        """B RGB-D frames (an absent modality's input already zeroed; modality_present (B, 2))
        -> the frame the decoder reads. Default: the pair through SAM2's whole encoder as one
        batch of two, ``fuse`` of the FPN levels, SAM2's high-res projections."""
        batch = rgb.shape[0]
        with routing("pair"):
            backbone = model.image_encoder(torch.cat([rgb, depth]))
        levels = backbone["backbone_fpn"]
        fused = self.fuse([f[:batch] for f in levels], [f[batch:] for f in levels], modality_present)
        return model.project_fpn(fused, backbone["vision_pos_enc"][-1][:batch])

    def encode_rgb(self, model: "M4SAM", rgb: torch.Tensor) -> EncodedFrame:
        """``encode`` of frames without depth, computing no depth. Default: SAM2's encoder on the
        RGB alone, then ``refine`` of its FPN levels."""
        with routing("rgb"):
            backbone = model.image_encoder(rgb)
        return model.project_fpn(self.refine(list(backbone["backbone_fpn"])), backbone["vision_pos_enc"][-1])

    def fuse(self, rgb_levels: list[torch.Tensor], depth_levels: list[torch.Tensor],
             modality_present: torch.Tensor) -> list[torch.Tensor]:
        """For the default ``encode``: per-modality FPN levels (finest first, each (B, C, H_l, W_l))
        and modality_present (B, 2) -> the fused FPN levels."""
        raise NotImplementedError(f"adapter {self.kind!r} must implement fuse/refine or override encode/encode_rgb")

    def refine(self, rgb_levels: list[torch.Tensor]) -> list[torch.Tensor]:
        """For the default ``encode_rgb``: ``fuse`` with depth marked absent."""
        raise NotImplementedError(f"adapter {self.kind!r} must implement fuse/refine or override encode/encode_rgb")

    def new_memory(self, num_memory_frames: int):
        """An empty temporal memory of this adapter's own (``model.memory.StreamMemory``); only
        called when ``memory`` is not "sam2"."""
        raise NotImplementedError(f"adapter {self.kind!r} declares memory {self.memory!r} but makes none")

    def trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Every parameter of the adapter trains; SAM2 stays frozen."""
        return self.named_parameters()
