"""The `m4sam` command: one entry point for the offline verbs.

Each verb lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; it is imported only when chosen, so `m4sam --help` stays
instant and a verb's heavy imports (torch, TensorRT) never slow down another.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# verb -> (module, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "demo": ("m4sam_ros.ros.demo", "run the node on a rendered robot scene and report FPS and accuracy"),
    "delivery": ("m4sam_ros.ros.delivery", "measure how many RGB-D pairs reach a subscriber in another process, per QoS"),
    "run": ("m4sam_ros.ros.offline", "track every frame of a recorded bag offline; write the node's outputs to a bag"),
    "export": ("m4sam_ros.tools.export", "export the encoder and memory attention to ONNX and check ONNX Runtime parity"),
    "build-engine": ("m4sam_ros.tools.build_engine", "build (and cache) TensorRT engines ahead of time"),
    "bench": ("m4sam_ros.tools.bench", "per-stage latency, FPS and memory, side by side with SAM2's own tracking"),
    "bench-matrix": ("m4sam_ros.tools.bench_matrix", "m4sam bench over modes, sizes, precisions and CUDA graphs: "
                     "one table + JSON"),
    "cost": ("m4sam_ros.tools.cost", "trainable parameters, per-frame GFLOP by stage and training memory of a variant"),
    "train": ("m4sam_ros.learn.train", "train a variant's adapter (--adapter-kind: moe_lora, sam_daq) on RGB-D clips"),
    "eval": ("m4sam_ros.learn.evaluate", "score a model on an RGB-D VSOD dataset through the SaliencyTracker"),
    "scenes": ("m4sam_ros.learn.scenes.generate", "render RGB-D robot scenes (PyBullet) with ground truth"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="m4sam", description="M4-SAM RGB-D video salient object detection: offline tools.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, (_, help_text) in VERBS.items():
        sub.add_parser(verb, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in VERBS:
        build_parser().parse_args(argv)  # prints usage, or the error naming the verb
        return 2
    verb, rest = argv[0], argv[1:]
    module_name, help_text = VERBS[verb]
    # one logging set-up for every verb: progress and engine choices go to stderr at INFO
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"m4sam {verb}", description=module.__doc__ or help_text,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(rest)) or 0)


if __name__ == "__main__":
    sys.exit(main())
