"""M4-SAM: SAM2 with a trainable RGB-D adapter (M4-SAM's own: MoE-LoRA experts + gated fusion).

``M4SAM`` *is* a ``SAM2Base`` (so the frozen parts keep SAM2's state-dict keys and an
official checkpoint loads strictly) with one trainable addition, ``adapter``: an entry of
the adapter registry (``model.adapters``) hooked into the Hiera trunk. The model is split
the way it runs:

* ``encode(rgb, depth, modality_present)`` - the heavy, stateless part: the adapter's
  ``encode`` composing SAM2's trunk, neck and high-res projections with its own parts
  (M4-SAM: experts in the trunk, a short depth branch, gated fusion). Tensors in, tensors
  out; also ``forward``, so it exports to ONNX / TensorRT as is. ``encode_rgb(rgb)`` is the
  same for frames without depth, computing no depth at all. ``encode_sam2(rgb)`` is SAM2's
  own image encoder, the adapter bypassed: zero-shot.
* ``condition_on_memory`` / ``decode`` / ``mask_as_output`` / ``encode_memory`` - the light,
  stateful part, delegating to SAM2Base's own methods. The temporal state is not the
  model's: ``new_memory`` makes one (``model.memory``), whose ``step`` runs these stages for
  one frame - the one per-frame sequence the tracker and training share.

Pseudo-guided initialisation (no prompts ever): ``condition_on_memory(frame, None)`` gives
SAM2's no-memory features, ``decode`` runs the mask decoder with SAM2's padding point
(label -1) as the only sparse prompt, and the coarse mask is encoded as the conditioning
frame. In zero-shot mode a pseudo-prior mask goes through ``mask_as_output`` instead
(SAM2.1's mask-as-output path).
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
import torch.nn.functional as F
from sam2.modeling.backbones.hieradet import Hiera
from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
from sam2.modeling.memory_attention import MemoryAttention, MemoryAttentionLayer
from sam2.modeling.memory_encoder import CXBlock, Fuser, MaskDownSampler, MemoryEncoder
from sam2.modeling.position_encoding import PositionEmbeddingSine
from sam2.modeling.sam.transformer import RoPEAttention
from sam2.modeling.sam2_base import SAM2Base

from m4sam_ros.model.adapters import TrunkGeometry, build_adapter, routing
from m4sam_ros.model.config import M4SAMConfig, preset_config
from m4sam_ros.model.features import EncodedFrame
from m4sam_ros.model.memory import MemoryBank, MemoryView, StreamMemory

# The only submodule that trains; everything else is frozen SAM2.
TRAINABLE_PREFIXES = ("adapter.",)
# Normalisation the tracker, training and evaluation share: RGB and 3-channel depth alike.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DecoderOutput(NamedTuple):
    """Output of ``M4SAM.decode`` (the best of SAM2's multimask outputs)."""

    low_res_logits: torch.Tensor  # (B, 1, S/4, S/4)
    high_res_logits: torch.Tensor  # (B, 1, S, S)
    obj_ptr: torch.Tensor  # (B, C) object pointer for the memory bank
    object_score_logits: torch.Tensor  # (B, 1) object presence (> 0: present)
    # training only: intermediate mask logits (B, 1, h, w) of an adapter that makes them (the
    # loss's intermediate term, ``learn.losses``); M4-SAM makes none
    aux_logits: tuple[torch.Tensor, ...] = ()


def sam2_modules(config: M4SAMConfig) -> dict:
    """SAM2Base constructor arguments equal to the sam2.1 (or 2.0) yaml of the preset."""
    c = config
    trunk = Hiera(embed_dim=c.embed_dim, num_heads=c.num_heads, stages=c.stages,
                  global_att_blocks=c.global_att_blocks, window_spec=c.window_spec,
                  window_pos_embed_bkg_spatial_size=c.window_pos_embed_bkg_spatial_size)
    neck = FpnNeck(position_encoding=PositionEmbeddingSine(num_pos_feats=c.d_model, normalize=True, scale=None,
                                                           temperature=10000, image_size=c.image_size),
                   d_model=c.d_model, backbone_channel_list=c.backbone_channel_list,
                   fpn_top_down_levels=[2, 3], fpn_interp_model="nearest")
    feat_sizes = (c.image_size // 16, c.image_size // 16)
    layer = MemoryAttentionLayer(
        activation="relu", dim_feedforward=c.memory_attention_ffn, dropout=0.1, pos_enc_at_attn=False,
        self_attention=RoPEAttention(rope_theta=10000.0, feat_sizes=feat_sizes, embedding_dim=c.d_model,
                                     num_heads=1, downsample_rate=1, dropout=0.1),
        d_model=c.d_model, pos_enc_at_cross_attn_keys=True, pos_enc_at_cross_attn_queries=False,
        cross_attention=RoPEAttention(rope_theta=10000.0, feat_sizes=feat_sizes, rope_k_repeat=True,
                                      embedding_dim=c.d_model, num_heads=1, downsample_rate=1, dropout=0.1,
                                      kv_in_dim=c.mem_dim))
    memory_encoder = MemoryEncoder(
        out_dim=c.mem_dim, in_dim=c.d_model,
        position_encoding=PositionEmbeddingSine(num_pos_feats=c.mem_dim, normalize=True, scale=None,
                                                temperature=10000, image_size=c.image_size),
        mask_downsampler=MaskDownSampler(embed_dim=c.d_model, kernel_size=3, stride=2, padding=1),
        fuser=Fuser(CXBlock(dim=c.d_model, kernel_size=7, padding=3, layer_scale_init_value=1e-6, use_dwconv=True),
                    num_layers=c.memory_fuser_layers))
    v21 = c.sam2_version == "2.1"
    return dict(
        image_encoder=ImageEncoder(trunk=trunk, neck=neck, scalp=1),
        memory_attention=MemoryAttention(d_model=c.d_model, pos_enc_at_input=True, layer=layer,
                                         num_layers=c.memory_attention_layers),
        memory_encoder=memory_encoder,
        num_maskmem=c.num_maskmem, image_size=c.image_size,
        sigmoid_scale_for_mem_enc=20.0, sigmoid_bias_for_mem_enc=-10.0,
        use_mask_input_as_output_without_sam=True, directly_add_no_mem_embed=True,
        # what sam2's build_sam2_video_predictor adds: a frame given a mask is encoded binarised
        binarize_mask_from_pts_for_mem_enc=True,
        no_obj_embed_spatial=v21, use_high_res_features_in_sam=True, multimask_output_in_sam=True,
        iou_prediction_use_sigmoid=True, use_obj_ptrs_in_encoder=True,
        max_obj_ptrs_in_encoder=c.max_obj_ptrs_in_encoder,
        add_tpos_enc_to_obj_ptrs=v21, proj_tpos_enc_in_obj_ptrs=v21, use_signed_tpos_enc_to_obj_ptrs=v21,
        only_obj_ptrs_in_the_past_for_eval=True, pred_obj_scores=True, pred_obj_scores_mlp=True,
        fixed_no_obj_ptr=True, multimask_output_for_tracking=True, use_multimask_token_for_obj_ptr=True,
        multimask_min_pt_num=0, multimask_max_pt_num=1, use_mlp_for_obj_ptr_proj=True,
        # what sam2's build_sam2_video_predictor adds for streaming inference
        sam_mask_decoder_extra_args=dict(dynamic_multimask_via_stability=True, dynamic_multimask_stability_delta=0.05,
                                         dynamic_multimask_stability_thresh=0.98),
        compile_image_encoder=False,
    )


def modality_dropout(modality_present: torch.Tensor, p_drop_depth: float, p_drop_rgb: float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Training-time modality dropout: per sample, drop depth with p_drop_depth, else RGB with
    p_drop_rgb; never drops the only present modality. (B, 2) -> (B, 2)."""
    u = torch.rand(modality_present.shape[0], generator=generator, device=modality_present.device)
    has_rgb, has_depth = modality_present[:, 0] > 0, modality_present[:, 1] > 0
    drop_depth = (u < p_drop_depth) & has_rgb
    drop_rgb = (u >= p_drop_depth) & (u < p_drop_depth + p_drop_rgb) & has_depth
    keep = torch.stack([~drop_rgb, ~drop_depth], dim=1).to(modality_present.dtype)
    return modality_present * keep


class M4SAM(SAM2Base):
    """SAM2 + a trainable RGB-D adapter (see module docstring)."""

    def __init__(self, config: M4SAMConfig):
        super().__init__(**sam2_modules(config))
        self.config = config
        self.adapter = build_adapter(config.adapter, TrunkGeometry(self.image_encoder.trunk, config.d_model,
                                                                   config.image_size, config.mem_dim))
        self.adapter_file: str | None = None  # set by checkpoint.load_adapter
        self.sam2_file: str | None = None  # set by checkpoint.load_sam2_checkpoint
        self.freeze_sam2()

    def freeze_sam2(self) -> None:
        """Only the adapter trains; SAM2 stays as pretrained."""
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        for _, parameter in self.adapter.trainable_parameters():
            parameter.requires_grad_(True)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if k.startswith(TRAINABLE_PREFIXES)}

    def frozen_keys(self) -> list[str]:
        """State-dict keys of the frozen SAM2 part (what an official checkpoint must hold)."""
        return [k for k in self.state_dict() if not k.startswith(TRAINABLE_PREFIXES)]

    # ---- stateless part (exported) -------------------------------------------------------
    def forward(self, rgb: torch.Tensor, depth: torch.Tensor, modality_present: torch.Tensor) -> EncodedFrame:
        """Same as ``encode`` (so ``torch.onnx.export(model, (rgb, depth, present))`` works)."""
        return self.encode(rgb, depth, modality_present)

    def encode(self, rgb: torch.Tensor, depth: torch.Tensor, modality_present: torch.Tensor) -> EncodedFrame:
        """Encode B RGB-D frames.

        rgb: (B, 3, S, S) float, ImageNet-normalised RGB.
        depth: (B, 3, S, S) float, normalised depth repeated to 3 channels, ImageNet-normalised.
        modality_present: (B, 2) float {0, 1} = [rgb present, depth present]; an absent
            modality's input is zeroed and the adapter's fusion takes the present one.
        Returns EncodedFrame(image_embed (B, C, S/16, S/16), high_res_s4 (B, C/8, S/4, S/4),
        high_res_s8 (B, C/4, S/8, S/8), pos_enc (B, C, S/16, S/16)).
        """
        size = self.config.image_size
        if rgb.dim() != 4 or rgb.shape[1:] != (3, size, size) or depth.shape != rgb.shape:
            raise ValueError(f"encode expects rgb and depth of shape (B, 3, {size}, {size}), "
                             f"got {tuple(rgb.shape)} and {tuple(depth.shape)}")
        if modality_present.shape != (rgb.shape[0], 2):
            raise ValueError(f"modality_present must be (B, 2) = [rgb, depth] per sample, "
                             f"got {tuple(modality_present.shape)}")
        present = modality_present.to(rgb.dtype)
        if self.training:
            present = modality_dropout(present, *self.config.modality_dropout)
        return self.adapter.encode(self, rgb * present[:, 0, None, None, None],
                                   depth * present[:, 1, None, None, None], present)

    def encode_rgb(self, rgb: torch.Tensor) -> EncodedFrame:
        """Encode B frames that have no depth: equal to ``encode(rgb, 0, [[1, 0]] * B)`` without
        computing any depth (the adapter's ``encode_rgb``).
        rgb: (B, 3, S, S) ImageNet-normalised RGB -> EncodedFrame (see ``encode``)."""
        self._check_rgb(rgb, "encode_rgb")
        return self.adapter.encode_rgb(self, rgb)

    def encode_sam2(self, rgb: torch.Tensor) -> EncodedFrame:
        """SAM2's own image features (as ``SAM2Base.forward_image``), the adapter bypassed:
        zero-shot mode, where the adapter is untrained (it would add nothing but cost, and
        M4-SAM's top-down gates would leak sigmoid(bias) of the coarse level). rgb: (B, 3, S, S)."""
        self._check_rgb(rgb, "encode_sam2")
        with routing("off"):
            return self.sam2_frame(rgb)

    def _check_rgb(self, rgb: torch.Tensor, what: str) -> None:
        size = self.config.image_size
        if rgb.dim() != 4 or rgb.shape[1:] != (3, size, size):
            raise ValueError(f"{what} expects rgb of shape (B, 3, {size}, {size}), got {tuple(rgb.shape)}")

    # ---- SAM2's encoder, the pieces adapters compose (``adapters.base``) ----------------------
    def sam2_frame(self, images: torch.Tensor) -> EncodedFrame:
        """SAM2's image encoder and high-res projections on ``images``, under the caller's routing."""
        backbone = self.image_encoder(images)
        return self.project_fpn(list(backbone["backbone_fpn"]), backbone["vision_pos_enc"][-1])

    def frame_from_stages(self, stage_outputs: list[torch.Tensor]) -> EncodedFrame:
        """The trunk's four stage outputs (first stage first) through SAM2's neck and projections:
        the rest of ``sam2_frame`` for a trunk run stage by stage (``model.trunk``)."""
        encoder = self.image_encoder
        levels, pos = encoder.neck(stage_outputs)
        if encoder.scalp > 0:
            levels, pos = levels[:-encoder.scalp], pos[:-encoder.scalp]
        return self.project_fpn(list(levels), pos[-1])

    def project_fpn(self, levels: list[torch.Tensor], pos_enc: torch.Tensor) -> EncodedFrame:
        """FPN levels (strides 4, 8, 16, each C wide) -> what the decoder and memory stages read."""
        return EncodedFrame(
            image_embed=levels[2],
            high_res_s4=self.sam_mask_decoder.conv_s0(levels[0]),
            high_res_s8=self.sam_mask_decoder.conv_s1(levels[1]),
            pos_enc=pos_enc,
        )

    # ---- temporal state ------------------------------------------------------------------
    def new_memory(self, zero_shot: bool, num_memory_frames: int) -> StreamMemory:
        """An empty temporal memory for one stream: zero-shot runs SAM2's own memory bank, learned
        mode the memory the adapter streams with (M4-SAM's: SAM2's bank too)."""
        if self.uses_memory_attention(zero_shot):
            return MemoryBank(num_memory_frames, self.num_maskmem, self.max_obj_ptrs_in_encoder)
        return self.adapter.new_memory(num_memory_frames)

    def uses_memory_attention(self, zero_shot: bool) -> bool:
        """Whether a stream of this mode runs SAM2's memory attention (an exported graph)."""
        return zero_shot or self.adapter.memory == "sam2"

    # ---- stateful part (memory passed in by the caller) -----------------------------------
    @staticmethod
    def _tokens(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).permute(2, 0, 1)  # (B, C, H, W) -> (HW, B, C)

    def condition_on_memory(self, frame: EncodedFrame, memory: MemoryView | None) -> torch.Tensor:
        """Memory attention: image_embed attends to the bank; None = first frame (no-memory
        embedding). Returns (B, C, S/16, S/16)."""
        size = tuple(frame.image_embed.shape[-2:])
        empty = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        return self._prepare_memory_conditioned_features(
            frame_idx=0 if memory is None else memory.frame_index,
            is_init_cond_frame=memory is None,
            current_vision_feats=[self._tokens(frame.image_embed)],
            current_vision_pos_embeds=[self._tokens(frame.pos_enc)],
            feat_sizes=[size],
            output_dict=empty if memory is None else memory.output_dict,
            num_frames=1 if memory is None else memory.num_frames,
        )

    def decode(self, pix_feat: torch.Tensor, frame: EncodedFrame, is_init_frame: bool) -> DecoderOutput:
        """Prompt-free mask decoding of memory-conditioned features ``pix_feat`` (B, C, S/16, S/16):
        the only sparse prompt is SAM2's padding point (label -1); best of SAM2's multimask outputs."""
        out = self._forward_sam_heads(backbone_features=pix_feat, point_inputs=None, mask_inputs=None,
                                      high_res_features=[frame.high_res_s4, frame.high_res_s8],
                                      multimask_output=self._use_multimask(is_init_frame, None))
        _, _, _, low_res, high_res_logits, obj_ptr, object_score_logits = out
        return DecoderOutput(low_res, high_res_logits, obj_ptr, object_score_logits)

    def masks_from_points(self, frame: EncodedFrame, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM2's own mask decoder prompted with one positive point per candidate, all in one
        batched decoder call on the frame's memory-free features (as SAM2 segments an image).

        frame: one frame (B = 1); points: (N, 2) x, y in model input pixels (0 .. S).
        Returns (low-resolution mask logits (N, 1, S/4, S/4), predicted IoU (N,)), the best of
        SAM2's multimask outputs for each point."""
        if frame.image_embed.shape[0] != 1:
            raise ValueError(f"masks_from_points takes one frame, got a batch of {frame.image_embed.shape[0]}")
        count = points.shape[0]
        pix_feat = self.condition_on_memory(frame, None).expand(count, -1, -1, -1)
        high_res = [frame.high_res_s4.expand(count, -1, -1, -1), frame.high_res_s8.expand(count, -1, -1, -1)]
        prompts = {"point_coords": points[:, None, :].to(pix_feat), "point_labels": torch.ones(count, 1, dtype=torch.int32,
                                                                                             device=pix_feat.device)}
        _, _, ious, low_res, _, _, _ = self._forward_sam_heads(backbone_features=pix_feat, point_inputs=prompts,
                                                               mask_inputs=None, high_res_features=high_res,
                                                               multimask_output=True)
        return low_res, ious.max(dim=1).values

    def mask_as_output(self, frame: EncodedFrame, mask: torch.Tensor) -> DecoderOutput:
        """Zero-shot conditioning frame: SAM2.1's mask-as-output path. ``mask`` (B, 1, S, S) in
        {0, 1} becomes the output (logits +-10) and the decoder only makes its object pointer."""
        out = self._use_mask_as_output(frame.image_embed, [frame.high_res_s4, frame.high_res_s8], mask)
        _, _, _, low_res, high_res_logits, obj_ptr, object_score_logits = out
        return DecoderOutput(low_res, high_res_logits, obj_ptr, object_score_logits)

    def encode_memory(self, frame: EncodedFrame, decoded: DecoderOutput,
                      from_mask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory encoder on the frame's own (unconditioned) features and its mask ->
        (maskmem_features (B, mem_dim, S/16, S/16), maskmem_pos_enc (same shape)).

        from_mask: ``decoded`` came from ``mask_as_output`` (a given mask). Then, as SAM2's video
        predictor encodes a frame that received a mask, the memory sees the low-resolution logits
        upsampled and binarised (``binarize_mask_from_pts_for_mem_enc``), not a sigmoid of the
        full-resolution ones."""
        masks = decoded.high_res_logits
        if from_mask:
            size = (self.image_size, self.image_size)
            masks = F.interpolate(decoded.low_res_logits, size=size, mode="bilinear", align_corners=False)
        features, pos = self._encode_new_memory(
            current_vision_feats=[self._tokens(frame.image_embed)], feat_sizes=[tuple(frame.image_embed.shape[-2:])],
            pred_masks_high_res=masks, object_score_logits=decoded.object_score_logits, is_mask_from_pts=from_mask)
        return features, pos[-1]


def build_m4sam(preset: str = "test", image_size: int = 512, seed: int | None = None, **overrides) -> M4SAM:
    """Build M4-SAM from a preset (``hiera_t``, ``hiera_s``, ``hiera_b+``, ``hiera_l``, ``test``),
    in eval mode with SAM2 frozen. ``seed`` makes the random init reproducible without
    touching the caller's global RNG."""
    config = preset_config(preset, image_size=image_size, **overrides)
    rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with rng:
        if seed is not None:
            torch.manual_seed(seed)
        model = M4SAM(config)
    return model.eval()


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Trainable / frozen / total parameter counts, with the trainable part split by the
    adapter's parts (M4-SAM: ``moe_lora``, ``fusion``)."""
    counts = {"trainable": 0, "frozen": 0}
    for name, parameter in model.named_parameters():
        counts["trainable" if parameter.requires_grad else "frozen"] += parameter.numel()
    for part, module in model.adapter.named_children():
        counts[part] = sum(p.numel() for p in module.parameters())
    counts["total"] = counts["trainable"] + counts["frozen"]
    return counts
