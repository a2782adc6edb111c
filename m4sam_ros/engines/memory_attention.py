"""SAM2's memory attention with a static-shape memory bank, for export.

SAM2 concatenates however many memories exist (1 to 7 spatial frames, 1 to 16 object
pointers), so the attention's key length changes from frame to frame. An exported graph
needs fixed shapes, so the bank is packed into fixed slots:

    memory (B, N, mem_dim) = [spatial slot 0 .. M-1: H*W tokens each | pointer slot 0 .. P-1: C/mem_dim tokens each]

with a validity mask (B, N) that sends empty slots to -1e4 before the softmax, where they
get exactly zero weight in float32, so the result equals SAM2's on the unpadded bank.
``pack_memory`` (PyTorch, cheap) gathers the bank the way SAM2's
``_prepare_memory_conditioned_features`` does in streaming evaluation (including the
temporal encodings); ``StaticMemoryAttention`` (exported) is the transformer itself,
reusing SAM2's weights, with real-valued RoPE (``rope.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from sam2.modeling.sam2_base import SAM2Base
from sam2.modeling.sam2_utils import get_1d_sine_pe
from sam2.modeling.sam.transformer import RoPEAttention
from torch import nn

from m4sam_ros.engines.rope import rope_tables, rotate
from m4sam_ros.model.memory import MemoryView

# Added to the logits of empty slots; exp(-1e4) is exactly 0 in float32 and float16, and
# unlike -inf it cannot turn a row into NaN.
_EMPTY_SLOT_LOGIT = -1e4


@dataclass(frozen=True)
class MemorySlots:
    """Fixed capacity of the exported memory bank.

    conditioning_frames: conditioning frames attended to (the tracker keeps one).
    recent_frames: non-conditioning spatial memories (the bank's num_memory_frames; SAM2: num_maskmem - 1).
    object_pointers: pointer slots (SAM2: conditioning frames + max_obj_ptrs_in_encoder - 1).
    """

    conditioning_frames: int
    recent_frames: int
    object_pointers: int

    def __post_init__(self) -> None:
        if self.conditioning_frames < 1 or self.recent_frames < 0 or self.object_pointers < 1:
            raise ValueError(f"MemorySlots needs conditioning_frames >= 1, recent_frames >= 0 and "
                             f"object_pointers >= 1, got {self}")

    @classmethod
    def for_bank(cls, model: SAM2Base, num_memory_frames: int | None = None) -> "MemorySlots":
        """Room for what the tracker's ``MemoryBank`` holds: its conditioning frame, ``num_memory_frames``
        recent spatial memories (None: as many as SAM2 has temporal encodings for) and the object
        pointers it keeps whatever that number. Memory attention costs what its slots hold, so a
        bank of fewer frames gets a graph of fewer slots."""
        frames = model.num_maskmem - 1 if num_memory_frames is None else num_memory_frames
        if not 1 <= frames <= model.num_maskmem - 1:
            raise ValueError(f"num_memory_frames must be in [1, {model.num_maskmem - 1}], got {frames}")
        return cls(conditioning_frames=1, recent_frames=frames, object_pointers=model.max_obj_ptrs_in_encoder)

    @property
    def spatial_frames(self) -> int:
        return self.conditioning_frames + self.recent_frames


class PackedMemory(NamedTuple):
    """The bank as fixed-shape tensors (batch first)."""

    memory: torch.Tensor  # (B, N, mem_dim)
    memory_pos: torch.Tensor  # (B, N, mem_dim) spatial + temporal position encodings
    memory_mask: torch.Tensor  # (B, N) float, 1 = real token, 0 = empty slot


def memory_tokens(model: SAM2Base, slots: MemorySlots, feat_size: tuple[int, int]) -> tuple[int, int]:
    """(spatial tokens M*H*W, pointer tokens P*C/mem_dim) of the packed bank."""
    ptr_tokens = model.hidden_dim // model.mem_dim
    return slots.spatial_frames * feat_size[0] * feat_size[1], slots.object_pointers * ptr_tokens


def _check_streaming(model: SAM2Base, memory: MemoryView, slots: MemorySlots) -> None:
    """The packer mirrors SAM2's forward streaming evaluation; refuse anything else clearly."""
    if model.training:
        raise ValueError("pack_memory mirrors SAM2's evaluation path; call model.eval() first")
    if model.memory_temporal_stride_for_eval != 1:
        raise ValueError(f"pack_memory supports memory_temporal_stride_for_eval = 1, "
                         f"got {model.memory_temporal_stride_for_eval}")
    cond = memory.output_dict["cond_frame_outputs"]
    if not cond:
        raise ValueError("the memory bank has no conditioning frame; pass memory=None on a conditioning frame")
    if len(cond) > slots.conditioning_frames:
        raise ValueError(f"the memory bank has {len(cond)} conditioning frames but the exported graph has slots "
                         f"for {slots.conditioning_frames}; re-export with more conditioning frames")
    if model.max_cond_frames_in_attn != -1 and len(cond) > model.max_cond_frames_in_attn:
        raise ValueError(f"{len(cond)} conditioning frames exceed max_cond_frames_in_attn = "
                         f"{model.max_cond_frames_in_attn}; SAM2 would select among them, the packer does not")


def _tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, HW, C)


