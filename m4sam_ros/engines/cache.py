"""On-disk cache of exported ONNX graphs and built TensorRT engines.

A TensorRT engine is only valid for the exact weights, input size, precision, TensorRT
version and GPU (name and compute capability) it was built for; loading another one
fails at best and runs wrong at worst. Every engine therefore sits next to a JSON
sidecar holding its full key and its own SHA-256. ``load`` compares the whole key, field
by field, and the file hash before handing bytes out: a stale engine (e.g. after a
TensorRT upgrade), a foreign one (copied from another machine) or a truncated one is
refused with the reason logged, and the caller rebuilds it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

CACHE_ENV = "M4SAM_CACHE_DIR"


def default_cache_dir() -> Path:
    """$M4SAM_CACHE_DIR, else $XDG_CACHE_HOME/m4sam_ros, else ~/.cache/m4sam_ros."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "m4sam_ros"


def weights_hash(model: nn.Module) -> str:
    """SHA-256 of every tensor in the state dict (name, dtype, shape, bytes) and of the model
    config when it has one: anything that changes the exported graph changes the hash."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        digest.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)  # a 0-d tensor cannot be viewed as bytes
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


@dataclass(frozen=True)
class EngineKey:
    """What a compiled graph depends on. ``target`` names what a backend's compiled file is
    tied to beyond weights, size and precision (TensorRT: its version and the GPU; an int8
    ONNX: the ONNX Runtime that quantised it; empty for exported ONNX files); ``signature``
    holds what is baked in (batch, memory slots, opset, fp16's fp32 islands, the quantisation)."""

    graph: str
    weights_sha256: str
    image_size: int
    precision: str
    target: tuple[tuple[str, str], ...] = ()
    signature: tuple[tuple[str, object], ...] = ()

    @classmethod
    def from_dict(cls, values: dict) -> "EngineKey":
        known = {f.name for f in dataclasses.fields(cls)}
        if set(values) != known:
            raise ValueError(f"engine key fields {sorted(values)} differ from {sorted(known)}")
        return cls(**dict(values, target=tuple((k, v) for k, v in values["target"]),
                          signature=tuple((k, v) for k, v in values["signature"])))

    def to_dict(self) -> dict:
        return dict(dataclasses.asdict(self), target=[list(item) for item in self.target],
                    signature=[list(item) for item in self.signature])

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def differences(self, other: "EngineKey") -> dict[str, tuple]:
        """field -> (this key's value, other's value) for every field that differs; the
        entries of ``target`` are compared one by one, under their own names."""
        differences = {f.name: (getattr(self, f.name), getattr(other, f.name)) for f in dataclasses.fields(self)
                       if f.name != "target" and getattr(self, f.name) != getattr(other, f.name)}
        mine, theirs = dict(self.target), dict(other.target)
        differences.update({name: (mine.get(name, ""), theirs.get(name, "")) for name in sorted(mine.keys() | theirs)
                            if mine.get(name, "") != theirs.get(name, "")})
        return differences

    def stem(self, suffix: str) -> str:
        target = [re.sub(r"[^A-Za-z0-9.]+", "-", value).strip("-").lower() for _, value in self.target]
        parts = [self.graph, str(self.image_size), self.precision, *target]
        return "-".join([part for part in parts if part] + [self.digest()]) + suffix


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Work in progress lives under this prefix, named after the writing process; a process ended
# mid-write (a stop signal during an export or engine build) leaves only such names, which
# ``lookup`` never reads and the next process sweeps.
INCOMPLETE_PREFIX = ".incomplete-"


def write_atomic(path: Path, data: bytes) -> None:
    """Write under an incomplete name, then rename: a reader sees all of the file or none of it."""
    tmp = path.with_name(f"{INCOMPLETE_PREFIX}{os.getpid()}-{path.name}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


class ArtifactCache:
    """Files keyed by ``EngineKey``: ``<root>/<stem>.<ext>`` + ``<stem>.<ext>.json`` sidecar."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    def path(self, key: EngineKey, suffix: str) -> Path:
        return self.root / key.stem(suffix)

    @contextmanager
    def workspace(self) -> Iterator[Path]:
        """A private folder in the cache for a file being made (moved in by ``store`` when done);
        leftovers of processes that ended mid-write are swept first."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.sweep_incomplete()
        folder = Path(tempfile.mkdtemp(prefix=f"{INCOMPLETE_PREFIX}{os.getpid()}-", dir=self.root))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def sweep_incomplete(self) -> list[Path]:
        """Remove work in progress of processes no longer running; returns what was removed."""
        removed = []
        for entry in self.root.glob(f"{INCOMPLETE_PREFIX}*"):
            pid = entry.name[len(INCOMPLETE_PREFIX):].split("-", 1)[0]
            if pid.isdigit() and not _process_alive(int(pid)):
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
                removed.append(entry)
        return removed

    @staticmethod
    def _sidecar(path: Path) -> Path:
        return path.with_name(path.name + ".json")

    def lookup(self, key: EngineKey, suffix: str) -> Path | None:
        """The cached file for ``key``, or None (logged why) when missing, stale, foreign or corrupt."""
        path = self.path(key, suffix)
        if not path.is_file():
            log.info("no cached %s for %s at %s", suffix, key.graph, path)
            return None
        reason = self._refusal(key, path)
        if reason is not None:
            log.warning("refusing cached %s: %s; it will be rebuilt", path, reason)
            return None
        log.info("cache hit: %s", path)
        return path

    def _refusal(self, key: EngineKey, path: Path) -> str | None:
        sidecar = self._sidecar(path)
        try:
            meta = json.loads(sidecar.read_text())
            stored = EngineKey.from_dict(meta["key"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            return f"its sidecar {sidecar.name} is missing or unreadable ({type(error).__name__}: {error})"
        differences = key.differences(stored)
        if differences:
            named = ", ".join(f"{field} {theirs!r} (needed {mine!r})" for field, (mine, theirs) in differences.items())
            return f"it was built for a different configuration: {named}"
        if meta.get("sha256") != _sha256_file(path):
            return "its contents do not match the hash recorded when it was built (truncated or overwritten)"
        return None

    def store(self, key: EngineKey, suffix: str, data: bytes | None = None, source: Path | None = None) -> Path:
        """Write ``data`` (or move ``source``) to the key's path, then its sidecar; atomic per file,
        and the sidecar's hash makes a half-written pair refuse itself."""
        if (data is None) == (source is None):
            raise ValueError("ArtifactCache.store needs exactly one of data or source")
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(key, suffix)
        if data is not None:
            write_atomic(path, data)
        else:
            os.replace(source, path)
        meta = {"key": key.to_dict(), "sha256": _sha256_file(path), "torch": torch.__version__}
        write_atomic(self._sidecar(path), json.dumps(meta, indent=1, sort_keys=True).encode())
        log.info("cached %s", path)
        return path

    def timing_cache_path(self, target: tuple[tuple[str, str], ...]) -> Path:
        """TensorRT's timing cache is per TensorRT version and GPU (the engines' ``target``);
        shared by all graphs."""
        key = EngineKey(graph="timing", weights_sha256="", image_size=0, precision="", target=target)
        return self.path(key, ".timing")
