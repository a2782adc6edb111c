"""Engines on a CUDA GPU: TensorRT build, engine cache hit on the second start, parity with
PyTorch FP32, ONNX Runtime CUDA parity, PyTorch CUDA in every precision with and without
CUDA graphs, and a tracked stream on CUDA graphs.

The reference half of every test runs everywhere, CI's CPU included: the model, its inputs,
a memory bank sized for the model's own input size and PyTorch FP32 outputs, all on the
CPU (``reference``, checked by ``test_reference_half_runs_everywhere``). Only the device
calls are GPU-only; they are skipped, with the reason, where there is no GPU.

Tolerances (worst |engine - CPU FP32 reference| / max |reference|): FP32 engines 1e-3
(TF32 off: TF32 keeps 10 mantissa bits; GPU kernels sum in other orders than the CPU's),
FP16 2e-2 (autocast keeps LayerNorm and softmax in FP32; TensorRT FP16 pins LayerNorm to
FP32), BF16 5e-2 (7 mantissa bits; measured on CPU autocast: 1.4e-2 for hiera_t at 256²,
FP16 1.7e-3). CUDA-graph replay against eager calls on the GPU: 1e-5 (the same kernels; the
memory attention runs on the packed bank instead of SAM2's concatenation).
"""
import copy
import importlib.util
import logging
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from m4sam_ros.engines.factory import EngineSettings, create_engines
from m4sam_ros.engines.graphs import example_encoder_inputs
from m4sam_ros.engines.memory_attention import StaticMemoryAttention, pack_memory
from m4sam_ros.engines.static_calls import compute_context
from m4sam_ros.learn.synthetic import SyntheticConfig, generate_video
from m4sam_ros.model.m4sam import M4SAM, EncodedFrame, build_m4sam
from m4sam_ros.model.memory import MemoryView
from m4sam_ros.tools.parity import compare_outputs
from m4sam_ros.tracker import SaliencyTracker, TrackerConfig

from model_helpers import memory_view, randomize_adapters

SIZE = 128
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(),
                               reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
needs_tensorrt = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None,
                                    reason="needs TensorRT (pip install tensorrt)")
TOLERANCES = {"fp32": 1e-3, "fp16": 2e-2, "bf16": 5e-2}
REPLAY_TOLERANCE = 1e-5


@dataclass
class Reference:
    """CPU model and its FP32 outputs on fixed inputs; every GPU test compares against these."""

    model: M4SAM
    inputs: dict[str, torch.Tensor]
    view: MemoryView
    frame: EncodedFrame
    sam2_frame: EncodedFrame
    pix_feat: torch.Tensor

    def gpu_model(self) -> M4SAM:
        """A copy for a device test (engines move their model; the CPU reference stays put)."""
        return copy.deepcopy(self.model)


@pytest.fixture(scope="module")
def reference() -> Reference:
    model = randomize_adapters(build_m4sam("test", image_size=SIZE, seed=0))
    inputs = example_encoder_inputs(model, generator=torch.Generator().manual_seed(0))
    view = memory_view(model, 5, 4, torch.Generator().manual_seed(1))
    with torch.inference_mode():
        frame = model.encode(**inputs)
        return Reference(model, inputs, view, frame, model.encode_sam2(inputs["rgb"]),
                         model.condition_on_memory(frame, view))


@pytest.fixture
def no_tf32():
    """FP32 means FP32 for the parity checks (cuDNN convolutions default to TF32)."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def _to(device, value):
    """Tensors (in dicts, lists, named tuples, a MemoryView) moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, MemoryView):
        return MemoryView(value.frame_index, _to(device, value.output_dict), value.num_frames)
    if isinstance(value, dict):
        return {k: _to(device, v) for k, v in value.items()}
    if isinstance(value, EncodedFrame):
        return EncodedFrame(*(_to(device, v) for v in value))
    if isinstance(value, list):
        return [_to(device, v) for v in value]
    return value


