"""Every parameter of the saliency node: one table, declared with descriptors, validated.

The table is the single source of truth: the node declares from it, ``config/m4sam.yaml``
mirrors its defaults (a test checks they are equal) and the README's parameter table is
generated from it (``python -m m4sam_ros.ros.parameters``). Ranges go into the descriptor
so rclpy enforces them and tools (rqt_reconfigure) show them; what a range cannot say
(choices, device syntax) is checked in ``check``, and relations between start-up
parameters (depth.min_m < depth.max_m, and with the weights' own) when the model is built.
Read-only parameters (model, engine, QoS) are fixed at start-up; the rest apply at run time.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node

from m4sam_ros.depth import SCALES as DEPTH_SCALES
from m4sam_ros.engines.backends import BACKEND_NAMES, RUNNABLE_PRECISIONS
from m4sam_ros.model.builder import DEFAULT_IMAGE_SIZE
from m4sam_ros.model.config import PRESETS as MODEL_PRESETS
from m4sam_ros.ros.qos import RELIABILITIES
from m4sam_ros.tracker import MODES

__all__ = ["PARAMETERS", "NodeParameters", "ParameterError", "ParameterSpec", "check", "declare_all", "defaults", "spec"]

Value = bool | int | float | str

_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
          float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}


@dataclass(frozen=True)
class ParameterSpec:
    """One parameter: name, default (its type is the parameter's type), limits, meaning."""

    name: str
    default: Value
    description: str
    range: tuple[float, float] | None = None   # inclusive
    step: float = 0
    choices: tuple[str, ...] = ()
    read_only: bool = False                    # True: fixed at start-up

    @property
    def type_name(self) -> str:
        return {bool: "bool", int: "int", float: "double", str: "string"}[type(self.default)]

    def descriptor(self) -> ParameterDescriptor:
        descriptor = ParameterDescriptor(
            name=self.name, type=_TYPES[type(self.default)], description=self.description,
            read_only=self.read_only)
        if self.choices:
            descriptor.additional_constraints = "one of: " + ", ".join(self.choices)
        if self.range is not None and isinstance(self.default, float):
            descriptor.floating_point_range = [FloatingPointRange(
                from_value=float(self.range[0]), to_value=float(self.range[1]), step=float(self.step))]
        elif self.range is not None and isinstance(self.default, int):
            descriptor.integer_range = [IntegerRange(
                from_value=int(self.range[0]), to_value=int(self.range[1]), step=int(self.step))]
        return descriptor


PRESETS = tuple(MODEL_PRESETS)
BACKENDS = ("auto", *BACKEND_NAMES)
PRECISIONS = ("auto", *RUNNABLE_PRECISIONS)

PARAMETERS: tuple[ParameterSpec, ...] = (
    # -- output (changeable at run time) ---------------------------------------------------
    ParameterSpec("mask_threshold", 0.5, "Saliency probability at or above which a pixel is salient.",
                  range=(0.01, 0.99)),
    ParameterSpec("min_object_area_fraction", 0.001,
                  "Connected regions smaller than this fraction of the image are noise: dropped from mask and objects.",
                  range=(0.0, 0.5)),
    ParameterSpec("max_objects", 10, "Most objects reported per frame, highest score first.", range=(1, 100), step=1),
    ParameterSpec("publish_probability", False, "Also publish saliency/probability (32FC1, 0..1)."),
    ParameterSpec("overlay_alpha", 0.5, "Tint strength of salient pixels in saliency/overlay.", range=(0.0, 1.0)),
    ParameterSpec("points.decimation", 4,
                  "saliency/points keeps every N-th salient pixel in each direction (computed only while subscribed).",
                  range=(1, 64), step=1),
    # -- input ---------------------------------------------------------------------------
    ParameterSpec("input.rgb_transport", "raw",
                  "raw: sensor_msgs/Image on rgb/image; compressed: sensor_msgs/CompressedImage (jpeg/png) on "
                  "<rgb/image>/compressed, as image_transport names it.", choices=("raw", "compressed"), read_only=True),
    ParameterSpec("input.depth_transport", "raw",
                  "raw: sensor_msgs/Image on depth/image; compressedDepth: 16-bit png on <depth/image>/compressedDepth.",
                  choices=("raw", "compressedDepth"), read_only=True),
    ParameterSpec("sync.slop", 0.015,
                  "Largest RGB/depth stamp difference (s) that still pairs; keep it below half the frame period.",
                  range=(0.0, 1.0)),
    ParameterSpec("sync.queue_size", 5, "Frames per stream kept while waiting for a partner.", range=(1, 100), step=1),
    ParameterSpec("sync.depth_timeout", 0.5,
                  "Seconds without depth after which the node runs RGB-only (until depth returns).",
                  range=(0.05, 60.0)),
    ParameterSpec("qos.reliability", "auto",
                  "Camera subscriptions: auto matches the publishers (RELIABLE when all are, else BEST_EFFORT, which "
                  "loses large images between processes); reliable; best_effort.",
                  choices=RELIABILITIES, read_only=True),
    ParameterSpec("diagnostics.period", 1.0, "Seconds between /diagnostics messages.", range=(0.1, 60.0),
                  read_only=True),
    ParameterSpec("lifecycle.autostart", True,
                  "Configure and activate at start-up; false leaves the managed node unconfigured for a lifecycle manager.",
                  read_only=True),
    # -- model (fixed at start-up) ---------------------------------------------------------
    ParameterSpec("model.preset", "hiera_t",
                  "SAM2 trunk size; 'test' is a tiny model for tests and the demo (random-init unless model.sam2_checkpoint is set).",
                  choices=PRESETS, read_only=True),
    ParameterSpec("model.sam2_checkpoint", "",
                  "Official SAM2.1 checkpoint (.pt) matching model.preset; required unless preset is 'test'.",
                  read_only=True),
    ParameterSpec("model.adapter", "",
                  "Trained adapter weights (m4sam train); empty = zero-shot (SAM2 alone, see model.mode).",
                  read_only=True),
    ParameterSpec("model.image_size", 0,
                  "Square model input size in pixels (multiple of 32); 0 = what model.adapter was trained at, "
                  f"{DEFAULT_IMAGE_SIZE} without an adapter.", range=(0, 2048), step=32, read_only=True),
    ParameterSpec("model.mode", "auto",
                  "auto: learned when model.adapter is set, else zero_shot: training-free SAM2 propagating an "
                  "RGB-D first mask (not the VSOD papers' 'zero-shot', which means no first-frame annotation).",
                  choices=MODES, read_only=True),
    ParameterSpec("model.seed", 0, "Seed of the random initialisation (only matters for preset 'test').",
                  range=(0, 2**31 - 1), step=1, read_only=True),
    # -- memory bank and depth normalisation (fixed at start-up) ---------------------------
    ParameterSpec("tracker.num_memory_frames", 6, "Recent frames kept in the memory bank besides the conditioning frame.",
                  range=(1, 6), step=1, read_only=True),
    ParameterSpec("tracker.gap_timeout_s", 1.0, "A stamp gap longer than this (s) re-initialises the memory bank.",
                  range=(0.05, 3600.0), read_only=True),
    ParameterSpec("tracker.lost_score_threshold", 0.1,
                  "Object-presence score below which a frame counts as 'target lost'.", range=(0.0, 1.0),
                  read_only=True),
    ParameterSpec("tracker.lost_patience_frames", 15, "Consecutive 'lost' frames before the memory re-initialises.",
                  range=(1, 10000), step=1, read_only=True),
    ParameterSpec("depth.min_m", 0.0, "Nearest valid depth (m); closer is a hole. 0 = what model.adapter was "
                  "trained on (0.1 without an adapter); learned mode refuses another.",
                  range=(0.0, 100.0), read_only=True),
    ParameterSpec("depth.max_m", 0.0, "Farthest valid depth (m); farther is a hole. 0 = what model.adapter was "
                  "trained on (10 without an adapter); learned mode refuses another.",
                  range=(0.0, 100.0), read_only=True),
    ParameterSpec("depth.scale", "auto", "How metres map to the model's [0, 1] depth; auto = what model.adapter "
                  "was trained on (linear without an adapter); learned mode refuses another.",
                  choices=("auto",) + DEPTH_SCALES, read_only=True),
    # -- engine (fixed at start-up) --------------------------------------------------------
    ParameterSpec("engine.backend", "auto",
                  "Encoder/memory-attention backend; auto: TensorRT, then ONNX Runtime CUDA, then PyTorch "
                  "CUDA, then PyTorch CPU (the log says what was picked and why).",
                  choices=BACKENDS, read_only=True),
    ParameterSpec("engine.device", "auto", "auto (cuda if available, else cpu), cpu, cuda or cuda:N.",
                  read_only=True),
    ParameterSpec("engine.precision", "auto",
                  "Compute precision; auto: the backend's best (fp16 on TensorRT, fp32 elsewhere); int8: ONNX Runtime "
                  "on CPU (dynamic quantisation), offered while its measured S-measure drop stays <= 0.01.",
                  choices=PRECISIONS, read_only=True),
    ParameterSpec("engine.cache_dir", "",
                  "Exported ONNX graphs and TensorRT engines; empty = $M4SAM_CACHE_DIR or ~/.cache/m4sam_ros.",
                  read_only=True),
    ParameterSpec("engine.cuda_graphs", False,
                  "PyTorch backend on CUDA: replay the encoder and memory attention as CUDA graphs (less launch "
                  "overhead at batch 1; captured on the first frame). Ignored, with a warning, on CPU.",
                  read_only=True),
    ParameterSpec("engine.compile", False,
                  "PyTorch backend: run the encoder and memory attention through torch.compile (the first frame "
                  "waits for the compile: a minute or more).", read_only=True),
    ParameterSpec("engine.num_threads", 0,
                  "CPU threads for torch and ONNX Runtime; 0 = their default (one per core), which collapses when "
                  "other processes load the CPU: set it on shared robot CPUs.",
                  range=(0, 256), step=1, read_only=True),
    ParameterSpec("engine.simulated_latency_ms", 0.0,
                  "FOR TESTS ONLY: extra sleep before each inference, to emulate a slow model.",
                  range=(0.0, 10000.0)),
)

_BY_NAME = {p.name: p for p in PARAMETERS}
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def spec(name: str) -> ParameterSpec:
    return _BY_NAME[name]


def defaults() -> dict[str, Value]:
    """Flat {name: default}, as in config/m4sam.yaml."""
    return {p.name: p.default for p in PARAMETERS}


def check(name: str, value: Any) -> str | None:
    """Why ``value`` is not acceptable for ``name`` beyond type/range (rclpy checks those), else None."""
    parameter = _BY_NAME.get(name)
    if parameter is None:
        return None
    if parameter.choices and value not in parameter.choices:
        return f"{name} must be one of {', '.join(parameter.choices)}; got {value!r}"
    if name == "engine.device" and not _DEVICE.match(str(value)):
        return f"engine.device must be auto, cpu, cuda or cuda:N; got {value!r}"
    return None


@dataclass(frozen=True)
class InputParameters:
    rgb_transport: str
    depth_transport: str


@dataclass(frozen=True)
class SyncParameters:
    slop: float
    queue_size: int
    depth_timeout: float


@dataclass(frozen=True)
class ModelParameters:
    preset: str
    sam2_checkpoint: str
    adapter: str
    image_size: int
    mode: str
    seed: int


@dataclass(frozen=True)
class TrackerParameters:
    num_memory_frames: int
    gap_timeout_s: float
    lost_score_threshold: float
    lost_patience_frames: int


@dataclass(frozen=True)
class DepthParameters:
    min_m: float
    max_m: float
    scale: str


@dataclass(frozen=True)
class EngineParameters:
    backend: str
    device: str
    precision: str
    cache_dir: str
    cuda_graphs: bool
    compile: bool
    num_threads: int
    simulated_latency_ms: float


@dataclass(frozen=True)
class QosParameters:
    reliability: str


@dataclass(frozen=True)
class PointsParameters:
    decimation: int


@dataclass(frozen=True)
class LifecycleParameters:
    autostart: bool


@dataclass(frozen=True)
class DiagnosticsParameters:
    period: float


@dataclass(frozen=True)
class NodeParameters:
    """Typed snapshot of all parameters; replaced as a whole when one changes (thread-safe reads)."""

    mask_threshold: float
    min_object_area_fraction: float
    max_objects: int
    publish_probability: bool
    overlay_alpha: float
    points: PointsParameters
    input: InputParameters
    sync: SyncParameters
    qos: QosParameters
    diagnostics: DiagnosticsParameters
    lifecycle: LifecycleParameters
    model: ModelParameters
    tracker: TrackerParameters
    depth: DepthParameters
    engine: EngineParameters

    @classmethod
    def from_values(cls, values: Mapping[str, Value]) -> "NodeParameters":
        """Build from a flat {parameter name: value} mapping holding every parameter."""
        missing = set(_BY_NAME) - set(values)
        if missing:
            raise ValueError(f"missing parameters: {', '.join(sorted(missing))}")
        groups = {"points": PointsParameters, "input": InputParameters, "sync": SyncParameters, "qos": QosParameters,
                  "diagnostics": DiagnosticsParameters, "lifecycle": LifecycleParameters,
                  "model": ModelParameters, "tracker": TrackerParameters, "depth": DepthParameters,
                  "engine": EngineParameters}
        kwargs: dict[str, Any] = {}
        for field in fields(cls):
            group = groups.get(field.name)
            if group is None:
                kwargs[field.name] = values[field.name]
            else:
                kwargs[field.name] = group(**{f.name: values[f"{field.name}.{f.name}"] for f in fields(group)})
        return cls(**kwargs)


class ParameterError(ValueError):
    """A parameter given at start-up (command line, YAML, launch file) is unacceptable."""


def declare_all(node: Node, on_change: Callable[[NodeParameters], None] | None = None) -> NodeParameters:
    """Declare every parameter on ``node`` (overrides validated) and return the settings.

    The validation callback is registered first, so values from the command line or a
    YAML file go through the same checks as later ``ros2 param set`` calls; after
    declaration, every accepted change is passed to ``on_change`` as complete settings.
    Raises ParameterError with a readable reason instead of rclpy's exception types.
    """
    declared = False

    def validate(parameters: list) -> SetParametersResult:
        for parameter in parameters:
            reason = check(parameter.name, parameter.value)
            if reason is not None:
                return SetParametersResult(successful=False, reason=reason)
        if declared and on_change is not None:
            values = {p.name: node.get_parameter(p.name).value for p in PARAMETERS}
            values.update({p.name: p.value for p in parameters})
            on_change(NodeParameters.from_values(values))
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(validate)
    for p in PARAMETERS:
        try:
            node.declare_parameter(p.name, p.default, p.descriptor())
        except InvalidParameterTypeException as exc:
            hint = " (write a decimal point, e.g. 1.0, for a double)" if p.type_name == "double" else ""
            raise ParameterError(f"parameter {p.name} must be of type {p.type_name}{hint}: {exc}") from None
        except InvalidParameterValueException as exc:
            raise ParameterError(f"parameter {p.name}: {_reason(exc)}") from None
    declared = True
    return NodeParameters.from_values({p.name: node.get_parameter(p.name).value for p in PARAMETERS})


def _reason(exc: Exception) -> str:
    text = str(exc)
    return text.split("Reason: ", 1)[1] if "Reason: " in text else text


def markdown_table() -> str:
    """The README's parameter table."""
    rows = ["| name | type | default | range / choices | run time | description |",
            "|---|---|---|---|---|---|"]
    for p in PARAMETERS:
        limits = ", ".join(p.choices) if p.choices else (f"[{p.range[0]}, {p.range[1]}]" if p.range else "")
        if p.step and p.range and p.step != 1:
            limits += f" step {p.step}"
        default = f'"{p.default}"' if isinstance(p.default, str) else str(p.default).lower() \
            if isinstance(p.default, bool) else str(p.default)
        rows.append(f"| `{p.name}` | {p.type_name} | {default} | {limits} | "
                    f"{'no' if p.read_only else 'yes'} | {p.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
