"""SAM2's own video predictor, fed one frame at a time: our benchmark's peer and our zero-shot reference.

``SAM2VideoPredictor`` (imported, never copied) is built for a video on disk: ``init_state``
loads every frame, ``add_new_mask`` conditions a frame, ``propagate_in_video`` is a generator
that reads ``inference_state["images"][t]`` when it reaches frame t. A robot has a stream,
not a file, so ``SAM2VideoStream`` hands the predictor a frame list that fills as frames
arrive and pulls one result per frame from the very same generator: every tracking decision
(memory selection, bfloat16 storage, binarised mask memory, its growing per-frame state) is
SAM2's. Frames are preprocessed by our ``model_inputs``, so the two trackers see identical
pixels. SAM2's hole filling (``fill_hole_area``, output post-processing through its CUDA
extension, which we do not build) is off.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator

import cv2
import numpy as np
import torch
from sam2.sam2_video_predictor import SAM2VideoPredictor

from m4sam_ros.model.config import M4SAMConfig
from m4sam_ros.model.m4sam import M4SAM, sam2_modules
from m4sam_ros.preprocess import model_inputs

PEER_STAGES = ("preprocess", "track", "postprocess")
OBJECT_ID = 1


def sam2_predictor(config: M4SAMConfig, weights_from: M4SAM | None = None, seed: int = 0) -> SAM2VideoPredictor:
    """SAM2's video predictor with the preset's architecture: the frozen SAM2 weights of
    ``weights_from`` (the same as our tracker's), or a random init from ``seed`` (same cost)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        predictor = SAM2VideoPredictor(fill_hole_area=0, **sam2_modules(config))
    if weights_from is not None:
        state = weights_from.state_dict()
        predictor.load_state_dict({k: state[k] for k in weights_from.frozen_keys()})
    return predictor.eval()


class _ArrivingFrames:
    """The predictor's ``images``: a fixed-length sequence whose frames are set as they arrive."""

    def __init__(self, num_frames: int):
        self.frames: list[torch.Tensor | None] = [None] * num_frames

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> torch.Tensor:
        frame = self.frames[index]
        if frame is None:
            raise RuntimeError(f"SAM2 asked for frame {index} before it arrived")
        return frame


class SAM2VideoStream:
    """Per-frame SAM2 video tracking of one object, conditioned by a mask on frame 0."""

    def __init__(self, predictor: SAM2VideoPredictor, device: torch.device, num_frames: int,
                 frame_size: tuple[int, int], precision: str = "fp32"):
        """precision: fp32, or fp16 / bf16 autocast around SAM2's tracking (how SAM2's own video
        demo runs it on CUDA: bfloat16 autocast)."""
        self.predictor = predictor.to(device)
        self.device = device
        self.precision = precision
        self.images = _ArrivingFrames(num_frames)
        self.state = self._inference_state(frame_size)
        self.frame_index = 0
        self._propagation: Iterator | None = None
        self.last_logits: torch.Tensor | None = None  # (1, 1, S/4, S/4) low-resolution mask logits
        self.last_mask: np.ndarray | None = None  # (H, W) 0/1 at the frame size

    def _inference_state(self, frame_size: tuple[int, int]) -> dict:
        """``init_state`` needs a folder of JPEGs: give it one black frame, then hand it our frames."""
        with tempfile.TemporaryDirectory() as folder:
            cv2.imwrite(os.path.join(folder, "0.jpg"), np.zeros((16, 16, 3), np.uint8))
            state = self.predictor.init_state(folder)
        state.update(images=self.images, num_frames=len(self.images), cached_features={},
                     video_height=frame_size[0], video_width=frame_size[1])
        return state

    def step(self, rgb: np.ndarray, first_mask: np.ndarray | None = None) -> dict[str, float]:
        """One frame; ``first_mask`` (H, W) {0, 1} conditions frame 0. Returns stage times (ms)."""
        t0 = time.perf_counter()
        self.images.frames[self.frame_index] = torch.from_numpy(
            model_inputs(rgb, None, self.predictor.image_size)[0][0]).to(self.device)
        t1 = time.perf_counter()
        with _autocast(self.device, self.precision):
            if self.frame_index == 0:
                if first_mask is None:
                    raise ValueError("SAM2 video tracking needs a conditioning mask on frame 0")
                self.predictor.add_new_mask(self.state, 0, OBJECT_ID, first_mask.astype(bool))
                self._propagation = self.predictor.propagate_in_video(self.state)
            index, _, video_masks = next(self._propagation)
        assert index == self.frame_index, (index, self.frame_index)
        _sync(self.device)
        t2 = time.perf_counter()
        outputs = self.state["output_dict_per_obj"][0]
        bucket = "cond_frame_outputs" if index in outputs["cond_frame_outputs"] else "non_cond_frame_outputs"
        self.last_logits = outputs[bucket][index]["pred_masks"]
        self.last_mask = (video_masks[0, 0] > 0).to(torch.uint8).cpu().numpy()
        t3 = time.perf_counter()
        self.frame_index += 1
        return dict(zip(PEER_STAGES, ((b - a) * 1e3 for a, b in ((t0, t1), (t1, t2), (t2, t3)))))

    @property
    def state_bytes(self) -> int:
        """Bytes of per-video state SAM2 keeps (every frame's compact output), shared tensors once."""
        seen, total = set(), 0
        for bucket in self.state["output_dict_per_obj"][0].values():
            for out in bucket.values():
                for value in out.values():
                    for tensor in value if isinstance(value, list) else [value]:
                        if isinstance(tensor, torch.Tensor) and tensor.data_ptr() not in seen:
                            seen.add(tensor.data_ptr())
                            total += tensor.numel() * tensor.element_size()
        return total


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype={"fp16": torch.float16, "bf16": torch.bfloat16}[precision])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
