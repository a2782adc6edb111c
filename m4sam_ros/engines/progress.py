"""Progress for the long, silent steps (ONNX export, TensorRT builds of several minutes).

A step that takes minutes without a word looks like a hang (field lesson 5); ``stage``
shows a spinner with the elapsed time on a terminal and logs start and end otherwise, so
a launch file's log still says what is going on.
"""
from __future__ import annotations

import itertools
import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

log = logging.getLogger(__name__)

_FRAMES = "|/-\\"


@contextmanager
def stage(label: str, stream: TextIO | None = None, interval_s: float = 0.25, spinner: bool = True) -> Iterator[None]:
    """Run a block under ``label``: spinner + elapsed seconds on a TTY, log lines elsewhere.
    ``spinner=False`` when something else (TensorRT's progress monitor) prints progress."""
    stream = stream or sys.stderr
    start = time.perf_counter()
    live = spinner and stream.isatty()
    done = threading.Event()

    def spin() -> None:
        for frame in itertools.cycle(_FRAMES):
            if done.wait(interval_s):
                return
            stream.write(f"\r{label} {frame} {time.perf_counter() - start:6.1f} s")
            stream.flush()

    log.info("%s ...", label)
    spinning = threading.Thread(target=spin, daemon=True) if live else None
    if spinning:
        spinning.start()
    ok = False
    try:
        yield
        ok = True
    finally:
        done.set()
        if spinning:
            spinning.join()
            stream.write("\r\033[K")
        elapsed = time.perf_counter() - start
        line = f"{label}: {'done' if ok else 'failed'} in {elapsed:.1f} s"
        if live:
            stream.write(line + "\n")
            stream.flush()
        log.info(line)