def test_reference_half_runs_everywhere(reference):
    """What the GPU tests compare against is computed on the CPU, here too: the bank is sized
    for the model's input size (8x8 at 128², not 64²'s 4x4), and the outputs are sane."""
    h = SIZE // 16
    assert reference.frame.image_embed.shape == (1, reference.model.hidden_dim, h, h)
    assert reference.view.output_dict["cond_frame_outputs"][0]["maskmem_features"].shape[-2:] == (h, h)
    assert reference.pix_feat.shape == reference.frame.image_embed.shape
    for tensor in (*reference.frame, *reference.sam2_frame, reference.pix_feat):
        assert torch.isfinite(tensor).all()
    assert _to("cpu", reference.view).output_dict.keys() == reference.view.output_dict.keys()


def _worst_relative(engines, reference: Reference) -> float:
    device = engines.device
    frame = engines.encoder(**_to(device, reference.inputs))
    errors = compare_outputs(reference.frame._asdict(), frame._asdict())
    got = engines.memory_attention(_to(device, reference.frame), _to(device, reference.view))
    errors.update(compare_outputs({"pix_feat": reference.pix_feat}, {"pix_feat": got}))
    return max(e.relative for e in errors.values())


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.usefixtures("no_tf32")
@needs_tensorrt
@pytest.mark.gpu
@needs_gpu
def test_tensorrt_build_cache_hit_and_parity(reference, tmp_path, caplog, precision):
    model = reference.gpu_model()
    settings = EngineSettings(backend="tensorrt", precision=precision, cache_dir=str(tmp_path))
    engines = create_engines(model, settings)
    assert engines.encoder.describe() == f"tensorrt on cuda:{torch.cuda.current_device()} ({precision})"
    assert _worst_relative(engines, reference) < TOLERANCES[precision]
    caplog.clear()  # whatever the first build logged (at INFO it says "building") is not the second start's
    with caplog.at_level(logging.INFO, logger="m4sam_ros.engines"):
        create_engines(model, settings)
    assert caplog.text.count("cache hit") == 2 and "building" not in caplog.text
    assert len(list(tmp_path.glob("*.engine"))) == 2 and any(tmp_path.glob("*.timing"))


@needs_tensorrt
@pytest.mark.gpu
@needs_gpu
def test_tensorrt_zero_shot_builds_sam2s_encoder(reference, tmp_path):
    engines = create_engines(reference.gpu_model(), EngineSettings(backend="tensorrt", precision="fp16",
                                                                   cache_dir=str(tmp_path), zero_shot=True))
    got = engines.encoder.encode_sam2(reference.inputs["rgb"].cuda())
    errors = compare_outputs(reference.sam2_frame._asdict(), got._asdict())
    assert max(e.relative for e in errors.values()) < TOLERANCES["fp16"]
    assert [p.name.split("-")[0] for p in sorted(tmp_path.glob("*.engine"))] == ["encoder_sam2", "memory_attention"]


@pytest.mark.usefixtures("no_tf32")
@pytest.mark.gpu
@needs_gpu
def test_onnxruntime_cuda_parity(reference, tmp_path):
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("needs onnxruntime-gpu (this onnxruntime has no CUDAExecutionProvider)")
    engines = create_engines(reference.gpu_model(), EngineSettings(backend="onnxruntime", device="cuda",
                                                                   cache_dir=str(tmp_path)))
    assert _worst_relative(engines, reference) < TOLERANCES["fp32"]


