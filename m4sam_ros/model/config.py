"""M4-SAM configuration: one dataclass for the SAM2 architecture, a nested adapter config, presets.

The SAM2 presets (``hiera_t``, ``hiera_s``, ``hiera_b+``, ``hiera_l``) reproduce the
architecture of the SAM2.1 yaml files shipped with the ``sam2`` package
(``sam2/configs/sam2.1/sam2.1_hiera_*.yaml``) field for field, so official checkpoints
load strictly. ``sam2_version="2.0"`` switches the four object-pointer/no-object fields
that differ in the SAM2.0 yaml files. The ``test`` preset is a tiny random-init model
with the same structure, for fast CPU tests.

Only ``image_size`` may differ from the yaml (1024 there): every SAM2 module adapts to it
(positional embeddings are interpolated, RoPE tables are recomputed), so weights trained
at 1024 load unchanged. The trainable part is ``adapter``, one entry of the adapter
registry (``model.adapters``) with its own config; an adapter file must agree with the
model on the SAM2 architecture and on the chosen adapter's fields, nothing else. ``depth``
is the depth normalisation the weights were trained on: an adapter file carries it, and a
model built for that file takes it (files without it were trained on the linear default).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from m4sam_ros.depth import DepthConfig
from m4sam_ros.model.adapters import ADAPTERS, AdapterConfig, MoELoRAConfig, adapter_config_from_dict

SAM2_VERSIONS = ("2.0", "2.1")

# Fields that do not describe trained weights: free to differ between a model and an adapter file.
_NOT_ARCHITECTURE = ("name", "image_size", "modality_dropout", "adapter", "depth")


@dataclass(frozen=True)
class M4SAMConfig:
    """Everything needed to build an M4-SAM model.

    Hiera trunk: embed_dim, num_heads, stages, global_att_blocks, window_spec,
    window_pos_embed_bkg_spatial_size (as in the SAM2 yaml).
    SAM2 heads: d_model (FPN/decoder width), mem_dim (memory encoder output width),
    memory_attention_layers, memory_attention_ffn, memory_fuser_layers, num_maskmem,
    max_obj_ptrs_in_encoder, sam2_version.
    adapter: the trainable RGB-D adapter (``model.adapters``; default M4-SAM's MoE-LoRA + fusion).
    depth: how metric depth becomes the model's [0, 1] input (range, scale, polarity).
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
    # the trainable part
    adapter: AdapterConfig = field(default_factory=MoELoRAConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)
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
        if not isinstance(self.depth, DepthConfig):
            raise ValueError(f"depth must be a DepthConfig (m4sam_ros.depth), got {type(self.depth).__name__}")
        if not isinstance(self.adapter, AdapterConfig):
            raise ValueError(f"adapter must be an AdapterConfig (see m4sam_ros.model.adapters), "
                             f"got {type(self.adapter).__name__}")
        p_depth, p_rgb = self.modality_dropout
        if p_depth < 0 or p_rgb < 0 or p_depth + p_rgb > 1:
            raise ValueError(f"modality_dropout (p_drop_depth, p_drop_rgb) must be >= 0 with sum <= 1, "
                             f"got {self.modality_dropout}")

    @property
    def backbone_channel_list(self) -> list[int]:
        """Trunk output widths, deepest first (as FpnNeck expects)."""
        return [self.embed_dim * 8, self.embed_dim * 4, self.embed_dim * 2, self.embed_dim]

    def to_dict(self) -> dict:
        """Plain types only (lists, nested dicts for adapter and depth): survives ``torch.load(weights_only=True)``."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
        return dict(values, adapter=self.adapter.to_dict(), depth=self.depth.to_dict())

    @classmethod
    def from_dict(cls, values: dict) -> "M4SAMConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown M4SAMConfig fields {unknown}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        if "adapter" in values:
            values["adapter"] = adapter_config_from_dict(values["adapter"])
        if "depth" in values:
            values["depth"] = DepthConfig.from_dict(values["depth"])
        return cls(**values)

    def architecture_differences(self, other: "M4SAMConfig") -> dict[str, tuple]:
        """Fields (name -> (self, other)) that make trained weights incompatible: the SAM2
        architecture and the chosen adapter's fields (named ``adapter.<field>``)."""
        differences = {f.name: (getattr(self, f.name), getattr(other, f.name))
                       for f in dataclasses.fields(self)
                       if f.name not in _NOT_ARCHITECTURE and getattr(self, f.name) != getattr(other, f.name)}
        differences.update({f"adapter.{k}": v for k, v in self.adapter.differences(other.adapter).items()})
        return differences


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
                        memory_fuser_layers=1, adapter=MoELoRAConfig(lora_rank=2, depth_stages=3)),
}


def preset_config(preset: str, image_size: int = 512, **overrides) -> M4SAMConfig:
    """The named preset at ``image_size`` with any field overridden; a field of the preset's
    adapter config may be overridden by name too (``lora_rank=4``)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    base = PRESETS[preset]
    known = {f.name for f in dataclasses.fields(M4SAMConfig)}
    adapter_known = {f.name for f in dataclasses.fields(base.adapter)}
    unknown = sorted(set(overrides) - known - adapter_known)
    if unknown:
        raise ValueError(f"unknown M4SAMConfig overrides {unknown}; known fields: {sorted(known)}, "
                         f"adapter fields: {sorted(adapter_known)}")
    adapter_overrides = {k: overrides.pop(k) for k in list(overrides) if k in adapter_known and k not in known}
    adapter = overrides.pop("adapter", base.adapter)
    if adapter_overrides:
        adapter = dataclasses.replace(adapter, **adapter_overrides)
    return dataclasses.replace(base, image_size=image_size, adapter=adapter, **overrides)


def adapter_config_for(preset: str, kind: str) -> AdapterConfig:
    """The adapter config a preset gets for an adapter ``kind``: its own when it is the preset's
    kind (the test preset's MoE-LoRA is smaller), else that adapter's defaults."""
    if kind not in ADAPTERS:
        raise ValueError(f"unknown adapter kind {kind!r}; choose one of {sorted(ADAPTERS)}")
    own = PRESETS[preset].adapter if preset in PRESETS else None
    return own if own is not None and own.kind == kind else ADAPTERS[kind].config_type()
