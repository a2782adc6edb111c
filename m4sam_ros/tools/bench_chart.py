"""The benchmark chart: where the time goes, what happens as the stream gets long and, with a
bank-size sweep, what each memory frame costs."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _rolling_median(values: list[float], window: int = 9) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    half = window // 2
    return np.array([np.median(array[max(0, i - half):i + half + 1]) for i in range(len(array))])


def _plot_memory_sweep(ax, sweep: list[dict]) -> None:
    """Median (bars: p95) memory-attention and frame time against the bank's num_memory_frames."""
    frames = [point["num_memory_frames"] for point in sweep]
    for key, label in (("memory_attention_ms", "memory attention"), ("end_to_end_ms", "whole frame")):
        median = np.array([point[key]["median"] for point in sweep])
        p95 = np.array([point[key]["p95"] for point in sweep])
        ax.errorbar(frames, median, yerr=[np.zeros_like(median), p95 - median], marker="o", capsize=3, label=label)
    ax.set_xticks(frames)
    ax.set_xlabel("num_memory_frames (+ the conditioning frame)")
    ax.set_ylabel("ms per frame (median, bar to p95)")
    ax.set_title("cost vs memory bank size")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def plot_report(report: dict, path: Path) -> None:
    """Median stage times (stacked), per-frame latency and tracking state vs frame, and with a
    bank-size sweep the per-frame cost against num_memory_frames."""
    import matplotlib

    matplotlib.use("Agg")  # files only: works headless, never opens a window
    import matplotlib.pyplot as plt

    runs = [report["m4sam"]] + ([report["sam2"]] if report["sam2"] else [])
    warmup = report["config"]["warmup"]
    sweep = report.get("memory_sweep")
    fig, axes = plt.subplots(1, 4 if sweep else 3, figsize=(22 if sweep else 17, 5))
    stages_ax, time_ax, memory_ax = axes[:3]
    if sweep:
        _plot_memory_sweep(axes[3], sweep)

    colours = plt.get_cmap("tab10")
    stage_names = list(dict.fromkeys(stage for run in runs for stage in run["stages_ms"]))  # one colour per stage
    for row, run in enumerate(runs):
        left = 0.0
        for stage, stats in run["stages_ms"].items():
            first = all(stage not in earlier["stages_ms"] for earlier in runs[:row])
            stages_ax.barh(row, stats["median"], left=left, color=colours(stage_names.index(stage) % 10),
                           label=stage if first else None)
            left += stats["median"]
    stages_ax.set_yticks(range(len(runs)), [run["name"] for run in runs], fontsize=8)
    stages_ax.set_xlabel("median ms per frame (after warm-up)")
    stages_ax.set_title("per-stage latency")
    stages_ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=4)

    for run, style in zip(runs, ("-", "--")):
        frames = np.arange(1, len(run["per_frame_ms"]) + 1)
        time_ax.plot(frames[warmup:], _rolling_median(run["per_frame_ms"])[warmup:], style, label=run["name"])
        memory_ax.plot(frames, run["state_mib_per_frame"], style, label=run["name"])
        points = [p for p in run["scaling"] if p["frame_ms"] is not None]
        time_ax.plot([p["frame"] for p in points], [p["frame_ms"] for p in points], "o", color="black")
        memory_ax.plot([p["frame"] for p in run["scaling"]], [p["state_mib"] for p in run["scaling"]], "o",
                       color="black")
    for ax, label, title in ((time_ax, "ms per frame (rolling median of 9)", "latency vs stream length"),
                             (memory_ax, "tracking state (MiB)", "memory vs stream length")):
        ax.set_xscale("log")
        ax.set_xlabel("frame (checkpoints at 10, 100, 1000 marked)")
        ax.set_ylabel(label)
        ax.set_title(title)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    config = report["config"]
    load = config.get("load_average_start")
    fig.suptitle(f"{config['preset']} @ {config['image_size']} px, {config['backend']} on {config['device']} "
                 f"({config['precision']}), camera {config['camera'][0]}x{config['camera'][1]}, "
                 f"{config['frames']} frames; {config['cpu_count']} CPUs, {config['torch_threads']} torch threads"
                 + (f", load average {load[0]:.1f} at start" if load else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
