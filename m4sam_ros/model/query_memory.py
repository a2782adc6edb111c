"""QTM, SAM-DAQ's query-driven temporal memory: learned queries instead of SAM2's memory bank
and prompts (Lin et al., AAAI 2026; implemented from the paper's text).

Frame-level queries Q_f (N_f x C, static) read the highest-level image embedding E_I^4 (the
stride-16 fused features) by token-level attention; video-level queries Q_v (N_v x C) are the
stream's whole temporal state, read against those frame features and updated after every frame
from SAM2's memory encoder output:

    E_f        = Linear(Q_f' . E_I^4)                  Q_f' = Linear(Q_f), softmax attention over pixels
    Q~_v       = CA(Q_v, E_f) + Q_v
    E_L        = Q~_v * E_I^4                          element-wise, averaged over the pixels
    F_m        = Linear(ME(E_I,t, P_t))                SAM2's memory encoder, unchanged
    Q_v,t+1    = LN(Q_v,t + FFN(SA(CA(Q_v,t, F_m))))

E_L (N_v tokens) are the sparse prompt embeddings of SAM2's unchanged mask decoder, with no
dense prompt (SAM2's no-mask embedding), as the paper finds best. Departures from the text,
where it leaves the detail open or a robot needs it: the element-wise product with the
(C x H x W) embedding is reduced to N_v tokens by its mean over the pixels; the updated state
is layer-normalised (post-norm, as in a transformer decoder layer), so its scale stays fixed
however long the stream runs (the equation has no norm; an additive update without one drifts).

The state is one (B, N_v, C) tensor: bounded by construction, whatever the stream length. A
conditioning frame resets it to the learned Q_v; a mask from outside (``reset(initial_mask)``)
is the conditioning frame's output and seeds the queries through the memory encoder.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from sam2.modeling.sam2_base import NO_OBJ_SCORE
from torch import nn

if TYPE_CHECKING:
    from m4sam_ros.model.adapters.daq import SAMDAQ
    from m4sam_ros.model.m4sam import M4SAM, DecoderOutput, EncodedFrame
    from m4sam_ros.model.memory import MemoryAttentionFn
    from m4sam_ros.stopwatch import Stopwatch

_QUERY_INIT_STD = 0.02


class QueryTemporalMemory(nn.Module):
    """QTM's parameters: the queries, the frame read and the temporal update (module docstring)."""

    def __init__(self, d_model: int, mem_dim: int, frame_queries: int, video_queries: int, num_heads: int,
                 ffn_dim: int):
        super().__init__()
        self.frame_queries = nn.Parameter(torch.randn(frame_queries, d_model) * _QUERY_INIT_STD)  # Q_f
        self.video_queries = nn.Parameter(torch.randn(video_queries, d_model) * _QUERY_INIT_STD)  # Q_v,0
        self.frame_query_proj = nn.Linear(d_model, d_model)  # Q_f'
        self.frame_out = nn.Linear(d_model, d_model)  # E_f = Linear(...)
        self.video_read = nn.MultiheadAttention(d_model, num_heads, batch_first=True)  # CA(Q_v, E_f)
        self.memory_proj = nn.Linear(mem_dim, d_model)  # F_m = Linear(ME(...))
        self.update_cross = nn.MultiheadAttention(d_model, num_heads, batch_first=True)
        self.update_self = nn.MultiheadAttention(d_model, num_heads, batch_first=True)
        self.update_ffn = nn.Sequential(nn.Linear(d_model, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, d_model))
        self.update_norm = nn.LayerNorm(d_model)

    def initial_state(self, batch: int) -> torch.Tensor:
        """The learned video-level queries for ``batch`` streams: (B, N_v, C)."""
        return self.video_queries.expand(batch, -1, -1)

    def prompt(self, state: torch.Tensor, image_embed: torch.Tensor) -> torch.Tensor:
        """E_L (B, N_v, C) from the video-level queries (B, N_v, C) and E_I^4 (B, C, H, W)."""
        tokens = image_embed.flatten(2).transpose(1, 2)  # (B, HW, C)
        queries = self.frame_query_proj(self.frame_queries).expand(tokens.shape[0], -1, -1)
        frame_features = self.frame_out(F.scaled_dot_product_attention(queries, tokens, tokens))  # E_f (B, N_f, C)
        read, _ = self.video_read(state, frame_features, frame_features, need_weights=False)
        return (read + state) * tokens.mean(dim=1, keepdim=True)

    def update(self, state: torch.Tensor, memory_features: torch.Tensor) -> torch.Tensor:
        """Q_v,t+1 from Q_v,t (B, N_v, C) and the memory encoder's output (B, mem_dim, H, W)."""
        memory = self.memory_proj(memory_features.flatten(2).transpose(1, 2))  # F_m (B, HW, C)
        h, _ = self.update_cross(state, memory, memory, need_weights=False)
        h, _ = self.update_self(h, h, h, need_weights=False)
        return self.update_norm(state + self.update_ffn(h))


