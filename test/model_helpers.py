"""Model helpers the tests share, free of ROS imports: the GPU tests import them on a machine
that has PyTorch and sam2 but no rclpy."""
from __future__ import annotations

import torch

from m4sam_ros.model.memory import MemoryView


def randomize_adapters(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Fresh adapters add exactly zero (up-projections start at 0); give them random weights
    so the MoE-LoRA and fusion paths show up in every comparison."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith("adapter."):
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model


def memory_output(model, generator: torch.Generator, spatial: bool = True) -> dict:
    """One frame's memory in SAM2's layout, random, sized for the model's own input size."""
    h = model.config.image_size // 16
    out = {"obj_ptr": torch.randn(1, model.hidden_dim, generator=generator)}
    if spatial:
        out["maskmem_features"] = torch.randn(1, model.mem_dim, h, h, generator=generator)
        out["maskmem_pos_enc"] = [torch.randn(1, model.mem_dim, h, h, generator=generator)]
    return out


def memory_view(model, frame_index: int, recent: int, generator: torch.Generator, num_frames: int = 17) -> MemoryView:
    """A bank like the tracker's view: conditioning frame at 0, ``recent`` frames before frame_index,
    only the last num_maskmem - 1 with spatial memory."""
    non_cond = {frame_index - d: memory_output(model, generator, spatial=d <= model.num_maskmem - 1)
                for d in range(1, recent + 1) if frame_index - d > 0}
    return MemoryView(frame_index, {"cond_frame_outputs": {0: memory_output(model, generator)},
                                    "non_cond_frame_outputs": non_cond}, num_frames)
