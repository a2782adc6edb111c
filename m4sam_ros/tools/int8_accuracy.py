"""Measure what int8 costs in accuracy: the S-measure of the demo weights on their held-out
sets through ONNX Runtime on CPU, fp32 against int8, printed as the record
``engines/int8_policy.py`` keeps (``INT8_MEASUREMENT``).

    python -m m4sam_ros.tools.int8_accuracy            # from a checkout; the packaged demo weights
    python -m m4sam_ros.tools.int8_accuracy --adapter runs/demo_train/demo_adapter.pt \\
        --sam2-checkpoint runs/demo_train/demo_sam2.pt  # freshly retrained ones

The held-out sets are the ones ``m4sam train --config config/train_demo.yaml`` evaluates on
(rendered robot scenes of the val split, 2-D videos of another seed), regenerated the same
way under ``--held-out`` when missing. Every frame streams through the tracker as on the robot.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
from pathlib import Path

from m4sam_ros.engines.int8_policy import MAX_S_DROP, HeldOutScore, Int8Measurement, int8_refusal
from m4sam_ros.learn.datasets import VideoRecord
from m4sam_ros.learn.evaluate import EvalConfig, engine_tracker, evaluate_videos
from m4sam_ros.learn.options import load_yaml_config
from m4sam_ros.learn.train import TrainConfig, rendered_videos, synthetic_videos

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "m4sam_ros" / "data"
TRAIN_CONFIG = ROOT / "config" / "train_demo.yaml"


def held_out_sets(root: Path) -> dict[str, list[VideoRecord]]:
    """The demo training's held-out sets under ``root`` (generated on first use)."""
    config = TrainConfig(**{**load_yaml_config(TRAIN_CONFIG, TrainConfig), "progress": False})
    return {"rendered val": rendered_videos(root / "rendered" / "val", config.val_rendered_videos, "val", config),
            "synthetic val": synthetic_videos(root / "synthetic" / "val", config.val_videos, config,
                                              config.seed + 1000)}


def measure(sam2_checkpoint: str, adapter: str, sets: dict[str, list[VideoRecord]], cache_dir: str | None = None,
            threads: int = 1) -> tuple[HeldOutScore, ...]:
    """S over all frames of each set, through ONNX Runtime on CPU in fp32 and in int8."""
    s = {}
    for precision in ("fp32", "int8"):
        tracker, _ = engine_tracker(EvalConfig(sam2_checkpoint=sam2_checkpoint, adapter=adapter, backend="onnxruntime",
                                               device="cpu", precision=precision, cache_dir=cache_dir,
                                               threads=threads, progress=False))
        for name, videos in sets.items():
            metrics, _ = evaluate_videos(tracker, videos, strip_frames=0)
            s[name, precision] = metrics["dataset"]
    return tuple(HeldOutScore(name, s[name, "fp32"]["frames"], round(s[name, "fp32"]["s_measure"], 4),
                              round(s[name, "int8"]["s_measure"], 4)) for name in sets)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record(measurement: Int8Measurement) -> str:
    """The Python literal to paste over ``INT8_MEASUREMENT``."""
    scores = ",\n".join(f"        HeldOutScore({s.name!r}, {s.frames}, {s.s_fp32}, {s.s_int8})"
                        for s in measurement.scores)
    return (f"INT8_MEASUREMENT = Int8Measurement(\n    weights={measurement.weights!r},\n"
            f"    date={measurement.date!r},\n    scores=(\n{scores},\n    ),\n"
            f"    command={measurement.command!r},\n)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m m4sam_ros.tools.int8_accuracy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sam2-checkpoint", default=str(DATA / "demo_sam2.pt"))
    parser.add_argument("--adapter", default=str(DATA / "demo_adapter.pt"))
    parser.add_argument("--held-out", type=Path, default=Path("runs/int8_held_out"), help="held-out sets folder")
    parser.add_argument("--cache-dir", default=None, help="exported graphs (default as the node's)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (results do not depend on it)")
    parser.add_argument("--output", type=Path, default=Path("runs/int8_accuracy.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    scores = measure(args.sam2_checkpoint, args.adapter, held_out_sets(args.held_out), args.cache_dir, args.threads)
    weights = " + ".join(f"{Path(f).name} (sha256 {_sha256(Path(f))[:12]})" for f in (args.sam2_checkpoint, args.adapter))
    measurement = Int8Measurement(weights=weights,
                                  date=datetime.date.today().isoformat(), scores=scores,
                                  command="python -m m4sam_ros.tools.int8_accuracy")
    print(f"{'held-out set':<14} {'frames':>6} {'S fp32':>8} {'S int8':>8} {'drop':>8}")
    for s in scores:
        print(f"{s.name:<14} {s.frames:>6} {s.s_fp32:>8.4f} {s.s_int8:>8.4f} {s.drop:>+8.4f}")
    refusal = int8_refusal(measurement)
    print(f"\npolicy (drop <= {MAX_S_DROP} on every set): " + ("int8 offered" if refusal is None else refusal))
    print(f"\nrecord for m4sam_ros/engines/int8_policy.py:\n{record(measurement)}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"weights": measurement.weights, "date": measurement.date,
                                       "scores": [vars(s) for s in scores]}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
