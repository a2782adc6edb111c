"""Engines without a GPU: real-valued RoPE, static memory attention, backend selection,
engine cache keys, PyTorch and ONNX Runtime engines, TensorRT's clear refusal."""
import dataclasses
import json
import os
import subprocess
import importlib.util
import io
import logging
import time

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from sam2.modeling.position_encoding import apply_rotary_enc, compute_axial_cis

from m4sam_ros.engines.base import EngineUnavailable
from m4sam_ros.engines.cache import ArtifactCache, EngineKey, weights_hash
from m4sam_ros.engines.factory import EngineSettings, create_engines
from m4sam_ros.engines.graphs import example_encoder_inputs
from m4sam_ros.engines.memory_attention import MemorySlots, StaticMemoryAttention, pack_memory
from m4sam_ros.engines.onnxruntime_backend import OrtGraph
from m4sam_ros.engines.quantization import quantize
from m4sam_ros.engines.progress import stage
from m4sam_ros.engines.rope import rope_tables, rotate
from m4sam_ros.engines.platform import Platform
from m4sam_ros.engines.int8_policy import INT8_MEASUREMENT, MAX_S_DROP, HeldOutScore, Int8Measurement, int8_refusal
from m4sam_ros.engines.selection import Choice, select_backend
from m4sam_ros.engines.tensorrt_backend import (check_tensorrt_precision, missing_tensorrt_hint, onnx_precision,
                                                strongly_typed)
from m4sam_ros.engines.torch_backend import TorchEncoder, TorchMemoryAttention
from m4sam_ros.model.m4sam import EncodedFrame, build_m4sam
from m4sam_ros.model.memory import MemoryView

from helpers import memory_output, memory_view, randomize_adapters

SIZE = 64
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def model():
    return randomize_adapters(build_m4sam("test", image_size=SIZE, seed=0))


# ---- RoPE --------------------------------------------------------------------------------

def test_rope_tables_are_sam2s_angles():
    cis = compute_axial_cis(dim=16, end_x=4, end_y=4)
    cos, sin = rope_tables(cis)
    assert cos.shape == sin.shape == (16, 8) and not torch.is_complex(cos)
    torch.testing.assert_close(torch.complex(cos, sin), cis)


@pytest.mark.parametrize("repeats", [1, 3])
def test_real_rope_equals_sam2_apply_rotary_enc(repeats):
    generator = torch.Generator().manual_seed(0)
    cis = compute_axial_cis(dim=32, end_x=4, end_y=4)  # 16 tokens, head dim 32
    q = torch.randn(2, 2, 16, 32, generator=generator)
    k = torch.randn(2, 2, 16 * repeats, 32, generator=generator)
    q_ref, k_ref = apply_rotary_enc(q, k, freqs_cis=cis, repeat_freqs_k=repeats > 1)
    cos, sin = rope_tables(cis)
    torch.testing.assert_close(rotate(q, cos, sin), q_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rotate(k, cos, sin), k_ref, rtol=1e-6, atol=1e-6)  # one frame's table, repeated


def test_rope_keeps_dtype_and_refuses_mismatched_tables():
    cos, sin = rope_tables(compute_axial_cis(dim=8, end_x=2, end_y=2))
    x = torch.randn(1, 1, 4, 8, dtype=torch.bfloat16)
    assert rotate(x, cos, sin).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="does not fit"):
        rotate(torch.randn(1, 1, 5, 8), cos, sin)


# ---- static memory attention vs SAM2 -----------------------------------------------------

@pytest.mark.parametrize("frame_index,recent", [(1, 0), (4, 3), (10, 9), (16, 15)])
def test_packed_memory_attention_equals_sam2(model, frame_index, recent):
    """Packing into fixed slots + masking gives SAM2's own result for every fill level."""
    generator = torch.Generator().manual_seed(frame_index)
    view = memory_view(model, frame_index, recent, generator)
    h = SIZE // 16
    frame = EncodedFrame(torch.randn(1, model.hidden_dim, h, h, generator=generator), None, None,
                         torch.randn(1, model.hidden_dim, h, h, generator=generator))
    slots = MemorySlots.for_bank(model)
    with torch.inference_mode():
        reference = model.condition_on_memory(frame, view)
        packed = pack_memory(model, view, slots, (h, h), batch=1)
        got = StaticMemoryAttention(model, slots, (h, h))(frame.image_embed, frame.pos_enc, *packed)
    spatial = min(recent, model.num_maskmem - 1) + 1
    assert int(packed.memory_mask.sum()) == spatial * h * h + (recent + 1) * (model.hidden_dim // model.mem_dim)
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)


