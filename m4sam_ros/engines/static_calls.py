"""The PyTorch engines' static-shape calls: replayed as CUDA graphs, optionally ``torch.compile``d.

Why: at batch 1 a big GPU waits on the CPU. The encoder (Hiera + adapter + FPN) and the
memory attention launch hundreds of small kernels per frame, and the launches, not the
arithmetic, set the frame time. A CUDA graph records one call's kernels on fixed buffers
once and replays them with a single launch. Both calls have static shapes for a tracker
(batch 1, the model's input size; the memory attention on the bank packed into fixed
slots, ``memory_attention.pack_memory``), so one capture per call serves a whole stream.

``StaticCall`` runs a function on static input buffers: inputs are copied in, outputs are
cloned out (a later replay overwrites the graph's own outputs, which a caller may still
hold). On CUDA it captures a graph after warm-up runs on a side stream (they initialise
cuDNN/cuBLAS workspaces and, with ``torch.compile``, compile); with ``capture=False`` it
runs the function eagerly on the same buffers, which is how the bookkeeping is tested on
machines without a GPU. ``StaticCalls`` keys them by (name, input signature): a new shape
is a new capture, never a wrong replay; a capture that fails is logged and that call runs
eagerly from then on. ``first_call_s`` records how long each first call took (warm-up,
compile and capture included): what ``m4sam bench`` reports as set-up time.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)

WARMUP_RUNS = 3  # PyTorch's advice before a capture: lazy initialisation must not land in the graph
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
Signature = tuple[tuple[tuple[int, ...], torch.dtype, str], ...]


def cuda_graphs_unavailable(device: torch.device) -> str | None:
    """Why CUDA graphs cannot run on ``device``, or None."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device; {device} runs eagerly"
    return None


def signature(tensors: Sequence[torch.Tensor]) -> Signature:
    """What a captured graph is valid for: shape, dtype and device of every input."""
    return tuple((tuple(t.shape), t.dtype, str(t.device)) for t in tensors)


def compute_context(device: torch.device, precision: str) -> contextlib.ExitStack:
    """Inference mode plus autocast for fp16/bf16. Autocast's weight-cast cache stays off:
    cast weights cached during a capture would be freed behind the graph's back."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    if precision != "fp32":
        stack.enter_context(torch.autocast(device.type, dtype=_DTYPES[precision], cache_enabled=False))
    return stack


class StaticCall:
    """``fn`` on static input buffers; a CUDA graph of it when ``capture`` (see module docstring)."""

    def __init__(self, fn: Callable[..., tuple[torch.Tensor, ...]], inputs: Sequence[torch.Tensor],
                 context: Callable[[], contextlib.AbstractContextManager], capture: bool):
        self.fn, self.context = fn, context
        self.signature = signature(inputs)
        with torch.inference_mode():
            self.inputs = tuple(t.detach().clone() for t in inputs)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: tuple[torch.Tensor, ...] = ()
        if capture:
            self._capture()

    def _capture(self) -> None:
        device = self.inputs[0].device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), self.context():
            for _ in range(WARMUP_RUNS):
                self.fn(*self.inputs)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the node's other threads may touch CUDA while its inference thread captures
        with self.context(), torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self.outputs = tuple(self.fn(*self.inputs))
        self.graph = graph

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if signature(inputs) != self.signature:
            raise ValueError(f"this static call was made for inputs {self.signature}, got {signature(inputs)}")
        with torch.inference_mode():
            for buffer, value in zip(self.inputs, inputs):
                buffer.copy_(value)
            if self.graph is not None:
                self.graph.replay()
                outputs = self.outputs
            else:
                with self.context():
                    outputs = tuple(self.fn(*self.inputs))
            return tuple(t.clone() for t in outputs)


@dataclass
class StaticCalls:
    """Named static-shape functions of one engine, a ``StaticCall`` per (name, input signature).

    cuda_graphs: capture CUDA graphs (the caller has checked the device; False runs the same
    static buffers eagerly); compile: wrap each function in ``torch.compile`` (``dynamic=False``:
    the shapes are static, a new one is a recompile, as it is a new capture)."""

    functions: dict[str, Callable[..., tuple[torch.Tensor, ...]]]
    device: torch.device
    precision: str
    cuda_graphs: bool
    compile: bool = False
    calls: dict[tuple[str, Signature], StaticCall] = field(default_factory=dict)
    eager: dict[tuple[str, Signature], str] = field(default_factory=dict)  # capture failed: why
    first_call_s: dict[str, float] = field(default_factory=dict)  # "name shapes" -> seconds

    def __post_init__(self) -> None:
        if self.compile:
            self.functions = {name: torch.compile(fn, dynamic=False) for name, fn in self.functions.items()}

    def context(self) -> contextlib.ExitStack:
        return compute_context(self.device, self.precision)

    def __call__(self, name: str, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key = (name, signature(inputs))
        call = self.calls.get(key)
        if call is not None:
            return call(*inputs)
        if key in self.eager:
            with self.context():
                return tuple(self.functions[name](*inputs))
        return self._first_call(key, inputs)

    def _first_call(self, key: tuple[str, Signature], inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        name = key[0]
        label = f"{name} {' '.join('x'.join(map(str, shape)) for shape, _, _ in key[1])}"
        start = time.perf_counter()
        try:
            call = StaticCall(self.functions[name], inputs, self.context, capture=self.cuda_graphs)
        except RuntimeError as error:  # an op that cannot be captured: this call stays eager, the engine runs on
            if not self.cuda_graphs:
                raise
            log.warning("CUDA graph capture of %s failed; it runs eagerly: %s", label, error)
            self.eager[key] = str(error)
            with self.context():
                outputs = tuple(self.functions[name](*inputs))
        else:
            self.calls[key] = call
            outputs = call(*inputs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.first_call_s[label] = time.perf_counter() - start
        how = "captured as a CUDA graph" if self.cuda_graphs and key in self.calls else "first call"
        log.info("%s: %s%s in %.2f s", label, how, " (torch.compile)" if self.compile else "", self.first_call_s[label])
        return outputs