@pytest.mark.gpu
@needs_gpu
@pytest.mark.usefixtures("no_tf32")
@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["eager", "cuda_graphs"])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_pytorch_cuda_precisions_are_close(reference, tmp_path, precision, cuda_graphs):
    engines = create_engines(reference.gpu_model(), EngineSettings(backend="pytorch", device="cuda", precision=precision,
                                                                   cache_dir=str(tmp_path), cuda_graphs=cuda_graphs))
    assert engines.encoder.cuda_graphs is engines.memory_attention.cuda_graphs is cuda_graphs
    worst = _worst_relative(engines, reference)
    print(f"pytorch cuda {precision} {'cuda graphs' if cuda_graphs else 'eager'}: worst relative error {worst:.2e}")
    assert worst < TOLERANCES[precision]


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_replay_equals_eager_and_captures_once_per_shape(reference, precision):
    model = reference.gpu_model()
    eager = create_engines(model, EngineSettings(backend="pytorch", device="cuda", precision=precision))
    graphs = create_engines(model, EngineSettings(backend="pytorch", device="cuda", precision=precision,
                                                  cuda_graphs=True))
    assert graphs.encoder.describe() == f"pytorch on {graphs.device} ({precision}, CUDA graphs)"
    generator = torch.Generator().manual_seed(3)
    view = _to("cuda", reference.view)
    held = []
    for _ in range(3):  # new inputs each time: a replay must read them, and must not overwrite what was returned
        inputs = _to("cuda", example_encoder_inputs(reference.model, generator=generator))
        want, got = eager.encoder(**inputs), graphs.encoder(**inputs)
        for name, error in compare_outputs(want._asdict(), got._asdict()).items():
            assert error.relative < REPLAY_TOLERANCE, (name, error)
        attention = graphs.memory_attention  # its eager twin: the same packed-bank module, not captured
        packed = pack_memory(model, view, attention.slots, attention.feat_size, batch=1)
        with compute_context(graphs.device, precision):
            want_pix = StaticMemoryAttention(model, attention.slots, attention.feat_size)(
                want.image_embed, want.pos_enc, *packed).float()
        got_pix = attention(want, view)
        assert compare_outputs({"p": want_pix}, {"p": got_pix})["p"].relative < REPLAY_TOLERANCE
        held.append((want.image_embed, got.image_embed))
        assert torch.equal(graphs.memory_attention(want, None), eager.memory_attention(want, None))
    for want, got in held:
        assert compare_outputs({"x": want}, {"x": got})["x"].relative < REPLAY_TOLERANCE
    assert len(graphs.encoder.static.calls) == 1 and len(graphs.memory_attention.static.calls) == 1
    assert not graphs.encoder.static.eager and not graphs.memory_attention.static.eager, "a capture fell back"
    graphs.encoder.encode_sam2(_to("cuda", reference.inputs)["rgb"])
    assert len(graphs.encoder.static.calls) == 2 and len(graphs.encoder.first_call_s) == 2
    with pytest.raises(ValueError, match="expects rgb and depth of shape"):
        graphs.encoder(*(t[..., :64] for t in _to("cuda", reference.inputs).values()))


@pytest.mark.gpu
@needs_gpu
@pytest.mark.usefixtures("no_tf32")
@pytest.mark.parametrize("precision,max_difference,agreement", [("fp32", 1e-3, 0.999), ("fp16", 5e-2, 0.99),
                                                                 ("bf16", 5e-2, 0.99)])
def test_tracker_on_cuda_graphs_follows_the_fp32_eager_tracker(reference, precision, max_difference, agreement):
    """A learned-mode stream (the bank fills, then slides; its bf16 storage meets fp16 autocast)
    on CUDA graphs against the FP32 eager tracker: max |probability difference| and the share
    of equal mask pixels, frame by frame."""
    frames = list(generate_video(SyntheticConfig(height=96, width=128, frames=12, seed=4)))
    config = TrackerConfig(image_size=SIZE, mode="learned", lost_score_threshold=0.0)
    trackers = []
    for precision_, cuda_graphs in (("fp32", False), (precision, True)):
        model = reference.gpu_model()
        engines = create_engines(model, EngineSettings(backend="pytorch", device="cuda", precision=precision_,
                                                       cuda_graphs=cuda_graphs))
        trackers.append(SaliencyTracker(model, config, device=engines.device, encoder=engines.encoder,
                                        memory_attention=engines.memory_attention))
    for i, frame in enumerate(frames):
        want, got = (t.step(frame.rgb, frame.depth_mm, i / 30.0) for t in trackers)
        assert np.abs(want.probability - got.probability).max() < max_difference, i
        assert (want.mask == got.mask).mean() > agreement, i