def test_static_memory_attention_tables_follow_the_model_device():
    """SAM2 builds RoPE tables on the CPU; on a CUDA model the exported module must hold them on
    the GPU or export/parity fail with a device mismatch. ``meta`` stands in for a GPU here."""
    model = build_m4sam("test", image_size=SIZE, seed=0).to("meta")
    h = SIZE // 16
    static = StaticMemoryAttention(model, MemorySlots.for_bank(model), (h, h))
    assert {b.device.type for b in static.buffers()} == {"meta"}
    spatial, pointers = static.num_rope_keys, static.num_pointer_tokens
    embed = torch.empty(1, model.hidden_dim, h, h, device="meta")
    memory = torch.empty(1, spatial + pointers, model.mem_dim, device="meta")
    assert static(embed, embed, memory, memory, torch.empty(1, spatial + pointers, device="meta")).shape == embed.shape


def test_pack_memory_refuses_what_it_cannot_mirror(model):
    generator = torch.Generator().manual_seed(0)
    slots = MemorySlots.for_bank(model)
    empty = MemoryView(1, {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}, 17)
    with pytest.raises(ValueError, match="no conditioning frame"):
        pack_memory(model, empty, slots, (4, 4), 1)
    two = MemoryView(3, {"cond_frame_outputs": {0: memory_output(model, generator), 1: memory_output(model, generator)},
                         "non_cond_frame_outputs": {}}, 17)
    with pytest.raises(ValueError, match="slots for 1"):
        pack_memory(model, two, slots, (4, 4), 1)
    with pytest.raises(ValueError, match="MemorySlots needs"):
        MemorySlots(conditioning_frames=0, recent_frames=6, object_pointers=16)


# ---- backend selection (pure) -------------------------------------------------------------

CPU_ONLY = Platform(cuda_available=False, tensorrt_error="TensorRT is not installed: pip install tensorrt",
                    ort_providers=("CPUExecutionProvider",))
