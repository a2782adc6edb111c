"""Saliency losses: pixel BCE + soft IoU on mask logits, BCE on SAM2's object score.

BCE scores every pixel on its own; the IoU term scores the mask as a whole and keeps
small objects from drowning in background pixels (the usual pairing in SOD training).
The object-score term teaches SAM2's object-presence head: when its logit is negative,
SAM2 replaces the mask by a constant (NO_OBJ_SCORE = -1024) that carries no gradient, so
a head that says "no object" would starve the mask losses.

Adapters that predict the mask from intermediate features too (SAM-DAQ's self-inference,
``DecoderOutput.aux_logits``) add an intermediate term, L = L_pred + alpha * L_inter, with
L_inter the pixel BCE of each intermediate prediction upsampled to the target (as the
SAM-DAQ paper); M4-SAM's outputs carry none, so the term is 0 for it.
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
    intermediate: float = 0.5  # alpha


def soft_iou_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft IoU per sample. logits, target: (B, 1, H, W) -> (B,)."""
    prob = torch.sigmoid(logits)
    intersection = (prob * target).flatten(1).sum(1)
    union = (prob + target - prob * target).flatten(1).sum(1)
    return 1.0 - (intersection + 1.0) / (union + 1.0)


def _pixel_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean pixel BCE per sample; logits are upsampled to the target's size. -> (B,)."""
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
    logits = logits.float().clamp(-_LOGIT_CLAMP, _LOGIT_CLAMP)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)


def frame_losses(mask_logits: torch.Tensor, object_logits: torch.Tensor, target: torch.Tensor,
                 weights: LossWeights, aux_logits: tuple[torch.Tensor, ...] = ()) -> dict[str, torch.Tensor]:
    """Per-sample losses of one frame.

    mask_logits: (B, 1, S, S); object_logits: (B, 1); target: (B, 1, S, S) in [0, 1];
    aux_logits: intermediate predictions, each (B, 1, h, w) (``DecoderOutput.aux_logits``).
    Returns {"bce", "iou", "object", "inter", "total"}, each (B,).
    """
    logits = mask_logits.float().clamp(-_LOGIT_CLAMP, _LOGIT_CLAMP)
    target = target.float()
    bce = _pixel_bce(logits, target)
    iou = soft_iou_loss(logits, target)
    present = (target.flatten(1).amax(1) > 0.5).float()
    obj = F.binary_cross_entropy_with_logits(object_logits.float().reshape(-1), present, reduction="none")
    total = weights.bce * bce + weights.iou * iou + weights.object_score * obj
    inter = torch.zeros_like(bce)
    for aux in aux_logits:
        inter = inter + _pixel_bce(aux, target)
    if aux_logits:
        total = total + weights.intermediate * inter
    return {"bce": bce, "iou": iou, "object": obj, "inter": inter, "total": total}
