"""`m4sam bench` over a grid, in one process: modes x input sizes x precisions x CUDA graphs
(plus torch.compile runs), each against the SAM2 peer; one table and one JSON file.

Why one process: a GPU lease is minutes long, and every `m4sam bench` process would pay
Python, torch and CUDA start-up again. Each grid point is a real `m4sam bench` run (the
verb's own argument parser and ``bench.run``); its report goes into the JSON whole. A run
that fails is recorded with its error and the grid goes on; runs that would start after
``--budget-s`` are recorded as skipped, so a fixed lease always ends with a table. The JSON
and the table are rewritten after every run: a grid killed from outside leaves what it measured.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import platform
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from m4sam_ros.tools import bench

MODES = ("zero_shot", "learned")
COLUMNS = ("mode", "size", "precision", "graphs", "compile", "status", "fps", "ms", "encoder_ms", "memory_ms",
           "sam2_fps", "ratio", "setup_s", "parity_dp", "parity_iou", "cuda_peak_mib")


def _csv(kind):
    def parse(text: str) -> tuple:
        return tuple(kind(v) for v in text.split(",") if v)
    parse.__name__ = kind.__name__
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="hiera_t", help="model preset (random weights unless --sam2-checkpoint)")
    parser.add_argument("--sam2-checkpoint", default=None, help="official SAM2 checkpoint for the preset")
    parser.add_argument("--sizes", type=_csv(int), default=(512, 1024), help="model input sizes, comma-separated")
    parser.add_argument("--modes", type=_csv(str), default=MODES, help="tracker modes: zero_shot,learned")
    parser.add_argument("--precisions", type=_csv(str), default=("fp32", "bf16", "fp16"), help="comma-separated")
    parser.add_argument("--cuda-graphs", type=_csv(str), default=("off", "on"), help="off,on: eager and/or CUDA graphs")
    parser.add_argument("--compile-runs", type=_csv(str), default=(),
                        help="extra runs with --compile and CUDA graphs, each MODE:SIZE:PRECISION, run last")
    parser.add_argument("--compile-reserve-s", type=float, default=150.0,
                        help="start a compile run only with this much of the budget left")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--parity-frames", type=int, default=8)
    parser.add_argument("--camera", default="640x480")
    parser.add_argument("--no-peer", action="store_true", help="skip the SAM2 peer")
    parser.add_argument("--budget-s", type=float, default=300.0, help="start no run after this many seconds")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/bench_matrix"),
                        help="per-run bench outputs (one folder each)")
    parser.add_argument("--json", type=Path, default=None, help="the grid's JSON (default OUTPUT_DIR/bench_matrix.json)")
    parser.add_argument("--table", type=Path, default=None, help="the table as markdown (default OUTPUT_DIR/bench_matrix.md)")


@dataclass(frozen=True)
class Point:
    mode: str
    size: int
    precision: str
    cuda_graphs: bool
    compile: bool = False

    @property
    def name(self) -> str:
        options = ("-graphs" if self.cuda_graphs else "") + ("-compile" if self.compile else "")
        return f"{self.mode}-{self.size}-{self.precision}{options}"


def grid(args: argparse.Namespace) -> list[Point]:
    """The grid's points in run order: the plain grid, then the compile runs."""
    bad = set(args.modes) - set(MODES)
    if bad or not set(args.cuda_graphs) <= {"off", "on"}:
        raise ValueError(f"--modes takes {MODES} and --cuda-graphs off,on; got {args.modes}, {args.cuda_graphs}")
    points = [Point(mode, size, precision, graphs == "on") for size, mode, precision, graphs
              in itertools.product(args.sizes, args.modes, args.precisions, args.cuda_graphs)]
    for spec in args.compile_runs:
        try:
            mode, size, precision = spec.split(":")
            points.append(Point(mode, int(size), precision, cuda_graphs=True, compile=True))
        except ValueError:
            raise ValueError(f"--compile-runs takes MODE:SIZE:PRECISION, got {spec!r}") from None
    return points


def bench_argv(args: argparse.Namespace, point: Point, output_dir: Path) -> list[str]:
    """The `m4sam bench` command line of one point."""
    argv = ["--preset", args.preset, "--image-size", str(point.size), "--mode", point.mode, "--backend", "pytorch",
            "--device", args.device, "--precision", point.precision, "--frames", str(args.frames),
            "--warmup", str(args.warmup), "--parity-frames", str(args.parity_frames), "--camera", args.camera,
            "--output-dir", str(output_dir)]
    if args.sam2_checkpoint:
        argv += ["--sam2-checkpoint", args.sam2_checkpoint]
    if point.cuda_graphs:
        argv.append("--cuda-graphs")
    if point.compile:
        argv.append("--compile")
    if args.no_peer:
        argv.append("--no-peer")
    return argv


