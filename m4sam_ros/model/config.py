"""M4-SAM configuration: one dataclass, named presets.

The SAM2 presets (``hiera_t``, ``hiera_s``, ``hiera_b+``, ``hiera_l``) reproduce the
architecture of the SAM2.1 yaml files shipped with the ``sam2`` package
(``sam2/configs/sam2.1/sam2.1_hiera_*.yaml``) field for field, so official checkpoints
load strictly. ``sam2_version="2.0"`` switches the four object-pointer/no-object fields
that differ in the SAM2.0 yaml files. The ``test`` preset is a tiny random-init model
with the same structure, for fast CPU tests.

Only ``image_size`` may differ from the yaml (1024 there): every SAM2 module adapts to it
(positional embeddings are interpolated, RoPE tables are recomputed), so weights trained
at 1024 load unchanged.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

SAM2_VERSIONS = ("2.0", "2.1")
EXPERT_CONVS = ("full", "depthwise")

# Fields that describe trained adapter/fusion weights: an adapter file must agree on all
# of them. ``image_size`` and the training-only knobs are free to differ.
_NOT_ARCHITECTURE = ("name", "image_size", "modality_dropout")


@dataclass(frozen=True)
class M4SAMConfig:
    """Everything needed to build an M4-SAM model.

    Hiera trunk: embed_dim, num_heads, stages, global_att_blocks, window_spec,
    window_pos_embed_bkg_spatial_size (as in the SAM2 yaml).
    SAM2 heads: d_model (FPN/decoder width), mem_dim (memory encoder output width),
    memory_attention_layers, memory_attention_ffn, memory_fuser_layers, num_maskmem,
    max_obj_ptrs_in_encoder, sam2_version.
    MoE-LoRA (trainable): lora_rank, experts_per_modality, expert_kernel_sizes (cycled over
    the experts, so experts of one group see different neighbourhoods), expert_conv
    ("full" r->r conv or "depthwise"), router_top_k, shared_experts (0 = no shared group),
    lora_scale (multiplies the adapter update).
    Fusion (trainable): fusion_kernel_size, fusion_gate_init_bias (cross-modal gate starts
    at sigmoid(bias) toward RGB, the modality SAM2 was trained on), topdown_gate_init_bias
    (top-down gate starts nearly closed so a fresh model stays close to SAM2).
    Training: modality_dropout = (p_drop_depth, p_drop_rgb) per sample.
    """

    name: str
    image_size: int = 512
    # Hiera trunk
    embed_dim: int = 96
    num_heads: int = 1
    stages: tuple[int, ...] = (2, 3, 16, 3)
    global_att_blocks: tuple[int, ...] = (12, 16, 20)
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14)
    # SAM2 neck, memory and heads
    d_model: int = 256
    mem_dim: int = 64
    memory_attention_layers: int = 4
    memory_attention_ffn: int = 2048
    memory_fuser_layers: int = 2
    num_maskmem: int = 7
    max_obj_ptrs_in_encoder: int = 16
    sam2_version: str = "2.1"
    # Modality-aware MoE-LoRA
    lora_rank: int = 8
    experts_per_modality: int = 3
    expert_kernel_sizes: tuple[int, ...] = (1, 3, 5)
    expert_conv: str = "full"
    router_top_k: int = 2
    shared_experts: int = 1
    lora_scale: float = 1.0
    # Gated multi-level fusion
    fusion_kernel_size: int = 3
    fusion_gate_init_bias: float = 2.0
    topdown_gate_init_bias: float = -4.0
    # Training
    modality_dropout: tuple[float, float] = (0.3, 0.1)

    def __post_init__(self) -> None:
        if self.image_size < 64 or self.image_size % 32 != 0:
            raise ValueError(f"image_size must be a multiple of 32 and >= 64 (Hiera reduces by 32), "
                             f"got {self.image_size}")
        if (self.image_size // 4) % self.window_spec[0] != 0:
            raise ValueError(f"image_size/4 = {self.image_size // 4} must be divisible by window_spec[0] = "
                             f"{self.window_spec[0]} (Hiera tiles its window position embedding)")
        if len(self.stages) != 4 or len(self.window_spec) != 4:
            raise ValueError(f"stages and window_spec need 4 entries, got {self.stages} and {self.window_spec}")
        stage_starts = {sum(self.stages[:i]) for i in range(1, len(self.stages))}
        if stage_starts & set(self.global_att_blocks):
            raise ValueError(f"global_att_blocks {self.global_att_blocks} must not include a stage's first block "
                             f"{sorted(stage_starts)} (Hiera pools queries there inside windows)")
        if self.d_model % self.mem_dim != 0:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of mem_dim ({self.mem_dim}): "
                             "object pointers are split into d_model/mem_dim memory tokens")
        if self.sam2_version not in SAM2_VERSIONS:
            raise ValueError(f"sam2_version must be one of {SAM2_VERSIONS}, got {self.sam2_version!r}")
        if self.expert_conv not in EXPERT_CONVS:
            raise ValueError(f"expert_conv must be one of {EXPERT_CONVS}, got {self.expert_conv!r}")
        if self.lora_rank < 1 or self.experts_per_modality < 1 or self.shared_experts < 0:
            raise ValueError("lora_rank and experts_per_modality must be >= 1 and shared_experts >= 0, got "
                             f"{self.lora_rank}, {self.experts_per_modality}, {self.shared_experts}")
        if not self.expert_kernel_sizes or any(k < 1 or k % 2 == 0 for k in self.expert_kernel_sizes):
            raise ValueError(f"expert_kernel_sizes must be odd and >= 1 (same-size conv), "
                             f"got {self.expert_kernel_sizes}")
        if not 1 <= self.router_top_k <= self.experts_per_modality:
            raise ValueError(f"router_top_k must be in [1, experts_per_modality={self.experts_per_modality}], "
                             f"got {self.router_top_k}")
        if self.fusion_kernel_size < 1 or self.fusion_kernel_size % 2 == 0:
            raise ValueError(f"fusion_kernel_size must be odd and >= 1, got {self.fusion_kernel_size}")
        p_depth, p_rgb = self.modality_dropout
        if p_depth < 0 or p_rgb < 0 or p_depth + p_rgb > 1:
            raise ValueError(f"modality_dropout (p_drop_depth, p_drop_rgb) must be >= 0 with sum <= 1, "
                             f"got {self.modality_dropout}")

    @property
    def backbone_channel_list(self) -> list[int]:
        """Trunk output widths, deepest first (as FpnNeck expects)."""
        return [self.embed_dim * 8, self.embed_dim * 4, self.embed_dim * 2, self.embed_dim]

    def kernel_size_of_expert(self, index: int) -> int:
        return self.expert_kernel_sizes[index % len(self.expert_kernel_sizes)]

    def to_dict(self) -> dict:
        """Plain types only (lists), so it survives ``torch.load(weights_only=True)``."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> "M4SAMConfig":
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown M4SAMConfig fields {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def architecture_differences(self, other: "M4SAMConfig") -> dict[str, tuple]:
        """Fields (name -> (self, other)) that make trained weights incompatible."""
        return {f.name: (getattr(self, f.name), getattr(other, f.name))
                for f in dataclasses.fields(self)
                if f.name not in _NOT_ARCHITECTURE and getattr(self, f.name) != getattr(other, f.name)}


PRESETS: dict[str, M4SAMConfig] = {
    # sam2.1_hiera_t.yaml
    "hiera_t": M4SAMConfig(name="hiera_t", embed_dim=96, num_heads=1, stages=(1, 2, 7, 2),
                           global_att_blocks=(5, 7, 9), window_pos_embed_bkg_spatial_size=(7, 7)),
    # sam2.1_hiera_s.yaml
    "hiera_s": M4SAMConfig(name="hiera_s", embed_dim=96, num_heads=1, stages=(1, 2, 11, 2),
                           global_att_blocks=(7, 10, 13), window_pos_embed_bkg_spatial_size=(7, 7)),
    # sam2.1_hiera_b+.yaml (trunk defaults of sam2's Hiera)
    "hiera_b+": M4SAMConfig(name="hiera_b+", embed_dim=112, num_heads=2),
    # sam2.1_hiera_l.yaml
    "hiera_l": M4SAMConfig(name="hiera_l", embed_dim=144, num_heads=2, stages=(2, 6, 36, 4),
                           global_att_blocks=(23, 33, 43), window_spec=(8, 4, 16, 8),
                           window_pos_embed_bkg_spatial_size=(7, 7)),
    # tiny random-init model for tests: same structure (windowed + global blocks, every
    # SAM2 head), a few thousand times smaller
    "test": M4SAMConfig(name="test", embed_dim=8, num_heads=1, stages=(1, 1, 2, 1), global_att_blocks=(3,),
                        window_spec=(8, 4, 2, 1), window_pos_embed_bkg_spatial_size=(4, 4),
                        d_model=32, mem_dim=16, memory_attention_layers=1, memory_attention_ffn=64,
                        memory_fuser_layers=1, lora_rank=2),
}


def preset_config(preset: str, image_size: int = 512, **overrides) -> M4SAMConfig:
    """The named preset at ``image_size`` with any field overridden."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    known = {f.name for f in dataclasses.fields(M4SAMConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown M4SAMConfig overrides {unknown}; known fields: {sorted(known)}")
    return dataclasses.replace(PRESETS[preset], image_size=image_size, **overrides)