def _spatial_memories(model: SAM2Base, memory: MemoryView) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(features, position) token pairs, each (B, HW, mem_dim), SAM2's selection and encodings."""
    cond = memory.output_dict["cond_frame_outputs"]
    recent = memory.output_dict["non_cond_frame_outputs"]
    chosen = [(0, out) for out in cond.values()]  # conditioning frames sit at temporal position 0
    for t_pos in range(1, model.num_maskmem):  # the last num_maskmem - 1 frames, oldest first
        out = recent.get(memory.frame_index - (model.num_maskmem - t_pos))
        if out is not None:
            chosen.append((t_pos, out))
    pairs = []
    for t_pos, out in chosen:
        if "maskmem_features" not in out:
            raise ValueError(f"memory at temporal position {t_pos} has no spatial features (keys {sorted(out)}); "
                             "SAM2 reads spatial memory for the last num_maskmem - 1 frames")
        features = _tokens(out["maskmem_features"])
        position = _tokens(out["maskmem_pos_enc"][-1]) + model.maskmem_tpos_enc[model.num_maskmem - t_pos - 1]
        pairs.append((features, position))
    return pairs


def _object_pointers(model: SAM2Base, memory: MemoryView, batch: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(pointer tokens, position) each (B, P*C/mem_dim, mem_dim), or None when there is no pointer."""
    frame_index = memory.frame_index
    cond = memory.output_dict["cond_frame_outputs"]
    recent = memory.output_dict["non_cond_frame_outputs"]
    max_ptrs = min(memory.num_frames, model.max_obj_ptrs_in_encoder)
    distances_and_ptrs = [(frame_index - t if model.use_signed_tpos_enc_to_obj_ptrs else abs(frame_index - t),
                           out["obj_ptr"])
                          for t, out in cond.items()
                          if not model.only_obj_ptrs_in_the_past_for_eval or t <= frame_index]
    for distance in range(1, max_ptrs):
        t = frame_index - distance
        if t < 0 or t >= memory.num_frames:
            break
        out = recent.get(t)
        if out is not None:
            distances_and_ptrs.append((distance, out["obj_ptr"]))
    if not distances_and_ptrs:
        return None
    distances, ptrs = zip(*distances_and_ptrs)
    pointers = torch.stack(ptrs, dim=0)  # (P, B, C)
    channels, mem_dim = model.hidden_dim, model.mem_dim
    if model.add_tpos_enc_to_obj_ptrs:
        tpos_dim = channels if model.proj_tpos_enc_in_obj_ptrs else mem_dim
        steps = torch.tensor(distances, device=pointers.device, dtype=torch.float32) / (max_ptrs - 1)
        position = model.obj_ptr_tpos_proj(get_1d_sine_pe(steps, dim=tpos_dim))  # (P, mem_dim)
        position = position.unsqueeze(1).expand(-1, batch, mem_dim)  # (P, B, mem_dim)
    else:
        position = pointers.new_zeros(len(distances), batch, mem_dim)
    split = channels // mem_dim  # a pointer becomes `split` memory tokens of width mem_dim
    pointers = pointers.reshape(-1, batch, split, mem_dim).permute(1, 0, 2, 3).flatten(1, 2)  # (B, P*split, mem_dim)
    position = position.permute(1, 0, 2).unsqueeze(2).expand(-1, -1, split, -1).flatten(1, 2)  # (B, P*split, mem_dim)
    return pointers, position


def pack_memory(model: SAM2Base, memory: MemoryView, slots: MemorySlots, feat_size: tuple[int, int],
                batch: int) -> PackedMemory:
    """The bank (SAM2 layout) -> fixed-shape tensors for ``StaticMemoryAttention``."""
    _check_streaming(model, memory, slots)
    spatial = _spatial_memories(model, memory)
    pointers = _object_pointers(model, memory, batch)
    if len(spatial) > slots.spatial_frames:
        raise ValueError(f"the memory bank holds {len(spatial)} spatial memories but the exported graph has slots for "
                         f"{slots.spatial_frames} ({slots.recent_frames} recent frames); create the engines with "
                         f"num_memory_frames = the tracker's")
    hw = feat_size[0] * feat_size[1]
    spatial_tokens, pointer_tokens = memory_tokens(model, slots, feat_size)
    device = model.maskmem_tpos_enc.device
    packed = torch.zeros(batch, spatial_tokens + pointer_tokens, model.mem_dim, device=device)
    position = torch.zeros_like(packed)
    mask = torch.zeros(batch, spatial_tokens + pointer_tokens, device=device)
    for slot, (features, pos) in enumerate(spatial):
        if features.shape != (batch, hw, model.mem_dim):
            raise ValueError(f"spatial memory has {tuple(features.shape)} tokens, expected ({batch}, {hw}, "
                             f"{model.mem_dim}) for feature size {feat_size}")
        packed[:, slot * hw:(slot + 1) * hw] = features
        position[:, slot * hw:(slot + 1) * hw] = pos
        mask[:, slot * hw:(slot + 1) * hw] = 1.0
    if pointers is not None:
        tokens, pos = pointers
        if tokens.shape[1] > pointer_tokens:
            raise ValueError(f"{tokens.shape[1]} object-pointer tokens exceed the {pointer_tokens} exported slots")
        packed[:, spatial_tokens:spatial_tokens + tokens.shape[1]] = tokens
        position[:, spatial_tokens:spatial_tokens + tokens.shape[1]] = pos
        mask[:, spatial_tokens:spatial_tokens + tokens.shape[1]] = 1.0
    return PackedMemory(packed, position, mask)


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(1, 2)  # (B, heads, N, C/heads)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)  # (B, N, C)


class StaticMemoryAttention(nn.Module):
    """SAM2's ``MemoryAttention`` forward (inference) on a packed bank; same weights, export-friendly."""

    def __init__(self, model: SAM2Base, slots: MemorySlots, feat_size: tuple[int, int]):
        super().__init__()
        self.attention = model.memory_attention
        self.feat_size = feat_size
        self.num_rope_keys, self.num_pointer_tokens = memory_tokens(model, slots, feat_size)
        height, width = feat_size
        first = self.attention.layers[0]
        for layer in self.attention.layers:
            for attn in (layer.self_attn, layer.cross_attn_image):
                if not isinstance(attn, RoPEAttention):
                    raise TypeError(f"StaticMemoryAttention expects SAM2's RoPEAttention, got {type(attn).__name__}")
            if layer.pos_enc_at_cross_attn_queries or not layer.pos_enc_at_cross_attn_keys:
                raise ValueError("StaticMemoryAttention follows SAM2's configs: position encoding on the "
                                 "cross-attention keys, not on its queries")
        # SAM2's own angle tables (complex) at this feature size, turned into real cos/sin once;
        # one frame's worth for the keys too (``rotate`` repeats it over the memory frames).
        # compute_cis builds them on the CPU, so they go where the weights are (SAM2's RoPEAttention
        # moves its table to q.device in every forward; this module is never moved by its callers)
        device = self.attention.norm.weight.device
        query = rope_tables(first.self_attn.compute_cis(end_x=width, end_y=height))
        key = rope_tables(first.cross_attn_image.compute_cis(end_x=width, end_y=height))
        for name, table in zip(("query_cos", "query_sin", "key_cos", "key_sin"), query + key):
            self.register_buffer(name, table.to(device), persistent=False)  # (HW, D/2)

    def _attend(self, attn: RoPEAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                key_tables: tuple[torch.Tensor, torch.Tensor], rope_keys: int,
                bias: torch.Tensor | None) -> torch.Tensor:
        """One RoPE attention; the first ``rope_keys`` keys are rotated (spatial memory), the
        rest (object pointers) are not."""
        heads = attn.num_heads
        q = rotate(_heads(attn.q_proj(q), heads), self.query_cos, self.query_sin)  # (B, h, HW, d)
        k = _heads(attn.k_proj(k), heads)  # (B, h, N, d)
        v = _heads(attn.v_proj(v), heads)
        if rope_keys == k.shape[-2]:
            k = rotate(k, *key_tables)
        else:  # object-pointer tokens carry no spatial position: SAM2 leaves them unrotated
            k = torch.cat([rotate(k[:, :, :rope_keys], *key_tables), k[:, :, rope_keys:]], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, h, HW, d)
        return attn.out_proj(_merge_heads(out))

    def forward(self, image_embed: torch.Tensor, pos_enc: torch.Tensor, memory: torch.Tensor,
                memory_pos: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """image_embed, pos_enc (B, C, H, W); memory, memory_pos (B, N, mem_dim); memory_mask (B, N)
        -> memory-conditioned features (B, C, H, W)."""
        b, c, h, w = image_embed.shape
        x = _tokens(image_embed)  # (B, HW, C)
        query_pos = _tokens(pos_enc)
        if self.attention.pos_enc_at_input:
            x = x + 0.1 * query_pos
        bias = ((1.0 - memory_mask) * _EMPTY_SLOT_LOGIT)[:, None, None, :]  # (B, 1, 1, N)
        keys = memory + memory_pos
        for layer in self.attention.layers:
            y = layer.norm1(x)
            qk = y + query_pos if layer.pos_enc_at_attn else y
            x = x + self._attend(layer.self_attn, qk, qk, y, (self.query_cos, self.query_sin), h * w, None)
            y = layer.norm2(x)
            x = x + self._attend(layer.cross_attn_image, y, keys, memory, (self.key_cos, self.key_sin),
                                  self.num_rope_keys, bias)
            y = layer.norm3(x)
            x = x + layer.linear2(layer.activation(layer.linear1(y)))
        x = self.attention.norm(x)
        return x.transpose(1, 2).reshape(b, c, h, w)
