"""The PyTorch engines' static calls without a GPU: buffer and shape bookkeeping, the CUDA-graph
guard with its eager fallback, and torch.compile on the packed memory attention.

A CUDA graph itself cannot be captured here; the capture and its replay are GPU tests
(``test_engines_gpu.py``). What a capture relies on is tested here on the same code: inputs
copied into static buffers, outputs cloned out, one static call per input signature."""
import logging

import pytest
import torch

from m4sam_ros.engines.factory import EngineSettings, create_engines
from m4sam_ros.engines.graphs import example_encoder_inputs
from m4sam_ros.engines.static_calls import StaticCall, StaticCalls, compute_context, cuda_graphs_unavailable
from m4sam_ros.engines.torch_backend import TorchEncoder, TorchMemoryAttention
from m4sam_ros.model.m4sam import build_m4sam

from model_helpers import memory_view, randomize_adapters

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    return randomize_adapters(build_m4sam("test", image_size=64, seed=0))


def _affine(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return (2 * x + y, x.sum(dim=0))


def test_static_call_copies_in_clones_out_and_refuses_other_shapes():
    x, y = torch.ones(2, 3), torch.zeros(2, 3)
    call = StaticCall(_affine, (x, y), lambda: compute_context(CPU, "fp32"), capture=False)
    first = call(x, y)
    torch.testing.assert_close(first[0], torch.full((2, 3), 2.0))
    x.fill_(5.0)  # the caller's tensors are not the buffers: changing them changes nothing held
    second = call(x, torch.ones(2, 3))
    torch.testing.assert_close(first[0], torch.full((2, 3), 2.0))  # not overwritten by the later call
    torch.testing.assert_close(second[0], torch.full((2, 3), 11.0))
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(first, call.inputs))
    with pytest.raises(ValueError, match=r"made for inputs \(\(\(2, 3\)"):
        call(torch.ones(3, 3), torch.ones(3, 3))
    with pytest.raises(ValueError, match="made for inputs"):
        call(x.double(), y.double())


def test_static_calls_keep_one_call_per_signature(caplog):
    calls = StaticCalls({"affine": _affine}, CPU, "fp32", cuda_graphs=False)
    with caplog.at_level(logging.INFO, logger="m4sam_ros.engines.static_calls"):
        for _ in range(3):
            calls("affine", torch.ones(2, 3), torch.ones(2, 3))
        calls("affine", torch.ones(4, 3), torch.ones(4, 3))
    assert len(calls.calls) == 2 and not calls.eager
    assert sorted(calls.first_call_s) == ["affine 2x3 2x3", "affine 4x3 4x3"]
    assert caplog.text.count("first call") == 2  # one set-up per shape, none per later call


def test_cuda_graphs_guard_runs_eagerly_where_there_is_no_gpu(model, caplog):
    assert cuda_graphs_unavailable(CPU) == "CUDA graphs need a CUDA device; cpu runs eagerly"
    inputs = example_encoder_inputs(model, generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.WARNING, logger="m4sam_ros.engines"):
        engines = create_engines(model, EngineSettings(backend="pytorch", device="cpu", cuda_graphs=True))
    assert caplog.text.count("CUDA graphs need a CUDA device") == 1  # said once for both engines
    with caplog.at_level(logging.WARNING, logger="m4sam_ros.engines"):
        assert TorchEncoder(model, "cpu", cuda_graphs=True).static is None  # the engine's own guard
    assert caplog.text.count("CUDA graphs need a CUDA device") == 2
    assert not engines.encoder.cuda_graphs and engines.encoder.static is None and engines.encoder.first_call_s == {}
    assert engines.encoder.describe() == engines.memory_attention.describe() == "pytorch on cpu (fp32)"
    with torch.inference_mode():
        reference = model.encode(**inputs)
        frame = engines.encoder(**inputs)
        view = memory_view(model, 5, 4, torch.Generator().manual_seed(1))
        for got, want in zip(frame, reference):
            assert torch.equal(got, want)  # the eager fallback is the model itself, to the bit
        assert torch.equal(engines.memory_attention(frame, view), model.condition_on_memory(reference, view))


@pytest.mark.slow
def test_compiled_memory_attention_on_the_packed_bank_equals_sam2s(model):
    """torch.compile (CPU's inductor here) of the static-slot memory attention: one compile
    serves a filling bank (the shapes stay those of the full bank), equal to SAM2's own
    attention within float rounding (1e-5 of the output's scale); the conditioning frame
    keeps SAM2's no-memory path. (Compiling the encoder takes minutes on a small CPU: the
    GPU check times it.)"""
    engine = TorchMemoryAttention(model, "cpu", compile=True)
    assert engine.compiled and not engine.cuda_graphs
    assert engine.describe() == "pytorch on cpu (fp32, torch.compile)"
    frame = model.encode(**example_encoder_inputs(model, generator=torch.Generator().manual_seed(0)))
    with torch.inference_mode():
        assert torch.equal(engine(frame, None), model.condition_on_memory(frame, None))
        for frame_index, recent in ((1, 0), (4, 3), (10, 9)):
            view = memory_view(model, frame_index, recent, torch.Generator().manual_seed(frame_index))
            want = model.condition_on_memory(frame, view)
            torch.testing.assert_close(engine(frame, view), want, rtol=0, atol=1e-5 * float(want.abs().max()))
    shapes = "memory_attention 1x32x4x4 1x32x4x4 1x144x16 1x144x16 1x144"  # the full bank's slots
    assert len(engine.static.calls) == 1 and list(engine.first_call_s) == [shapes]


def test_encoder_static_calls_without_graphs_match_eager(model):
    """The encoder's three static calls on buffers (what a capture replays), run eagerly: the
    same numbers as the model's own calls."""
    encoder = TorchEncoder(model, "cpu")
    calls = StaticCalls({"encode": lambda r, d, p: tuple(t.float() for t in model.encode(r, d, p))}, CPU, "fp32",
                        cuda_graphs=False)
    inputs = example_encoder_inputs(model, generator=torch.Generator().manual_seed(2))
    for got, want in zip(calls("encode", *inputs.values()), encoder(**inputs)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_memory_attention_reads_the_bfloat16_bank(model, precision):
    """The tracker's bank stores memories in bfloat16; under fp16 autocast SAM2's concatenation of
    them with float32 pointers is refused unless the engine promotes the bank first."""
    frame = model.encode(**example_encoder_inputs(model, generator=torch.Generator().manual_seed(0)))
    view = memory_view(model, 5, 4, torch.Generator().manual_seed(1))
    for frames in view.output_dict.values():
        for out in frames.values():
            if "maskmem_features" in out:
                out["maskmem_features"] = out["maskmem_features"].to(torch.bfloat16)
    with torch.inference_mode():
        want = model.condition_on_memory(frame, view)
        got = TorchMemoryAttention(model, "cpu", precision)(frame, view)
    assert got.dtype == torch.float32 and float((got - want).abs().max()) < 5e-2 * float(want.abs().max())
