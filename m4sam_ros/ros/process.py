"""How the node's process stops: at any moment, within a second or two, exit 0, no traceback.

A launch file or systemd stops a node with SIGINT or SIGTERM, also while it is still
importing torch, loading weights, exporting graphs or building a TensorRT engine (minutes
on a Jetson). Python runs signal handlers only between bytecodes of the main thread, so
the main thread never does that work: it waits for a signal while executors and workers
run elsewhere. What a signal does depends on the phase:

* starting (imports, configuring the model): nothing worth keeping exists yet and the
  engine cache writes each file under a temporary name first, so the process ends at once
  (``os._exit``; a TensorRT build in progress ends with it);
* running: the first signal asks for an orderly stop (the frame in progress gets a second);
* stopping: a second signal ends the process at once.

Either way the process ends with ``os._exit`` once the node is stopped (``finish``).

This module imports nothing heavy: it is set up before torch is imported.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable

__all__ = ["StopSignals"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Owns SIGINT/SIGTERM for the process (see module docstring)."""

    def __init__(self, name: str):
        self.name = name
        self._requested = threading.Event()
        self._graceful: Callable[[], bool] = lambda: False  # until the node says it can stop in order
        self.code = 0
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)

    def graceful_when(self, check: Callable[[], bool]) -> None:
        """From now on a first signal stops in order whenever ``check()`` is true."""
        self._graceful = check

    def request(self, code: int = 0) -> None:
        """Ask for an orderly stop from inside the process (a failed start, a lifecycle shutdown)."""
        self.code = code
        self._requested.set()

    def wait(self, poll_s: float = 0.1) -> None:
        """Block the main thread until a stop is requested, staying responsive to signals."""
        while not self._requested.wait(poll_s):
            pass

    @property
    def requested(self) -> bool:
        return self._requested.is_set()

    def exit_now(self, reason: str, code: int = 0) -> None:
        """End the process immediately (flushing what was printed)."""
        print(f"[{self.name}] {reason}: exiting now", file=sys.stderr)
        self.finish(code)

    @staticmethod
    def finish(code: int) -> None:
        """End the process after an orderly stop. Not through interpreter teardown: daemon threads
        may still sit in C++ (a DDS wait, a long inference), and tearing the runtime down under
        them aborts the process instead of exiting with ``code``."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)

    def _on_signal(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self._requested.is_set():
            self.exit_now(f"{name} while stopping")
        if not self._graceful():
            self.exit_now(f"{name} during start-up")
        self.request(0)
