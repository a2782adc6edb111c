"""M4-SAM modules on top of SAM2 (torch only; nothing here imports ROS)."""
from m4sam_ros.model.builder import load_m4sam
from m4sam_ros.model.checkpoint import (CheckpointError, load_adapter, load_sam2_checkpoint, read_adapter_config,
                                        save_adapter)
from m4sam_ros.model.config import PRESETS, M4SAMConfig, preset_config
from m4sam_ros.model.m4sam import (IMAGENET_MEAN, IMAGENET_STD, DecoderOutput, EncodedFrame, M4SAM, build_m4sam,
                                   parameter_counts)
from m4sam_ros.model.memory import MemoryBank, MemoryEntry, MemoryView

__all__ = ["CheckpointError", "DecoderOutput", "EncodedFrame", "IMAGENET_MEAN", "IMAGENET_STD", "M4SAM",
           "M4SAMConfig", "MemoryBank", "MemoryEntry", "MemoryView", "PRESETS", "build_m4sam", "load_adapter",
           "load_m4sam", "load_sam2_checkpoint", "parameter_counts", "preset_config", "read_adapter_config",
           "save_adapter"]
