"""Which backend runs: ``auto`` takes the fastest one this machine can run, and says why.

Order for ``auto`` (``backends.AUTO_ORDER``): TensorRT (CUDA), ONNX Runtime (CUDA), PyTorch
(CUDA), PyTorch (CPU). The decision is pure Python over a ``Platform`` description and the
backend table, so it is tested without a GPU.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from m4sam_ros.engines.backends import AUTO_ORDER, BACKEND_NAMES, BACKENDS, explicit_order
from m4sam_ros.engines.base import INT8_WHERE, PRECISIONS, EngineUnavailable
from m4sam_ros.engines.int8_policy import int8_refusal
from m4sam_ros.engines.platform import Platform
from m4sam_ros.engines.tensorrt_backend import too_old

AUTO = "auto"


@dataclass(frozen=True)
class Choice:
    backend: str
    device: str  # "cpu", "cuda" or "cuda:N"
    precision: str


@dataclass
class Selection:
    """The candidates to try, best first, and a line per candidate passed over."""

    candidates: list[Choice]
    skipped: list[str] = field(default_factory=list)

    @property
    def choice(self) -> Choice:
        return self.candidates[0]

    def explain(self, picked: Choice | None = None) -> str:
        """One log line: what was picked and why the better candidates were passed over."""
        picked = picked or self.choice
        why = "; ".join(self.skipped) if self.skipped else "first choice available"
        return f"picked {picked.backend} on {picked.device} ({picked.precision}); passed over: {why}"


def _check_request(backend: str, device: str, precision: str) -> None:
    if backend != AUTO and backend not in BACKEND_NAMES:
        raise ValueError(f"engine backend must be {AUTO!r} or one of {BACKEND_NAMES}, got {backend!r}")
    if device != AUTO and not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(f"engine device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if precision != AUTO and precision not in PRECISIONS:
        raise ValueError(f"engine precision must be {AUTO!r} or one of {PRECISIONS}, got {precision!r}")


def _why_not(name: str, device_type: str, precision: str, platform: Platform,
             unvalidated_int8: bool) -> tuple[str | None, tuple[str, ...]]:
    """(why this candidate cannot run the request, or None; the precisions it runs here)."""
    backend = BACKENDS[name]
    reason = backend.unavailable(platform, device_type)
    supported = backend.precisions(platform, device_type)
    version = f" {platform.tensorrt_version}" if name == "tensorrt" else ""
    if reason is None and not supported:
        reason = too_old(platform.tensorrt_version)
    elif reason is None and precision != AUTO and precision not in supported:
        reason = f"{name}{version} runs {'/'.join(supported)}, not {precision}"
        reason += f" ({INT8_WHERE})" if precision == "int8" else ""
    elif reason is None and precision == "int8" and not unvalidated_int8:
        reason = int8_refusal()
    return reason, supported


def select_backend(backend: str = AUTO, device: str = AUTO, precision: str = AUTO,
                   platform: Platform | None = None, unvalidated_int8: bool = False) -> Selection:
    """Candidates for (backend, device, precision), each possibly ``auto``.

    An explicit backend that cannot run here raises ``EngineUnavailable`` with the reason
    (a user who asked for TensorRT must not silently get something else); ``auto`` skips
    what cannot run and records why (``Selection.explain``; the factory logs it). An explicit
    precision under ``auto`` may also land on what only runs when asked for (int8: ONNX
    Runtime on CPU). int8 follows its accuracy policy (``int8_policy.py``) unless ``unvalidated_int8``
    (measuring that policy).
    """
    _check_request(backend, device, precision)
    platform = platform or Platform.probe()
    device_type = device.split(":")[0]
    pool = explicit_order() if backend != AUTO or precision != AUTO else AUTO_ORDER
    order = [(b, d) for b, d in pool if (backend == AUTO or b == backend) and (device == AUTO or d == device_type)]
    if not order:  # tensorrt on cpu: let the table say why
        order = [(backend, device_type)]
    selection = Selection(candidates=[])
    for b, d in order:
        reason, supported = _why_not(b, d, precision, platform, unvalidated_int8)
        if reason is not None:
            selection.skipped.append(f"{b} on {d}: {reason}")
            continue
        resolved_device = device if device.startswith("cuda:") else d
        selection.candidates.append(Choice(b, resolved_device, supported[0] if precision == AUTO else precision))
    if not selection.candidates:
        raise EngineUnavailable(f"no engine can run backend={backend} device={device} precision={precision} here: "
                                + "; ".join(selection.skipped))
    return selection