FULL_GPU = Platform(cuda_available=True, gpu_name="Orin", tensorrt_version="10.3.0",
                    ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider"))


@pytest.mark.parametrize("platform,expected", [
    (FULL_GPU, ("tensorrt", "cuda", "fp16")),
    (dataclasses.replace(FULL_GPU, tensorrt_version=None, tensorrt_error="not installed"),
     ("onnxruntime", "cuda", "fp32")),
    (dataclasses.replace(FULL_GPU, tensorrt_version=None, tensorrt_error="not installed",
                         ort_providers=("CPUExecutionProvider",)), ("pytorch", "cuda", "fp32")),
    (CPU_ONLY, ("pytorch", "cpu", "fp32")),
])
def test_auto_order_is_tensorrt_then_ort_cuda_then_torch_cuda_then_torch_cpu(platform, expected):
    choice = select_backend(platform=platform).choice
    assert (choice.backend, choice.device, choice.precision) == expected


def test_auto_explains_what_it_passed_over():
    line = select_backend(platform=CPU_ONLY).explain()
    assert line.startswith("picked pytorch on cpu (fp32)")
    assert "tensorrt on cuda: TensorRT is not installed" in line
    assert "onnxruntime on cuda: no CUDA GPU" in line


def test_explicit_backend_that_cannot_run_is_refused_not_replaced():
    with pytest.raises(EngineUnavailable, match="pip install tensorrt"):
        select_backend("tensorrt", platform=CPU_ONLY)
    with pytest.raises(EngineUnavailable, match="TensorRT runs on CUDA GPUs only"):
        select_backend("tensorrt", device="cpu", platform=FULL_GPU)
    choice = select_backend("onnxruntime", platform=CPU_ONLY).choice
    assert (choice.backend, choice.device) == ("onnxruntime", "cpu")


def test_precision_and_device_requests():
    choice = select_backend(precision="bf16", platform=FULL_GPU)
    assert (choice.choice.backend, choice.choice.precision) == ("pytorch", "bf16")
    assert any("tensorrt 10.3.0 runs fp16/fp32, not bf16" in line for line in choice.skipped)
    assert select_backend(device="cuda:1", platform=FULL_GPU).choice.device == "cuda:1"
    with pytest.raises(EngineUnavailable, match="calibration"):
        select_backend("tensorrt", precision="int8", platform=FULL_GPU)
    for bad in (dict(backend="tflite"), dict(device="gpu"), dict(precision="fp8")):
        with pytest.raises(ValueError, match="must be"):
            select_backend(platform=CPU_ONLY, **bad)


def test_int8_runs_on_onnx_runtime_cpu_only_and_follows_its_accuracy_policy():
    measured = select_backend(precision="int8", platform=FULL_GPU, unvalidated_int8=True)
    assert measured.choice == Choice("onnxruntime", "cpu", "int8")  # int8 under auto: the one engine that has it
    assert any("onnxruntime on cuda: onnxruntime runs fp32, not int8 (int8 runs on ONNX Runtime on CPU" in line
               for line in measured.skipped)
    assert select_backend("onnxruntime", "cpu", platform=CPU_ONLY).choice.precision == "fp32"  # auto: never int8
    refusal = int8_refusal()
    if refusal is None:
        assert select_backend("onnxruntime", "cpu", "int8", platform=CPU_ONLY).choice.precision == "int8"
    else:
        with pytest.raises(EngineUnavailable, match="int8 is withheld: its S-measure drops by"):
            select_backend("onnxruntime", "cpu", "int8", platform=CPU_ONLY)
    with pytest.raises(EngineUnavailable, match="pytorch has no int8: int8 runs on ONNX Runtime on CPU"):
        TorchEncoder(build_m4sam("test", image_size=SIZE), "cpu", "int8")


def test_int8_policy_is_one_measured_threshold():
    def measured(*drops):
        return Int8Measurement("w", "2025-01-01", tuple(HeldOutScore(f"set {i}", 10, 0.9, 0.9 - d)
                                                         for i, d in enumerate(drops)), "measure it")
    assert int8_refusal(measured(0.002, MAX_S_DROP)) is None
    reason = int8_refusal(measured(0.002, 0.03))
    assert "drops by 0.0300 (> 0.01)" in reason and "set 1 (10 frames) S 0.9000 -> 0.8700" in reason
    assert "`measure it`" in reason and "2025-01-01" in reason
    assert INT8_MEASUREMENT.date != "PENDING" and all(s.frames > 0 for s in INT8_MEASUREMENT.scores)


def test_tensorrt_versions_decide_precisions():
    """8.6-9.x: weakly typed fp16 (LayerNorm pinned) from the fp32 ONNX; 10+ (11 builds nothing
    else): strongly typed, fp16 from the fp16 ONNX; < 8.6 (JetPack 5's 8.5): not at all."""
    trt11 = dataclasses.replace(FULL_GPU, tensorrt_version="11.4.0")
    assert select_backend(platform=trt11).choice == Choice("tensorrt", "cuda", "fp16")
    assert [strongly_typed(v) for v in ("8.6.1", "9.3.0", "10.3.0", "11.4.0")] == [False, False, True, True]
    assert onnx_precision("10.3.0", "fp16") == "fp16" and onnx_precision("8.6.1", "fp16") == "fp32"
    assert onnx_precision("11.4.0", "fp32") == "fp32"
    old = select_backend(platform=dataclasses.replace(FULL_GPU, tensorrt_version="8.5.2"))
    assert old.choice.backend == "onnxruntime" and "too old" in old.skipped[0] and "JetPack 6" in old.skipped[0]
    assert check_tensorrt_precision("10.3.0", "fp16") == "fp16"
    with pytest.raises(EngineUnavailable, match=r"lacks LayerNormalization.*JetPack 6 \(TensorRT 10.3\)"):
        check_tensorrt_precision("8.5.2", "fp32")


def test_a_jetson_without_tensorrt_is_told_the_system_python_route():
    hint = missing_tensorrt_hint(jetson=True, python=(3, 11))
    assert "Python 3.11" in hint and "system Python 3.10" in hint and "--system-site-packages" in hint
    assert "pip install tensorrt" in missing_tensorrt_hint(jetson=False, python=(3, 11))


@pytest.mark.skipif(torch.cuda.is_available() or HAS_TENSORRT, reason="checks the CPU-only machine's choice")
def test_auto_on_this_cpu_machine_picks_pytorch_cpu_and_logs_why(model, caplog, tmp_path):
    with caplog.at_level(logging.INFO, logger="m4sam_ros.engines"):
        engines = create_engines(model, EngineSettings(cache_dir=str(tmp_path)))
    assert (engines.choice.backend, engines.choice.device) == ("pytorch", "cpu")
    picked = [r.getMessage() for r in caplog.records if "picked" in r.getMessage()]
    assert len(picked) == 1 and "TensorRT is not installed" in picked[0] and "no CUDA GPU" in picked[0]


# ---- TensorRT refuses clearly here --------------------------------------------------------

@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed here; the refusal applies where it is not")
def test_tensorrt_backend_raises_clear_error_without_tensorrt(model, tmp_path):
    from m4sam_ros.engines.tensorrt_backend import TrtGraph, build_engine

    for call in (lambda: build_engine(tmp_path / "x.onnx"), lambda: TrtGraph(b"")):
        with pytest.raises(EngineUnavailable, match="TensorRT is not installed: pip install tensorrt"):
            call()
    with pytest.raises(EngineUnavailable, match="use engine.backend=onnxruntime"):
        create_engines(model, EngineSettings(backend="tensorrt", cache_dir=str(tmp_path)))


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed here")
def test_build_engine_verb_explains_and_fails_cleanly(capsys):
    import argparse

    from m4sam_ros.tools import build_engine as build_engine_cmd

    parser = argparse.ArgumentParser()
    build_engine_cmd.add_arguments(parser)
    assert build_engine_cmd.run(parser.parse_args(["--image-size", str(SIZE)])) == 2
    assert "TensorRT is not installed" in capsys.readouterr().out


# ---- engine cache ------------------------------------------------------------------------

TARGET = (("tensorrt_version", "10.3.0"), ("gpu_name", "Orin (nvgpu)"), ("compute_capability", "8.7"))
KEY = EngineKey(graph="encoder", weights_sha256="ab" * 32, image_size=512, precision="fp16", target=TARGET,
                signature=(("batch", 1), ("opset", 17)))
CHANGED = {"graph": "memory_attention", "weights_sha256": "cd" * 32, "image_size": 1024, "precision": "fp32",
           "tensorrt_version": "8.6.2", "gpu_name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9",
           "signature": (("batch", 2), ("opset", 17))}


def _changed(key: EngineKey, field: str, value) -> EngineKey:
    """``key`` with one field, or one entry of its ``target``, set to ``value``."""
    target = dict(key.target)
    if field in target:
        return dataclasses.replace(key, target=tuple(dict(target, **{field: value}).items()))
    return dataclasses.replace(key, **{field: value})


def _value(key: EngineKey, field: str):
    return dict(key.target)[field] if field in dict(key.target) else getattr(key, field)


def test_every_key_field_changes_the_key():
    fields = {f.name for f in dataclasses.fields(EngineKey)} - {"target"}
    assert set(CHANGED) == fields | set(dict(TARGET))
    names = {KEY.stem(".engine")}
    for field, value in CHANGED.items():
        other = _changed(KEY, field, value)
        assert other.digest() != KEY.digest(), field
        assert KEY.differences(other) == {field: (_value(KEY, field), value)}
        names.add(other.stem(".engine"))
    assert len(names) == len(CHANGED) + 1
    assert EngineKey.from_dict(KEY.to_dict()) == KEY
    portable = dataclasses.replace(KEY, target=())  # an ONNX file: no backend target
    assert KEY.differences(portable) == {name: (value, "") for name, value in TARGET}


def test_cache_hit_and_foreign_stale_or_corrupt_engines_refused(tmp_path, caplog):
    cache = ArtifactCache(tmp_path)
    path = cache.store(KEY, ".engine", data=b"engine-bytes")
    assert cache.lookup(KEY, ".engine") == path and path.read_bytes() == b"engine-bytes"

    # a foreign engine (built with another TensorRT) copied under this key's name
    newer = _changed(KEY, "tensorrt_version", "10.4.0")
    foreign = cache.path(newer, ".engine")
    foreign.write_bytes(path.read_bytes())
    foreign.with_name(foreign.name + ".json").write_text(path.with_name(path.name + ".json").read_text())
    with caplog.at_level(logging.WARNING, logger="m4sam_ros.engines.cache"):
        assert cache.lookup(newer, ".engine") is None
    assert "tensorrt_version '10.3.0' (needed '10.4.0')" in caplog.text

    caplog.clear()
    path.write_bytes(b"engine-byt")  # truncated after it was recorded
    with caplog.at_level(logging.WARNING, logger="m4sam_ros.engines.cache"):
        assert cache.lookup(KEY, ".engine") is None
    assert "do not match the hash" in caplog.text

    path.with_name(path.name + ".json").unlink()
    assert cache.lookup(KEY, ".engine") is None
    assert cache.lookup(_changed(KEY, "gpu_name", "other"), ".engine") is None  # never built


def test_weights_hash_follows_the_weights():
    a, b = build_m4sam("test", image_size=SIZE, seed=0), build_m4sam("test", image_size=SIZE, seed=0)
    assert weights_hash(a) == weights_hash(b)
    with torch.no_grad():
        next(b.parameters()).view(-1)[0] += 1e-3
    assert weights_hash(a) != weights_hash(b)
    assert weights_hash(a) != weights_hash(build_m4sam("test", image_size=2 * SIZE, seed=0))


# ---- PyTorch and ONNX Runtime engines ------------------------------------------------------

def test_torch_engines_are_the_model(model):
    inputs = example_encoder_inputs(model, generator=torch.Generator().manual_seed(0))
    engine = TorchEncoder(model, "cpu")
    with torch.inference_mode():
        reference = model.encode(**inputs)
    for got, ref in zip(engine(**inputs), reference):
        torch.testing.assert_close(got, ref)
    bf16 = TorchEncoder(model, "cpu", "bf16")(**inputs)
    assert bf16.image_embed.dtype == torch.float32
    assert (bf16.image_embed - reference.image_embed).abs().max() < 0.1 * reference.image_embed.abs().max()
    torch.testing.assert_close(TorchMemoryAttention(model)(reference, None), model.condition_on_memory(reference, None))
    with pytest.raises(ValueError, match=r"expects rgb and depth of shape \(1, 3, 64, 64\)"):
        engine(inputs["rgb"][..., :32], inputs["depth"], inputs["modality_present"])
    with pytest.raises(EngineUnavailable, match="calibration"):
        TorchEncoder(model, "cpu", "int8")


@pytest.mark.slow
def test_onnxruntime_engines_match_pytorch_and_come_from_the_cache(model, tmp_path, caplog):
    settings = EngineSettings(backend="onnxruntime", device="cpu", cache_dir=str(tmp_path))
    engines = create_engines(model, settings)
    assert engines.encoder.describe() == "onnxruntime on cpu (fp32)"
    inputs = example_encoder_inputs(model, generator=torch.Generator().manual_seed(2))
    frame = engines.encoder(**inputs)
    with torch.inference_mode():
        reference = model.encode(**inputs)
    for got, ref in zip(frame, reference):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    view = memory_view(model, 5, 4, torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = model.condition_on_memory(reference, view)
    torch.testing.assert_close(engines.memory_attention(reference, view), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(engines.memory_attention(reference, None), model.condition_on_memory(reference, None))
    with pytest.raises(ValueError, match=r"\(1, 3, 64, 64\)"):
        engines.encoder(torch.cat([inputs["rgb"]] * 2), torch.cat([inputs["depth"]] * 2),
                        torch.cat([inputs["modality_present"]] * 2))
    with caplog.at_level(logging.INFO, logger="m4sam_ros.engines"):
        create_engines(model, settings)
    assert caplog.text.count("cache hit") == 2 and "exporting" not in caplog.text


@pytest.mark.slow
def test_onnxruntime_int8_engines_are_quantised_cached_and_close(model, tmp_path, caplog):
    """int8: weight MatMuls quantised (routers and attention products left float), cached
    under their own key next to the fp32 graphs they come from, outputs near fp32's."""
    settings = EngineSettings(backend="onnxruntime", device="cpu", precision="int8", cache_dir=str(tmp_path),
                              unvalidated_int8=True)
    with caplog.at_level(logging.INFO, logger="m4sam_ros.engines"):
        engines = create_engines(model, settings)
    assert engines.encoder.describe() == "onnxruntime on cpu (int8)"
    assert "quantising encoder to int8" in caplog.text and "quantising memory_attention to int8" in caplog.text
    int8_files = sorted(tmp_path.glob("*-int8-*.onnx"))
    assert len(int8_files) == 2 and len(list(tmp_path.glob("*-fp32-*.onnx"))) == 2
    sidecar = json.loads(int8_files[0].with_name(int8_files[0].name + ".json").read_text())
    assert sidecar["key"]["precision"] == "int8"
    assert dict(sidecar["key"]["target"]) == {"onnxruntime_version": onnxruntime.__version__}
    assert "quantization" in dict(sidecar["key"]["signature"])
    encoder = onnx.load(str(next(f for f in int8_files if f.name.startswith("encoder-"))))
    assert sum(n.op_type == "MatMulInteger" for n in encoder.graph.node) > 10
    routers = [n for n in encoder.graph.node if "/router/" in n.name and n.op_type in ("MatMul", "Gemm",
                                                                                          "MatMulInteger")]
    assert routers and {n.op_type for n in routers} <= {"MatMul", "Gemm"}
    inputs = example_encoder_inputs(model, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        reference = model.encode(**inputs)
    frame = engines.encoder(**inputs)
    for got, ref in zip(frame, reference):
        assert (got - ref).abs().max() < 0.1 * ref.abs().max()
    assert not torch.equal(frame.image_embed, reference.image_embed)  # quantised indeed
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="m4sam_ros.engines"):
        create_engines(model, settings)
    assert caplog.text.count("cache hit") == 2 and "quantising" not in caplog.text


def test_quantizer_gets_one_weight_per_gemm(tmp_path):
    """ONNX Runtime's quantizer transposes a Gemm's weight in place; two Gemms reading one shared
    weight made it transpose twice (a graph that would not load). Each Gemm gets its own copy."""
    weight = onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "w")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Gemm", ["x", "w"], ["h"], transB=1, name="first"),
         onnx.helper.make_node("Gemm", ["x", "w"], ["y"], transB=1, name="second")], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])],
        [onnx.helper.make_tensor_value_info("h", onnx.TensorProto.FLOAT, [2, 8]),
         onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 8])], initializer=[weight])
    source = tmp_path / "shared.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8), str(source))
    quantised = OrtGraph(quantize(source, tmp_path / "int8.onnx"))
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32))
    out = quantised.run({"x": x})
    reference = x @ torch.from_numpy(onnx.numpy_helper.to_array(weight).copy()).T
    for name in ("h", "y"):
        assert (out[name] - reference).abs().max() < 0.05 * reference.abs().max()


