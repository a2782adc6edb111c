"""FP16 graphs for strongly typed TensorRT builds, cast at the torch level.

A strongly typed TensorRT network (TensorRT >= 10; TensorRT 11 has no other kind for FP16)
runs every tensor in the type the ONNX gives it, so the precision of each operation is
decided here, once, where it can be checked on a CPU: ONNX Runtime runs these graphs, and
the parity check compares them with the fp32 PyTorch model.

- Parameters (Linear and convolution weights, position embeddings) and the activations
  between them are fp16: a layer with fp16 weights casts its input down where it arrives in
  fp32. What SAM2 itself computes in fp32 stays so (its FPN's top-down upsampling and sum,
  its sine position encodings). The graph's inputs and outputs stay float32, cast at its
  boundary, so every engine keeps float32 I/O.
- LayerNorm runs in fp32 (its input cast up, its output down): its mean of squares is where
  fp16 overflows.
- Attention softmax runs in fp32: the logits come out of an fp16 matmul, the softmax is
  computed in fp32 and the probabilities are cast down to weigh the values.
- The MoE routers run in fp32 whole (pooled tokens, projection, softmax, top-k): a flipped
  top-k swaps an expert instead of adding a rounding error. With fp16 routers none flipped
  in our checks (0 of 70 decisions on the demo weights, 0 of 168 on Hiera-T with random
  adapters, random and synthetic frames), so this is insurance for trained routers with
  closer margins, at no measurable cost: they are a negligible share of the work.
- Buffers (the memory attention's RoPE tables) stay fp32: rotary encoding is computed in
  fp32, as SAM2 computes it.

The residual stream itself is fp16 between the fp32 islands; ``residual_headroom`` says how
close the fp32 model's values come to fp16's largest finite value on given inputs.
"""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from m4sam_ros.model.adapters.moe_lora import ExpertRouter

if TYPE_CHECKING:
    from m4sam_ros.engines.graphs import GraphSpec

FP16_MAX = float(torch.finfo(torch.float16).max)  # 65504
# what runs in fp32 inside an fp16 graph: part of the exported graph's cache key
FP32_ISLANDS = ("LayerNorm", "softmax", "ExpertRouter", "buffers")
_ISLAND_TYPES = (nn.LayerNorm, ExpertRouter)


class Fp32Island(nn.Module):
    """``module`` run in float32 inside an fp16 graph: inputs cast up, outputs cast back."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.float()).to(x.dtype)


def _inputs_to_fp16(layer: nn.Module, args: tuple) -> tuple:
    return tuple(a.half() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


def _sdpa_fp32_softmax(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0, is_causal: bool = False,
                       scale: float | None = None, **unused) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` (inference, no causal mask) with the softmax in fp32."""
    if dropout_p or is_causal or unused:
        raise ValueError("the fp16 export's attention supports inference without causal masks only")
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    logits = (query * scale) @ key.transpose(-2, -1)
    logits = logits.float() if attn_mask is None else logits.float() + attn_mask.float()
    return logits.softmax(dim=-1).to(value.dtype) @ value


@contextlib.contextmanager
def fp32_softmax_attention() -> Iterator[None]:
    """While tracing an fp16 graph, every ``F.scaled_dot_product_attention`` (SAM2's Hiera and
    decoder call it through ``torch.nn.functional``, as our memory attention does) keeps its
    softmax in fp32."""
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _sdpa_fp32_softmax
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


class Fp16Graph(nn.Module):
    """An exported graph's module in fp16 with the fp32 islands above; float32 in and out.
    Works on a deep copy: the model the tracker runs is left as it is."""

    def __init__(self, module: nn.Module, islands: tuple[type[nn.Module], ...] = _ISLAND_TYPES):
        super().__init__()
        self.module = copy.deepcopy(module)
        kept = set()
        for parent in list(self.module.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, islands):
                    setattr(parent, name, Fp32Island(child))
                    kept |= {id(p) for p in child.parameters()}
        for parameter in self.module.parameters():
            if id(parameter) not in kept:
                parameter.data = parameter.data.half()
        for layer in self.module.modules():  # Linear, Conv, ...: where SAM2 hands them fp32, they cast it down
            if any(p.dtype == torch.float16 for p in layer.parameters(recurse=False)):
                layer.register_forward_pre_hook(_inputs_to_fp16)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        with fp32_softmax_attention():
            out = self.module(*(x.half() for x in inputs))
        return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()


def residual_headroom(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> float:
    """fp16's largest finite value over the largest |value| the fp32 ``module`` feeds a LayerNorm
    (the residual stream) on ``inputs``: above 1 it fits, and how many times over."""
    largest = 0.0

    def record(norm: nn.Module, args: tuple) -> None:
        nonlocal largest
        largest = max(largest, float(args[0].detach().abs().max()))

    hooks = [m.register_forward_pre_hook(record) for m in module.modules() if isinstance(m, nn.LayerNorm)]
    try:
        with torch.inference_mode():
            module(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return FP16_MAX / max(largest, 1e-30)


def fp16_spec(spec: "GraphSpec") -> "GraphSpec":
    """The fp16 version of an exported graph's spec (same inputs and outputs, float32 at the boundary)."""
    from m4sam_ros.engines.graphs import GraphSpec

    return GraphSpec(name=spec.name, module=Fp16Graph(spec.module).eval(), inputs=spec.inputs, outputs=spec.outputs,
                     signature={**spec.signature, "fp32_islands": ",".join(FP32_ISLANDS)}, precision="fp16")
