"""The peer a user would otherwise pick: SAM2's own streaming video tracking.

Plain ``SAM2Base`` with the same Hiera size and input size as the M4-SAM preset, RGB only,
one conditioning mask on frame 0, then SAM2's ``track_step`` frame after frame. State is
kept the way ``SAM2VideoPredictor`` keeps it: every frame's output stays in
``output_dict`` (memory features cast to bfloat16, the constant memory position encoding
shared, low-resolution masks and object pointers kept), which is what makes its memory
grow with the stream (sam2#196).
"""
from __future__ import annotations

import time

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from sam2.modeling.sam2_base import SAM2Base

from m4sam_ros.model.config import M4SAMConfig
from m4sam_ros.model.m4sam import sam2_modules
from m4sam_ros.preprocess import model_inputs

PEER_STAGES = ("preprocess", "encoder", "track_step", "postprocess")


def build_sam2_peer(config: M4SAMConfig, seed: int = 0) -> SAM2Base:
    """SAM2Base with the preset's architecture (random init from ``seed``; same cost as trained)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SAM2Base(**sam2_modules(config))
    return model.eval()


def _cuda_sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SAM2Streaming:
    """Per-frame SAM2 tracking with the video predictor's state handling."""

    def __init__(self, model: SAM2Base, device: torch.device, num_frames: int):
        self.model = model.to(device)
        self.device = device
        self.num_frames = num_frames
        self.output_dict: dict = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        self.frame_index = 0
        self.state_bytes = 0
        self._seen: set[int] = set()
        self._shared_pos_enc: list[torch.Tensor] | None = None
        self.last_mask: np.ndarray | None = None

    def _preprocess(self, rgb: np.ndarray) -> torch.Tensor:
        """The tracker's own preprocessing, RGB part: (H, W, 3) uint8 -> (1, 3, S, S)."""
        rgb_in, _, _ = model_inputs(rgb, None, self.model.image_size)
        return torch.from_numpy(rgb_in).to(self.device)

    def _keep(self, out: dict) -> dict:
        """What SAM2VideoPredictor stores per frame (compact, bf16 memory features)."""
        if self._shared_pos_enc is None:
            self._shared_pos_enc = [t.clone() for t in out["maskmem_pos_enc"]]
        kept = {"maskmem_features": out["maskmem_features"].to(torch.bfloat16),
                "maskmem_pos_enc": self._shared_pos_enc, "pred_masks": out["pred_masks"],
                "obj_ptr": out["obj_ptr"], "object_score_logits": out["object_score_logits"]}
        for tensor in [kept["maskmem_features"], kept["pred_masks"], kept["obj_ptr"],
                       kept["object_score_logits"], *self._shared_pos_enc]:
            if tensor.data_ptr() not in self._seen:
                self._seen.add(tensor.data_ptr())
                self.state_bytes += tensor.numel() * tensor.element_size()
        return kept

    @torch.inference_mode()
    def step(self, rgb: np.ndarray, first_mask: np.ndarray | None = None) -> dict[str, float]:
        """One frame; ``first_mask`` (H, W) {0, 1} conditions frame 0. Returns stage times (ms)."""
        t0 = time.perf_counter()
        image = self._preprocess(rgb)
        _cuda_sync(self.device)
        t1 = time.perf_counter()
        backbone = self.model.forward_image(image)
        _, vision_feats, vision_pos, feat_sizes = self.model._prepare_backbone_features(backbone)
        _cuda_sync(self.device)
        t2 = time.perf_counter()
        is_init = self.frame_index == 0
        mask_inputs = None
        if is_init:
            if first_mask is None:
                raise ValueError("SAM2 streaming needs a conditioning mask on frame 0")
            size = self.model.image_size
            mask = cv2.resize(first_mask.astype(np.float32), (size, size), interpolation=cv2.INTER_NEAREST)
            mask_inputs = torch.from_numpy(mask).to(self.device)[None, None]
        out = self.model.track_step(frame_idx=self.frame_index, is_init_cond_frame=is_init,
                                    current_vision_feats=vision_feats, current_vision_pos_embeds=vision_pos,
                                    feat_sizes=feat_sizes, point_inputs=None, mask_inputs=mask_inputs,
                                    output_dict=self.output_dict, num_frames=self.num_frames)
        _cuda_sync(self.device)
        t3 = time.perf_counter()
        bucket = "cond_frame_outputs" if is_init else "non_cond_frame_outputs"
        self.output_dict[bucket][self.frame_index] = self._keep(out)
        logits = F.interpolate(out["pred_masks"], size=rgb.shape[:2], mode="bilinear", align_corners=False)
        self.last_mask = (torch.sigmoid(logits)[0, 0] > 0.5).to(torch.uint8).cpu().numpy()  # (H, W) 0/1
        t4 = time.perf_counter()
        self.frame_index += 1
        return dict(zip(PEER_STAGES, ((b - a) * 1e3 for a, b in zip((t0, t1, t2, t3), (t1, t2, t3, t4)))))
