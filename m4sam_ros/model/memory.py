"""SAM2's streaming memory, bounded, and the one per-frame step the tracker and training share.

``MemoryBank.step(model, frame, conditioning=...)`` is the model-side sequence of a frame
- memory attention -> mask decoder -> memory encoder -> bank update - the way SAM2's
``track_step`` serves both its video predictor and its training: "trained the way the
tracker runs" holds by construction. Policy (when to re-initialise, timings,
post-processing) stays with the caller.

The bank keeps SAM2's streaming memory bounded (sam2#196 is what happens otherwise): the
conditioning frame, the last N frames' spatial memories, and the object pointers of the
last ``max_obj_ptrs_in_encoder - 1`` frames. SAM2 reads temporal positions from frame
index differences, so the bank re-indexes every step: the current frame sits at
``min(frames since the conditioning frame, max_obj_ptrs_in_encoder)`` and the conditioning
frame at 0. Indices, tensor count and bytes therefore stay constant however long the
stream runs; the only departure from SAM2's video predictor is that the conditioning
frame's pointer never looks further away than that cap. Like the video predictor, the bank
keeps memory features in bfloat16: half the bytes, and zero-shot propagation is SAM2's to the
bit. Training streams through the same step, so it sees (and back-propagates through) the
same rounding the tracker applies.
"""
from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from m4sam_ros.model.m4sam import M4SAM, DecoderOutput, EncodedFrame
    from m4sam_ros.stopwatch import Stopwatch

# Memory features are kept as SAM2's video predictor keeps them (its attention reads them
# promoted back to float32 next to the float32 object pointers).
STORAGE_DTYPE = torch.bfloat16
# What replaces ``M4SAM.condition_on_memory`` when an engine runs the memory attention.
MemoryAttentionFn = Callable[["EncodedFrame", "MemoryView | None"], torch.Tensor]


class StreamMemory(Protocol):
    """The temporal state of one stream, whatever the model variant keeps (``M4SAM.new_memory``)."""

    def step(self, model: "M4SAM", frame: "EncodedFrame", *, conditioning: bool, mask: torch.Tensor | None = None,
             attention: MemoryAttentionFn | None = None, watch: "Stopwatch | None" = None) -> "DecoderOutput":
        """Decode one frame against the memory, then store it (see ``MemoryBank.step``)."""

    def clear(self) -> None:
        """Forget everything; the next frame must be a conditioning frame."""

    def __len__(self) -> int:
        """Frames the memory holds (for diagnostics)."""

    def nbytes(self) -> int:
        """Bytes of tensors held (bounded by construction)."""


@dataclass
class MemoryView:
    """The memory bank in SAM2's own layout, for ``_prepare_memory_conditioned_features``.

    frame_index: index of the current frame; output_dict: {"cond_frame_outputs": {t: out},
    "non_cond_frame_outputs": {t: out}} with out = {"maskmem_features", "maskmem_pos_enc",
    "obj_ptr"}; num_frames: stream length as SAM2 sees it (bounds pointer look-back).
    """

    frame_index: int
    output_dict: dict
    num_frames: int


@dataclass
class MemoryEntry:
    """One frame's memory: spatial features (dropped once too old) and its object pointer."""

    features: torch.Tensor | None  # (1, mem_dim, S/16, S/16), STORAGE_DTYPE
    pos_enc: torch.Tensor | None  # (1, mem_dim, S/16, S/16)
    obj_ptr: torch.Tensor  # (1, C)

    def as_sam2(self) -> dict:
        if self.features is None:
            return {"obj_ptr": self.obj_ptr}
        return {"maskmem_features": self.features, "maskmem_pos_enc": [self.pos_enc], "obj_ptr": self.obj_ptr}

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.features, self.pos_enc, self.obj_ptr) if t is not None]


