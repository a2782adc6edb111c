"""Saliency losses: pixel BCE + soft IoU on mask logits, BCE on SAM2's object score.

BCE scores every pixel on its own; the IoU term scores the mask as a whole and keeps
small objects from drowning in background pixels (the usual pairing in SOD training).
The object-score term teaches SAM2's object-presence head: when its logit is negative,
SAM2 replaces the mask by a constant (NO_OBJ_SCORE = -1024) that carries no gradient, so
a head that says "no object" would starve the mask losses.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# SAM2 writes -1024 into masks it deems absent; clamping keeps the BCE of such frames
# readable (~32 instead of ~1024) and changes nothing else: sigmoid is flat beyond it.
_LOGIT_CLAMP = 32.0


@dataclass(frozen=True)
class LossWeights:
    bce: float = 1.0
    iou: float = 1.0
    object_score: float = 0.1


def soft_iou_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft IoU per sample. logits, target: (B, 1, H, W) -> (B,)."""
    prob = torch.sigmoid(logits)
    intersection = (prob * target).flatten(1).sum(1)
    union = (prob + target - prob * target).flatten(1).sum(1)
    return 1.0 - (intersection + 1.0) / (union + 1.0)


def frame_losses(mask_logits: torch.Tensor, object_logits: torch.Tensor, target: torch.Tensor,
                 weights: LossWeights) -> dict[str, torch.Tensor]:
    """Per-sample losses of one frame.

    mask_logits: (B, 1, S, S); object_logits: (B, 1); target: (B, 1, S, S) in [0, 1].
    Returns {"bce", "iou", "object", "total"}, each (B,).
    """
    logits = mask_logits.float().clamp(-_LOGIT_CLAMP, _LOGIT_CLAMP)
    target = target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)
    iou = soft_iou_loss(logits, target)
    present = (target.flatten(1).amax(1) > 0.5).float()
    obj = F.binary_cross_entropy_with_logits(object_logits.float().reshape(-1), present, reduction="none")
    total = weights.bce * bce + weights.iou * iou + weights.object_score * obj
    return {"bce": bce, "iou": iou, "object": obj, "total": total}
