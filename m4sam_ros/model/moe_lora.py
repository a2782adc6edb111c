"""Modality-aware mixture of convolutional LoRA experts on Hiera's attention ``qkv``.

RGB and depth share one frozen Hiera (one batch of two: B RGB then B depth). Each block
gets a low-rank update of its ``qkv`` projection whose bottleneck is a k x k conv over the
block's full (H, W) token grid, so the adapter sees local spatial context that a linear
LoRA cannot (depth edges, object boundaries). A dispatcher sends the RGB half of the batch
to the RGB experts and the depth half to the depth experts (plus, optionally, every
sample to shared experts); inside a group a per-sample router weights the experts.
``routing`` switches this for a block of code: "rgb" - the whole batch is RGB (frames
without depth need no depth pass); "off" - no update at all (SAM2's own encoder).

The adapter is attached with forward hooks, so the frozen SAM2 modules and their
state-dict keys stay untouched and an official checkpoint loads strictly:
``norm1`` hook  -> compute the update on the full token grid, window it like the block does;
``attn.qkv`` hook -> add it to the qkv output.
Everything is tensor arithmetic with static shapes: no data-dependent branches, so the
encoder exports to ONNX.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from sam2.modeling.backbones.hieradet import MultiScaleBlock
from sam2.modeling.backbones.utils import window_partition
from torch import nn
from torch.utils.hooks import RemovableHandle

from m4sam_ros.model.config import M4SAMConfig


class ConvLoRAExpert(nn.Module):
    """down (C_in -> r) -> k x k conv on the token grid -> GELU -> up (r -> C_out).

    ``up`` starts at zero, so a fresh expert adds exactly nothing.
    """

    def __init__(self, dim_in: int, dim_out: int, rank: int, kernel_size: int, depthwise: bool):
        super().__init__()
        self.down = nn.Linear(dim_in, rank, bias=False)
        self.conv = nn.Conv2d(rank, rank, kernel_size, padding=kernel_size // 2,
                              groups=rank if depthwise else 1, bias=False)
        self.up = nn.Linear(rank, dim_out, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.down(x).permute(0, 3, 1, 2)  # (B, r, H, W)
        h = F.gelu(self.conv(h)).permute(0, 2, 3, 1)  # (B, H, W, r)
        return self.up(h)  # (B, H, W, C_out)


class ExpertRouter(nn.Module):
    """Per-sample expert weights: softmax over pooled tokens, top-k kept and renormalised.

    Top-k is a mask built with ``scatter`` (not a Python loop over chosen experts), so all
    experts run and the graph is the same for every input.
    """

    def __init__(self, dim: int, num_experts: int, top_k: int):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, {num_experts}], got {top_k}")
        self.proj = nn.Linear(dim, num_experts)
        self.top_k = top_k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.proj(x.mean(dim=(1, 2))).softmax(dim=-1)  # (B, E)
        if self.top_k < weights.shape[-1]:
            chosen = weights.topk(self.top_k, dim=-1).indices  # (B, k)
            keep = torch.zeros_like(weights).scatter(-1, chosen, 1.0)
            weights = weights * keep
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights


class ExpertGroup(nn.Module):
    """The experts of one modality (or the shared ones) and their router."""

    def __init__(self, dim_in: int, dim_out: int, num_experts: int, config: M4SAMConfig):
        super().__init__()
        self.router = ExpertRouter(dim_in, num_experts, min(config.router_top_k, num_experts))
        self.experts = nn.ModuleList(
            ConvLoRAExpert(dim_in, dim_out, config.lora_rank, config.kernel_size_of_expert(i),
                           depthwise=config.expert_conv == "depthwise")
            for i in range(num_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.router(x)  # (B, E)
        out = weights[:, 0, None, None, None] * self.experts[0](x)
        for index in range(1, len(self.experts)):
            out = out + weights[:, index, None, None, None] * self.experts[index](x)
        return out  # (B, H, W, C_out)


class ModalityDispatcher(nn.Module):
    """MoE-LoRA update of one Hiera block's qkv.

    Input is the batch of two modalities, (2B, H, W, C_in): the first half goes to the RGB
    experts, the second half to the depth experts; shared experts see all samples. Routing
    "rgb": the batch is (B, ...) RGB, all of it to the RGB experts; "off": no update.
    """

    def __init__(self, dim_in: int, dim_out: int, window_size: int, config: M4SAMConfig):
        super().__init__()
        self.rgb = ExpertGroup(dim_in, dim_out, config.experts_per_modality, config)
        self.depth = ExpertGroup(dim_in, dim_out, config.experts_per_modality, config)
        self.shared = ExpertGroup(dim_in, dim_out, config.shared_experts, config) if config.shared_experts else None
        self.scale = config.lora_scale
        self.window_size = window_size
        self.routing = "pair"  # set by ``routing``
        self._update: torch.Tensor | None = None  # handed from the norm1 hook to the qkv hook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.routing == "rgb":
            update = self.rgb(x)
        else:
            if x.shape[0] % 2:  # a shape, not a value: static under tracing
                raise ValueError(f"MoE-LoRA pair routing needs B RGB + B depth samples, got a batch of {x.shape[0]}; "
                                 "encode one modality with M4SAM.encode_rgb or encode_sam2")
            half = x.shape[0] // 2
            update = torch.cat([self.rgb(x[:half]), self.depth(x[half:])], dim=0)  # (2B, H, W, C_out)
        if self.shared is not None:
            update = update + self.shared(x)
        return update * self.scale

    def attach(self, block: MultiScaleBlock) -> list[RemovableHandle]:
        """Hook into ``block`` (norm1 output -> update, added to attn.qkv output)."""
        return [block.norm1.register_forward_hook(self._on_norm1),
                block.attn.qkv.register_forward_hook(self._on_qkv)]

    def _on_norm1(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if self.routing == "off":
            return
        update = self(output)  # (2B, H, W, 3C) on the full token grid
        if self.window_size > 0:  # the block windows its tokens before qkv: do the same
            update, _ = window_partition(update, self.window_size)
        self._update = update

    def _on_qkv(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if self.routing == "off":
            return output
        if self._update is None:
            raise RuntimeError("MoE-LoRA: qkv ran without its block's norm1; call the Hiera blocks, not attn alone")
        update, self._update = self._update, None
        return output + update


def attach_moe_lora(blocks: nn.ModuleList, config: M4SAMConfig) -> tuple[nn.ModuleList, list[RemovableHandle]]:
    """One dispatcher per Hiera block, hooked in; returns (dispatchers, hook handles)."""
    dispatchers = nn.ModuleList()
    handles: list[RemovableHandle] = []
    for block in blocks:
        dispatcher = ModalityDispatcher(block.dim, 3 * block.dim_out, block.window_size, config)
        handles += dispatcher.attach(block)
        dispatchers.append(dispatcher)
    return dispatchers, handles


ROUTINGS = ("pair", "rgb", "off")


@contextmanager
def routing(dispatchers: nn.ModuleList, mode: str) -> Iterator[None]:
    """Within the block the encoder's batch is ``mode``: "pair" (B RGB then B depth, the
    default), "rgb" (B RGB, no depth half) or "off" (adapters bypassed: SAM2's encoder)."""
    if mode not in ROUTINGS:
        raise ValueError(f"routing must be one of {ROUTINGS}, got {mode!r}")
    for dispatcher in dispatchers:
        dispatcher.routing = mode
    try:
        yield
    finally:
        for dispatcher in dispatchers:
            dispatcher.routing = "pair"