def _untimed(stage: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


class MemoryBank:
    """Conditioning frame + last N spatial memories + recent object pointers, bounded."""

    def __init__(self, num_memory_frames: int, num_maskmem: int, max_obj_ptrs: int):
        if not 1 <= num_memory_frames <= num_maskmem - 1:
            raise ValueError(f"num_memory_frames must be in [1, {num_maskmem - 1}] (SAM2 has temporal encodings "
                             f"for num_maskmem - 1 = {num_maskmem - 1} recent frames), got {num_memory_frames}")
        self.num_memory_frames = num_memory_frames
        self.num_maskmem = num_maskmem
        self.max_distance = max_obj_ptrs  # cap on frame-index distances shown to SAM2
        self.conditioning: MemoryEntry | None = None
        self.recent: deque[MemoryEntry] = deque(maxlen=max(max_obj_ptrs - 1, num_memory_frames))  # newest last
        self.frames_since_conditioning = 0  # capped at max_distance

    def step(self, model: "M4SAM", frame: "EncodedFrame", *, conditioning: bool, mask: torch.Tensor | None = None,
             attention: MemoryAttentionFn | None = None, watch: "Stopwatch | None" = None) -> "DecoderOutput":
        """One frame: decode it against the bank, then store its memory.

        conditioning: the frame (re)starts the memory as its conditioning frame; its mask is
            ``mask`` (B, 1, S, S) in {0, 1} when given (SAM2.1's mask-as-output path: a prior or
            a mask from outside), else the model's own prompt-free decoding without memory
            (pseudo-guided initialisation).
        attention: the memory attention to use (an engine), default ``model.condition_on_memory``.
        watch: times the stages "memory_attention", "decoder", "memory_encoder".
        """
        if mask is not None and not conditioning:
            raise ValueError("a mask can only be given for a conditioning frame")
        lap = watch if watch is not None else _untimed
        if mask is not None:
            with lap("decoder"):
                decoded = model.mask_as_output(frame, mask)
        else:
            attend = attention if attention is not None else model.condition_on_memory
            with lap("memory_attention"):
                pix_feat = attend(frame, None if conditioning else self.view())
            with lap("decoder"):
                decoded = model.decode(pix_feat, frame, is_init_frame=conditioning)
        with lap("memory_encoder"):
            features, pos_enc = model.encode_memory(frame, decoded, from_mask=mask is not None)
            entry = MemoryEntry(features.to(STORAGE_DTYPE), pos_enc, decoded.obj_ptr)
            if conditioning:
                self.set_conditioning(entry)
            else:
                self.add(entry)
        return decoded

    def clear(self) -> None:
        self.conditioning = None
        self.recent.clear()
        self.frames_since_conditioning = 0

    def set_conditioning(self, entry: MemoryEntry) -> None:
        """A new conditioning frame replaces the whole memory."""
        self.clear()
        self.conditioning = entry

    def add(self, entry: MemoryEntry) -> None:
        """Append a tracked frame; memories older than N keep only their object pointer."""
        if self.conditioning is None:
            raise RuntimeError("MemoryBank.add before a conditioning frame was set")
        self.recent.append(entry)
        if len(self.recent) > self.num_memory_frames:
            old = self.recent[-self.num_memory_frames - 1]
            old.features = old.pos_enc = None
        self.frames_since_conditioning = min(self.frames_since_conditioning + 1, self.max_distance)

    def view(self) -> MemoryView:
        """The bank in SAM2's layout for the *next* frame, re-indexed to bounded indices."""
        if self.conditioning is None:
            raise RuntimeError("MemoryBank.view with no conditioning frame")
        current = min(self.frames_since_conditioning + 1, self.max_distance)
        recent = {}
        for distance, entry in enumerate(reversed(self.recent), start=1):
            if distance >= current:
                break  # would collide with the conditioning frame's index (only after the cap)
            if entry.features is None and distance <= self.num_maskmem - 1:
                continue  # SAM2 would read spatial memory at this distance; N < num_maskmem - 1 drops it
            recent[current - distance] = entry.as_sam2()
        return MemoryView(frame_index=current,
                          output_dict={"cond_frame_outputs": {0: self.conditioning.as_sam2()},
                                       "non_cond_frame_outputs": recent},
                          num_frames=self.max_distance + 1)

    def __len__(self) -> int:
        """Frames with spatial memory (conditioning + recent)."""
        if self.conditioning is None:
            return 0
        return 1 + sum(entry.features is not None for entry in self.recent)

    def tensors(self) -> list[torch.Tensor]:
        entries = ([self.conditioning] if self.conditioning is not None else []) + list(self.recent)
        return [t for entry in entries for t in entry.tensors()]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())