def run_point(args: argparse.Namespace, point: Point) -> dict:
    """One `m4sam bench` run; its printout goes to a log beside its report."""
    output_dir = args.output_dir / point.name
    output_dir.mkdir(parents=True, exist_ok=True)
    argv = bench_argv(args, point, output_dir)
    parser = argparse.ArgumentParser(prog="m4sam bench")
    bench.add_arguments(parser)
    started = time.perf_counter()
    entry = {"name": point.name, "point": point.__dict__, "argv": ["m4sam", "bench", *argv]}
    with open(output_dir / "bench.log", "w") as log, contextlib.redirect_stdout(log):
        try:
            bench.run(parser.parse_args(argv))
        except Exception as error:  # a failing point is a result, not the end of the grid
            traceback.print_exc(file=log)
            entry.update(status="failed", error=f"{type(error).__name__}: {error}")
        else:
            report = json.loads(next(output_dir.glob("bench-*.json")).read_text())
            entry.update(status="ok", report=report)
    if args.device != "cpu" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    entry["seconds"] = time.perf_counter() - started
    return entry


def row(entry: dict) -> dict:
    """One table row from a grid entry."""
    point = entry["point"]
    cells = {"mode": point["mode"], "size": point["size"], "precision": point["precision"],
             "graphs": "on" if point["cuda_graphs"] else "off", "compile": "on" if point["compile"] else "off",
             "status": entry["status"]}
    report = entry.get("report")
    if report is None:
        return cells
    ours, peer, parity = report["m4sam"], report["sam2"], report["parity"]
    if point["cuda_graphs"] and not report["config"]["cuda_graphs"]:
        cells["graphs"] = "refused"  # asked for where CUDA graphs cannot run (the engines ran eagerly)
    cells.update(fps=ours["fps"], ms=ours["end_to_end_ms"]["median"],
                 encoder_ms=ours["stages_ms"]["encoder"]["median"],
                 memory_ms=ours["stages_ms"]["memory_attention"]["median"],
                 setup_s=sum(report["config"]["setup_s"].values()) or None,
                 cuda_peak_mib=report["memory"]["cuda_peak_allocated_mib"])
    if peer:
        cells.update(sam2_fps=peer["fps"], ratio=report["ratio"]["fps"])
    if parity:
        cells.update(parity_dp=parity["max_abs_probability"], parity_iou=parity["min_mask_iou"])
    return cells


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 and value else f"{value:.2f}"
    return str(value)


def table(entries: list[dict]) -> str:
    """Markdown: one row per point (fps, medians in ms, first-call set-up seconds, parity against
    FP32 eager as max |probability difference| and lowest mask IoU, peak CUDA memory)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for entry in entries:
        cells = row(entry)
        lines.append("| " + " | ".join(_cell(cells.get(c)) for c in COLUMNS) + " |")
    return "\n".join(lines)


def environment() -> dict:
    cuda = torch.cuda.is_available()
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name() if cuda else None,
            "cudnn_tf32": torch.backends.cudnn.allow_tf32, "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
            "machine": platform.machine()}


def run(args: argparse.Namespace) -> int:
    points = grid(args)
    json_path = args.json or args.output_dir / "bench_matrix.json"
    table_path = args.table or args.output_dir / "bench_matrix.md"
    for path in (args.output_dir, json_path.parent, table_path.parent):
        path.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = {"environment": environment(), "budget_s": args.budget_s, "runs": []}
    for point in points:
        elapsed = time.perf_counter() - started
        left = args.budget_s - elapsed
        if left <= 0 or (point.compile and left < args.compile_reserve_s):
            entry = {"name": point.name, "point": point.__dict__, "status": "skipped",
                     "error": f"time budget: {elapsed:.0f} s of {args.budget_s:.0f} s spent"}
        else:
            entry = run_point(args, point)
        result["runs"].append(entry)
        print(f"[{time.perf_counter() - started:6.1f} s] {point.name}: {entry['status']}"
              + (f" ({entry['error']})" if entry.get("error") else
                 f", {row(entry).get('fps', 0):.1f} FPS"), flush=True)
        result["seconds"] = time.perf_counter() - started
        json_path.write_text(json.dumps(result, indent=1))
        table_path.write_text(table(result["runs"]) + "\n")
    print(f"\n{table(result['runs'])}\n\nwrote {json_path} and {table_path}")
    failed = [e["name"] for e in result["runs"] if e["status"] == "failed"]
    if failed:
        print(f"failed: {', '.join(failed)} (tracebacks in {args.output_dir}/<name>/bench.log)")
    return 1 if failed else 0