@pytest.mark.slow
def test_memory_attention_engine_has_the_banks_slots_and_its_own_cache_entry(model, tmp_path):
    """num_memory_frames picks a graph of 1 + N spatial slots (its own cache key), which equals
    SAM2 on such a bank and refuses a bank it has no room for."""
    def engines(frames):
        return create_engines(model, EngineSettings(backend="onnxruntime", device="cpu", cache_dir=str(tmp_path),
                                                    num_memory_frames=frames, memory_attention=True))
    two, six = engines(2), engines(None)
    h = SIZE // 16
    assert two.memory_attention.graph.input_shapes["memory"] == (1, 3 * h * h + 16 * 2, model.mem_dim)
    assert six.memory_attention.graph.input_shapes["memory"] == (1, 7 * h * h + 16 * 2, model.mem_dim)
    assert len(list(tmp_path.glob("memory_attention-*.onnx"))) == 2
    frame = model.encode(**example_encoder_inputs(model, generator=torch.Generator().manual_seed(5)))
    fits = memory_view(model, 3, 2, torch.Generator().manual_seed(6))  # conditioning + 2 recent frames
    with torch.inference_mode():
        expected = model.condition_on_memory(frame, fits)
    torch.testing.assert_close(two.memory_attention(frame, fits), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="holds 5 spatial memories but the exported graph has slots for 3"):
        two.memory_attention(frame, memory_view(model, 5, 4, torch.Generator().manual_seed(7)))
    with pytest.raises(ValueError, match=r"num_memory_frames must be in \[1, 6\]"):
        engines(7)


