"""Whether users get int8 (ONNX Runtime on CPU): one measured data point decides.

``INT8_MEASUREMENT`` is the S-measure of the demo weights on their held-out sets through
ONNX Runtime on CPU, in fp32 and in int8 (``quantization.py``). int8 is offered when S drops
by at most ``MAX_S_DROP`` on every set, and refused with the figures otherwise. Re-measure
after retraining the demo weights with ``python -m m4sam_ros.tools.int8_accuracy`` and
replace the record; nothing else changes.
"""
from __future__ import annotations

from dataclasses import dataclass

MAX_S_DROP = 0.01


@dataclass(frozen=True)
class HeldOutScore:
    """S-measure of one held-out set through ONNX Runtime on CPU, fp32 and int8."""

    name: str
    frames: int
    s_fp32: float
    s_int8: float

    @property
    def drop(self) -> float:
        """fp32's S minus int8's, to the 4 decimals S is recorded with."""
        return round(self.s_fp32 - self.s_int8, 4)


@dataclass(frozen=True)
class Int8Measurement:
    """What the int8 policy rests on: which weights, when, and the S-measure per held-out set."""

    weights: str
    date: str
    scores: tuple[HeldOutScore, ...]
    command: str

    @property
    def worst_drop(self) -> float:
        return max(score.drop for score in self.scores)

    def summary(self) -> str:
        sets = "; ".join(f"{s.name} ({s.frames} frames) S {s.s_fp32:.4f} -> {s.s_int8:.4f} (drop {s.drop:+.4f})"
                         for s in self.scores)
        return f"{self.weights}, measured {self.date}: {sets}"


# The one data point: encoder and memory attention both quantised, ONNX Runtime 1.31.1 on CPU,
# every frame of the held-out sets streamed through the tracker; re-measure after retraining.
INT8_MEASUREMENT = Int8Measurement(
    weights="demo_sam2.pt (sha256 03a40368aab6) + demo_adapter.pt (sha256 37a9d666051b)",
    date="2026-12-08",
    scores=(
        HeldOutScore("rendered val", 2304, 0.7812, 0.7808),
        HeldOutScore("synthetic val", 384, 0.9017, 0.9017),
    ),
    command="python -m m4sam_ros.tools.int8_accuracy",
)


def int8_refusal(measurement: Int8Measurement = INT8_MEASUREMENT) -> str | None:
    """Why int8 is not offered (its measured accuracy cost), or None where it is."""
    if measurement.worst_drop <= MAX_S_DROP:
        return None
    return (f"int8 is withheld: its S-measure drops by {measurement.worst_drop:.4f} (> {MAX_S_DROP}) on the "
            f"held-out sets ({measurement.summary()}); use fp32, or re-measure with `{measurement.command}` "
            "after retraining")
