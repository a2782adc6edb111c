"""ONNX Runtime: CPU and CUDA execution providers, torch tensors in and out.

On CUDA the graph reads and writes torch's own GPU buffers through I/O binding, so no
frame goes through host memory. ONNX Runtime silently falls back to CPU when its CUDA
provider cannot load (missing CUDA/cuDNN libraries); that is checked and refused here,
because a "CUDA" engine that runs on CPU is a latency bug nobody sees.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from m4sam_ros.engines.base import EngineUnavailable

log = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise EngineUnavailable("ONNX Runtime is not installed: pip install onnxruntime (CPU) or onnxruntime-gpu "
                                "(CUDA), or use engine.backend=pytorch") from error
    return onnxruntime


def available_providers() -> tuple[str, ...]:
    return tuple(import_onnxruntime().get_available_providers())


class OrtGraph:
    """One ONNX graph in an ONNX Runtime session; ``run`` maps names to torch tensors."""

    def __init__(self, onnx_path: Path | str, device: torch.device | str = "cpu", threads: int = 0):
        ort = import_onnxruntime()
        self.device = torch.device(device)
        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX file not found: {self.path} (create it with `m4sam export`)")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        # idle ONNX Runtime threads busy-wait by default, stealing the cores the PyTorch stages
        # (decoder, memory encoder) run on between two graph calls
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.device.type == "cuda":
            providers = available_providers()
            if CUDA_PROVIDER not in providers:
                raise EngineUnavailable(f"this ONNX Runtime has no CUDA provider (it has {', '.join(providers)}): "
                                        "pip install onnxruntime-gpu, or use device cpu")
            device_id = self.device.index if self.device.index is not None else torch.cuda.current_device()
            self.device = torch.device("cuda", device_id)
            provider_list = [(CUDA_PROVIDER, {"device_id": device_id}), CPU_PROVIDER]
        elif self.device.type == "cpu":
            provider_list = [CPU_PROVIDER]
        else:
            raise ValueError(f"ONNX Runtime runs on cpu or cuda, not {self.device}")
        self.session = ort.InferenceSession(str(self.path), options, providers=provider_list)
        if self.device.type == "cuda" and self.session.get_providers()[0] != CUDA_PROVIDER:
            raise EngineUnavailable(f"ONNX Runtime could not start its CUDA provider (session uses "
                                    f"{self.session.get_providers()}); check the CUDA/cuDNN versions onnxruntime-gpu "
                                    "needs, or use device cpu")
        self.input_shapes = self._shapes(self.session.get_inputs())
        self.output_shapes = self._shapes(self.session.get_outputs())
        log.info("ONNX Runtime session for %s on %s (providers %s)", self.path.name, self.device,
                 self.session.get_providers())

    def _shapes(self, values) -> dict[str, tuple[int, ...]]:
        shapes = {}
        for value in values:
            if value.type != "tensor(float)" or not all(isinstance(d, int) for d in value.shape):
                raise ValueError(f"{self.path}: {value.name} is {value.type} {value.shape}; the engines need "
                                 "static float32 tensors (re-export with `m4sam export`)")
            shapes[value.name] = tuple(value.shape)
        return shapes

    def _check(self, feeds: dict[str, torch.Tensor]) -> None:
        if set(feeds) != set(self.input_shapes):
            raise ValueError(f"{self.path.name} takes inputs {sorted(self.input_shapes)}, got {sorted(feeds)}")
        for name, tensor in feeds.items():
            if tuple(tensor.shape) != self.input_shapes[name]:
                raise ValueError(f"{self.path.name}: input {name} must be {self.input_shapes[name]}, "
                                 f"got {tuple(tensor.shape)}")

    def run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self._check(feeds)
        if self.device.type == "cpu":
            arrays = {n: t.detach().to("cpu", torch.float32).contiguous().numpy() for n, t in feeds.items()}
            results = self.session.run(list(self.output_shapes), arrays)
            return {n: torch.from_numpy(r) for n, r in zip(self.output_shapes, results)}
        return self._run_cuda(feeds)

    def _run_cuda(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        binding = self.session.io_binding()
        device_id = self.device.index
        inputs = {n: t.detach().to(self.device, torch.float32).contiguous() for n, t in feeds.items()}
        torch.cuda.current_stream(self.device).synchronize()  # ORT reads on its own stream
        for name, tensor in inputs.items():
            binding.bind_input(name, "cuda", device_id, np.float32, tuple(tensor.shape), tensor.data_ptr())
        outputs = {n: torch.empty(shape, dtype=torch.float32, device=self.device)
                   for n, shape in self.output_shapes.items()}
        for name, tensor in outputs.items():
            binding.bind_output(name, "cuda", device_id, np.float32, tuple(tensor.shape), tensor.data_ptr())
        self.session.run_with_iobinding(binding)  # returns once the outputs are written
        return outputs