@pytest.mark.slow
def test_zero_shot_engines_run_sam2s_encoder_graph(model, tmp_path, caplog):
    """zero_shot=True exports SAM2's encoder alone; it equals the model's encode_sam2 and
    refuses learned-mode calls. Learned-mode engines answer encode_rgb through the RGB-D graph."""
    rgb = example_encoder_inputs(model, generator=torch.Generator().manual_seed(4))["rgb"]
    with torch.inference_mode():
        sam2_reference, rgb_reference = model.encode_sam2(rgb), model.encode_rgb(rgb)
    with caplog.at_level(logging.INFO, logger="m4sam_ros.engines"):
        engines = create_engines(model, EngineSettings(backend="onnxruntime", device="cpu", cache_dir=str(tmp_path),
                                                       zero_shot=True))
    assert "exporting encoder_sam2" in caplog.text and "exporting encoder " not in caplog.text
    assert set(engines.encoder.graphs) == {"encoder_sam2"}
    assert not list(tmp_path.glob("encoder-*.onnx")) and list(tmp_path.glob("encoder_sam2-*.onnx"))
    for got, ref in zip(engines.encoder.encode_sam2(rgb), sam2_reference):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="no encoder graph, which learned mode runs"):
        engines.encoder(rgb, torch.zeros_like(rgb), torch.ones(1, 2))
    with pytest.raises(ValueError, match=r"expects rgb of shape \(1, 3, 64, 64\)"):
        engines.encoder.encode_sam2(rgb[..., :32])
    learned = create_engines(model, EngineSettings(backend="onnxruntime", device="cpu", cache_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="no encoder_sam2 graph, which zero-shot mode runs"):
        learned.encoder.encode_sam2(rgb)
    for got, ref in zip(learned.encoder.encode_rgb(rgb), rgb_reference):  # the RGB-D graph, depth absent
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    torch_engine = TorchEncoder(model)
    for got, ref in zip(torch_engine.encode_sam2(rgb) + torch_engine.encode_rgb(rgb), sam2_reference + rgb_reference):
        torch.testing.assert_close(got, ref)


# ---- progress display ----------------------------------------------------------------------

class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_stage_shows_elapsed_time_on_a_terminal_and_says_failed(caplog):
    terminal = _Terminal()
    with stage("building", stream=terminal, interval_s=0.01):
        time.sleep(0.05)
    assert "\rbuilding " in terminal.getvalue() and " s" in terminal.getvalue()
    assert terminal.getvalue().rstrip().endswith("s") and "building: done in" in terminal.getvalue()
    quiet = io.StringIO()  # not a terminal (a launch file's log): log lines, no spinner characters
    with caplog.at_level(logging.INFO, logger="m4sam_ros.engines.progress"):
        with pytest.raises(RuntimeError), stage("parsing", stream=quiet):
            raise RuntimeError("boom")
    assert quiet.getvalue() == "" and "parsing: failed in" in caplog.text


def test_auto_moves_on_when_a_candidate_fails_to_export(model, monkeypatch, tmp_path, caplog):
    """Under auto an export or build failure of one backend is logged and the next one runs."""
    from m4sam_ros.engines import factory, selection
    from m4sam_ros.engines.export import ExportError

    create = factory._create

    def failing_onnxruntime(model, choice, settings):
        if choice.backend == "onnxruntime":
            raise ExportError("graph would not export")
        return create(model, choice, settings)

    # this CPU machine's auto order has no ONNX Runtime candidate: put one first
    monkeypatch.setattr(selection, "AUTO_ORDER", (("onnxruntime", "cpu"), ("pytorch", "cpu")))
    monkeypatch.setattr(factory, "_create", failing_onnxruntime)
    platform = Platform(cuda_available=False, ort_providers=("CPUExecutionProvider",))
    with caplog.at_level("WARNING", logger="m4sam_ros.engines.factory"):
        engines = factory.create_engines(model, EngineSettings(cache_dir=str(tmp_path)), platform=platform)
    assert engines.choice.backend == "pytorch"
    assert "onnxruntime on cpu could not start: graph would not export" in caplog.text


def test_work_left_by_a_process_that_ended_mid_write_is_swept(tmp_path):
    """A stop signal during an export leaves only .incomplete-<pid>-... names: never read, swept next time."""
    cache = ArtifactCache(tmp_path)
    dead = _exited_pid()
    leftover = tmp_path / f".incomplete-{dead}-abc"
    leftover.mkdir()
    (leftover / "graph.onnx").write_bytes(b"half an export")
    ours = tmp_path / f".incomplete-{os.getpid()}-xyz"
    ours.mkdir()
    with cache.workspace() as folder:
        assert folder.parent == tmp_path and folder.name.startswith(f".incomplete-{os.getpid()}-")
        assert not leftover.exists() and ours.exists()  # a live process's work is left alone
    assert not folder.exists()
    path = cache.store(KEY, ".engine", data=b"complete")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ours.name, path.name, path.name + ".json"])


def _exited_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid
