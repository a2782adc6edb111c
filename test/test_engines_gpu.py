"""Engines on a CUDA GPU: TensorRT build, engine cache hit on the second start, parity with
PyTorch FP32, ONNX Runtime CUDA parity. Skipped, with the reason, where there is no GPU.

Tolerances (relative to the output's max |value|): FP32 engines 1e-3 (TF32 disabled; GPU
kernels sum in other orders than PyTorch's), FP16 TensorRT engines 2e-2 (LayerNorm pinned
to FP32).
"""
import importlib.util
import logging

import pytest
import torch

from m4sam_ros.engines.factory import EngineSettings, create_engines
from m4sam_ros.engines.graphs import example_encoder_inputs
from m4sam_ros.tools.parity import compare_outputs
from m4sam_ros.model.m4sam import build_m4sam

from helpers import memory_view, randomize_adapters

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() "
                                                                          "is False)")]
needs_tensorrt = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None,
                                    reason="needs TensorRT (pip install tensorrt)")
FP32_TOLERANCE, FP16_TOLERANCE = 1e-3, 2e-2


@pytest.fixture(scope="module")
def model():
    return randomize_adapters(build_m4sam("test", image_size=128, seed=0)).cuda()


def _worst_relative(engines, model) -> float:
    inputs = {k: v.cuda() for k, v in example_encoder_inputs(model, generator=torch.Generator().manual_seed(0)).items()}
    view = memory_view(model, 5, 4, torch.Generator().manual_seed(1))  # CPU tensors -> GPU
    view.output_dict = {bucket: {t: {k: [x.cuda() for x in v] if isinstance(v, list) else v.cuda()
                                     for k, v in out.items()} for t, out in frames.items()}
                        for bucket, frames in view.output_dict.items()}
    with torch.inference_mode():
        reference = model.encode(**inputs)
        memory_reference = model.condition_on_memory(reference, view)
    frame = engines.encoder(**inputs)
    errors = compare_outputs(reference._asdict(), frame._asdict())
    got = engines.memory_attention(reference, view)
    errors.update(compare_outputs({"pix_feat": memory_reference}, {"pix_feat": got}))
    return max(e.relative for e in errors.values())


@needs_tensorrt
@pytest.mark.parametrize("precision,tolerance", [("fp32", FP32_TOLERANCE), ("fp16", FP16_TOLERANCE)])
def test_tensorrt_build_cache_hit_and_parity(model, tmp_path, caplog, precision, tolerance):
    settings = EngineSettings(backend="tensorrt", precision=precision, cache_dir=str(tmp_path))
    engines = create_engines(model, settings)
    assert engines.encoder.describe() == f"tensorrt on cuda:{torch.cuda.current_device()} ({precision})"
    assert _worst_relative(engines, model) < tolerance
    with caplog.at_level(logging.INFO, logger="m4sam_ros.engines"):
        create_engines(model, settings)
    assert caplog.text.count("cache hit") == 2 and "building" not in caplog.text
    assert len(list(tmp_path.glob("*.engine"))) == 2 and any(tmp_path.glob("*.timing"))


@needs_tensorrt
def test_tensorrt_zero_shot_builds_sam2s_encoder(model, tmp_path):
    engines = create_engines(model, EngineSettings(backend="tensorrt", precision="fp16", cache_dir=str(tmp_path),
                                                   zero_shot=True))
    rgb = example_encoder_inputs(model, generator=torch.Generator().manual_seed(0))["rgb"].cuda()
    with torch.inference_mode():
        reference = model.encode_sam2(rgb)
    errors = compare_outputs(reference._asdict(), engines.encoder.encode_sam2(rgb)._asdict())
    assert max(e.relative for e in errors.values()) < FP16_TOLERANCE
    assert [p.name.split("-")[0] for p in sorted(tmp_path.glob("*.engine"))] == ["encoder_sam2", "memory_attention"]


def test_onnxruntime_cuda_parity(model, tmp_path):
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("needs onnxruntime-gpu (this onnxruntime has no CUDAExecutionProvider)")
    engines = create_engines(model, EngineSettings(backend="onnxruntime", device="cuda", cache_dir=str(tmp_path)))
    assert _worst_relative(engines, model) < FP32_TOLERANCE


def test_pytorch_cuda_fp16_is_close(model, tmp_path):
    engines = create_engines(model, EngineSettings(backend="pytorch", device="cuda", precision="fp16",
                                                   cache_dir=str(tmp_path)))
    assert _worst_relative(engines, model) < FP16_TOLERANCE