def decode_with_prompts(model: "M4SAM", frame: "EncodedFrame", sparse: torch.Tensor) -> "DecoderOutput":
    """SAM2's mask decoder, unchanged, on the frame's no-memory features (image_embed + SAM2's
    no-memory embedding, as SAM2 segments a lone image) with ``sparse`` (B, N, C) as the prompt
    tokens and SAM2's no-mask embedding as the dense prompt.

    The output is the decoder's single-mask token, as SAM2 decodes a prompt of several tokens;
    ``predict_masks`` is called directly because the decoder's ``forward`` would, in eval mode
    only, swap in a multimask output when that mask looks unstable, a switch training never
    sees. Masks of frames whose object score says "absent" are SAM2's NO_OBJ_SCORE, and the
    object pointer is SAM2's, so the output means what ``M4SAM.decode``'s does."""
    from m4sam_ros.model.m4sam import DecoderOutput

    pix_feat = model.condition_on_memory(frame, None)
    batch, _, height, width = pix_feat.shape
    dense = model.sam_prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, height, width)
    masks, _, tokens, object_score_logits = model.sam_mask_decoder.predict_masks(
        image_embeddings=pix_feat, image_pe=model.sam_prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense, repeat_image=False, high_res_features=[frame.high_res_s4, frame.high_res_s8])
    appearing = object_score_logits > 0  # (B, 1)
    low_res = torch.where(appearing[:, :, None, None], masks[:, :1], NO_OBJ_SCORE).float()
    high_res = F.interpolate(low_res, size=(model.image_size, model.image_size), mode="bilinear", align_corners=False)
    weight = object_score_logits.sigmoid() if model.soft_no_obj_ptr else appearing.to(pix_feat.dtype)
    obj_ptr = model.obj_ptr_proj(tokens[:, 0])
    if model.fixed_no_obj_ptr:
        obj_ptr = weight * obj_ptr
    obj_ptr = obj_ptr + (1 - weight) * model.no_obj_ptr
    return DecoderOutput(low_res, high_res, obj_ptr, object_score_logits)


def _untimed(stage: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


class QueryMemory:
    """``StreamMemory`` of SAM-DAQ: the video-level queries of one stream (module docstring)."""

    def __init__(self, adapter: "SAMDAQ"):
        self.adapter = adapter
        self.queries: torch.Tensor | None = None  # (B, N_v, C)

    def step(self, model: "M4SAM", frame: "EncodedFrame", *, conditioning: bool, mask: torch.Tensor | None = None,
             attention: "MemoryAttentionFn | None" = None, watch: "Stopwatch | None" = None) -> "DecoderOutput":
        """One frame: prompt the decoder with the queries, then update them from the memory encoder.

        conditioning: the frame restarts the stream (the queries start from their learned value);
            its mask is ``mask`` (B, 1, S, S) in {0, 1} when given, else the model's own decoding.
        attention: unused (QTM has no memory attention).
        watch: times "memory_attention" (the queries read the frame: QTM's counterpart of SAM2's
            memory attention), "decoder" and "memory_encoder" (memory encoder + query update).
        While gradients are recorded (training) the output carries the self-inference predictions
        (``aux_logits``); inference never computes them."""
        if mask is not None and not conditioning:
            raise ValueError("a mask can only be given for a conditioning frame")
        if not conditioning and self.queries is None:
            raise RuntimeError("QueryMemory.step before a conditioning frame")
        lap = watch if watch is not None else _untimed
        qtm = self.adapter.qtm
        state = qtm.initial_state(frame.image_embed.shape[0]) if conditioning else self.queries
        if mask is not None:
            with lap("decoder"):
                decoded = model.mask_as_output(frame, mask)
        else:
            with lap("memory_attention"):
                prompts = qtm.prompt(state, frame.image_embed)
            with lap("decoder"):
                decoded = decode_with_prompts(model, frame, prompts)
            if torch.is_grad_enabled():
                levels = (frame.high_res_s4, frame.high_res_s8, frame.image_embed)
                decoded = decoded._replace(aux_logits=self.adapter.intermediate_logits(levels))
        with lap("memory_encoder"):
            features, _ = model.encode_memory(frame, decoded, from_mask=mask is not None)
            self.queries = qtm.update(state, features)
        return decoded

    def clear(self) -> None:
        self.queries = None

    def __len__(self) -> int:
        """1 once a stream has started: one query state, however long the stream."""
        return int(self.queries is not None)

    def nbytes(self) -> int:
        return 0 if self.queries is None else self.queries.numel() * self.queries.element_size()
