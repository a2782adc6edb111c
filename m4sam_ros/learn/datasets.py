"""RGB-D video salient-object datasets on disk: RDVS, ViDSOD-100, DViSal and a generic layout.

Every layout is reduced to the same picture: a list of ``VideoRecord``s whose frames pair an
RGB file with an optional depth file and an optional ground-truth (GT) file *by file stem*
(``00012.jpg`` pairs with ``00012.png``). RGB frames define a video's timeline (sorted by
stem, numbers compared as numbers); depth may be missing (the frame is read with
``depth=None``, which is what a robot sees when depth drops out); GT may be missing (DViSal
annotates only some frames) and such frames carry no loss and no score.

Layouts (what was checked, what is assumed):

* ``generic``: ``<root>/<video>/{rgb,depth,gt}/<frame>.<ext>``, what
  ``learn.synthetic.write_video`` writes (16-bit depth in millimetres).
* ``vidsod100``: ``<root>/{train,test}/<video>/{rgb,depth,gt}/<frame>.png``. Checked against
  the dataset's own loader (github jhl-Det/RGBD_Video_SOD, ``atf_net/Code/utils/data_flow_v2.py``
  globs ``<split>/*/rgb/*png`` and swaps ``/rgb/`` for ``/gt/`` and ``/depth/``); optical
  flow lives apart in ``{train,test}_flow/`` and is not used.
* ``rdvs``: ``<root>/{train,test}/<video>/{rgb,Depth,ground-truth}/``. The RDVS README
  (github kerenfu/RDVS) confirms realistic depth in ``Depth/`` and synthetic depth in
  ``SyntheticDepth/`` (``depth_folder="SyntheticDepth"`` reads the latter); the names
  ``rgb`` and ``ground-truth`` follow the DAVSOD convention as reported, not verified
  (no public file listing), so ``Frame/`` and ``GT/`` are accepted as well. RGB is
  assumed ``.jpg`` or ``.png``: any image extension works.
* ``dvisal``: ``<root>/data/<video>/{RGB,Depth,GT}/`` with split lists ``<root>/train.txt``,
  ``val.txt``, ``test_*.txt`` (the DViSal README, github DVSOD/DVSOD-DViSal: RGB ``.jpg``,
  Depth and GT ``.png``, 7,117 annotated frames out of 175,442, so GT is sparse). The
  content of the split lists is not published; assumed one video name per line (a leading
  ``data/`` and anything after the first ``/`` or whitespace is ignored).

Sub-folder names are matched case-insensitively, so ``RGB``/``rgb`` both work. Benchmark
depth is an 8-bit PNG with near = bright; 16-bit PNGs are read as millimetres; both go
through ``m4sam_ros.depth.normalize_depth`` (the one normalisation) in ``load_frame``.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from m4sam_ros.depth import DepthConfig, fit_depth, normalize_depth

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LAYOUTS = ("auto", "generic", "vidsod100", "rdvs", "dvisal")


class DatasetError(ValueError):
    """A dataset file or folder is missing, unreadable or malformed; the message names it."""


@dataclass(frozen=True)
class LayoutSpec:
    """Sub-folder names of one layout (case-insensitive; the first one present is used) and
    whether every frame is expected to have GT."""

    rgb: tuple[str, ...]
    depth: tuple[str, ...]
    gt: tuple[str, ...]
    dense_gt: bool = True


SPECS: dict[str, LayoutSpec] = {
    "generic": LayoutSpec(("rgb",), ("depth",), ("gt",)),
    "vidsod100": LayoutSpec(("rgb",), ("depth",), ("gt",)),
    # RDVS names beyond Depth/ are unverified: the DAVSOD-style names first, then plausible others
    "rdvs": LayoutSpec(("rgb", "Frame"), ("Depth",), ("ground-truth", "GT")),
    "dvisal": LayoutSpec(("RGB",), ("Depth",), ("GT",), dense_gt=False),
}


@dataclass(frozen=True)
class FrameRecord:
    """Paths of one frame; depth / gt are None where the dataset has no such file."""

    stem: str
    rgb: Path
    depth: Path | None
    gt: Path | None


@dataclass
class VideoRecord:
    """One video: its frames in time order."""

    name: str
    path: Path
    frames: list[FrameRecord]

    @property
    def annotated(self) -> list[int]:
        """Indices of frames that have GT."""
        return [i for i, f in enumerate(self.frames) if f.gt is not None]


@dataclass(frozen=True)
class Problem:
    """One finding of ``validate``: severity "error" (unusable) or "warning" (usable, degraded)."""

    severity: str
    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.path}: {self.message}"


@dataclass
class Frame:
    """A loaded frame.

    rgb: (H, W, 3) uint8 RGB. depth_raw: depth as stored, (H', W') uint8 / uint16 / float32, or
    None; this is what the tracker takes. depth / depth_valid: ``normalize_depth`` of it,
    fitted to (H, W) (``depth.fit_depth``), or None. gt: (H, W) uint8 0/255 or None.
    """

    stem: str
    rgb: np.ndarray
    depth_raw: np.ndarray | None
    depth: np.ndarray | None
    depth_valid: np.ndarray | None
    gt: np.ndarray | None


@dataclass
class RGBDVideoDataset:
    """Videos of one dataset split, plus the problems found while indexing them."""

    root: Path
    layout: str
    videos: list[VideoRecord]
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def video(self, name: str) -> VideoRecord:
        for video in self.videos:
            if video.name == name:
                return video
        raise DatasetError(f"no video {name!r} in {self.root}; videos: {[v.name for v in self.videos]}")

    def raise_on_errors(self) -> None:
        """Fail up front, listing every error at once, rather than mid-epoch on the first."""
        if self.errors:
            listing = "\n  ".join(str(p) for p in self.errors)
            raise DatasetError(f"{len(self.errors)} problem(s) in dataset {self.root} ({self.layout}):\n  {listing}")


# ---- image I/O -------------------------------------------------------------------------------
def _imread(path: Path, flags: int) -> np.ndarray:
    if not Path(path).is_file():
        raise DatasetError(f"missing image file {path}")
    image = cv2.imread(str(path), flags)
    if image is None:
        raise DatasetError(f"cv2 could not decode {path} (corrupt or not an image)")
    return image


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; 16-bit colour is scaled down, grey and alpha are handled."""
    image = _imread(path, cv2.IMREAD_UNCHANGED)
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.dtype != np.uint8:
        raise DatasetError(f"RGB image {path} has dtype {image.dtype}; expected 8- or 16-bit")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_depth(path: Path) -> np.ndarray:
    """Depth exactly as stored: (H, W) uint8 (benchmark, near = bright), uint16 (millimetres)
    or float32 (metres). A 3-channel depth PNG (grey saved as colour) keeps its first channel."""
    depth = _imread(path, cv2.IMREAD_UNCHANGED)
    if depth.ndim == 3:
        depth = depth[:, :, 0]
    if depth.dtype not in (np.uint8, np.uint16, np.float32):
        raise DatasetError(f"depth image {path} has dtype {depth.dtype}; expected uint8, uint16 or float32")
    return np.ascontiguousarray(depth)


def read_gt(path: Path) -> np.ndarray:
    """(H, W) uint8 0/255. Grey GT is thresholded at 128 (JPEG-safe); 0/1 label PNGs at 0."""
    gt = _imread(path, cv2.IMREAD_GRAYSCALE)
    threshold = 0 if gt.max() <= 1 else 127
    return np.where(gt > threshold, 255, 0).astype(np.uint8)


def load_frame(record: FrameRecord, depth_config: DepthConfig = DepthConfig()) -> Frame:
    """Read one frame; raises ``DatasetError`` naming the file on any I/O problem."""
    rgb = read_rgb(record.rgb)
    height, width = rgb.shape[:2]
    gt = None
    if record.gt is not None:
        gt = read_gt(record.gt)
        if gt.shape != (height, width):
            raise DatasetError(f"GT {record.gt} is {gt.shape[1]}x{gt.shape[0]} but its RGB frame "
                               f"{record.rgb} is {width}x{height}")
    depth_raw = depth = valid = None
    if record.depth is not None:
        depth_raw = read_depth(record.depth)
        depth, valid = normalize_depth(depth_raw, depth_config)
        depth, valid = fit_depth(depth, height, width), fit_depth(valid, height, width)  # aligned, maybe smaller
    return Frame(record.stem, rgb, depth_raw, depth, valid, gt)


# ---- indexing --------------------------------------------------------------------------------
def natural_key(text: str) -> tuple:
    """Sort key comparing digit runs as numbers: frame9 < frame10."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def _find_dir(parent: Path, names: tuple[str, ...]) -> Path | None:
    """The first child folder named like one of ``names``, case-insensitively (exact match first)."""
    for name in names:
        exact = parent / name
        if exact.is_dir():
            return exact
        matches = [p for p in parent.iterdir() if p.is_dir() and p.name.lower() == name.lower()] if parent.is_dir() else []
        if matches:
            return matches[0]
    return None


def _images_by_stem(folder: Path | None, problems: list[Problem]) -> dict[str, Path]:
    if folder is None:
        return {}
    images: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if path.stem in images:
            problems.append(Problem("error", path, f"two images with stem {path.stem!r} "
                                                   f"({images[path.stem].name}, {path.name}): pairing is ambiguous"))
            continue
        images[path.stem] = path
    return images


def _folders(names: tuple[str, ...]) -> str:
    return " or ".join(f"{name}/" for name in names)


def index_video(path: Path, spec: LayoutSpec, problems: list[Problem], depth_folder: str | None = None) -> VideoRecord:
    """Pair a video folder's RGB, depth and GT files by stem, appending what is wrong to ``problems``."""
    depth_names = (depth_folder,) if depth_folder else spec.depth
    rgb_dir, depth_dir, gt_dir = (_find_dir(path, names) for names in (spec.rgb, depth_names, spec.gt))
    if rgb_dir is None:
        problems.append(Problem("error", path, f"no {_folders(spec.rgb)} folder (RGB frames)"))
        return VideoRecord(path.name, path, [])
    if gt_dir is None:
        problems.append(Problem("error" if spec.dense_gt else "warning", path,
                                f"no {_folders(spec.gt)} folder: no frame of this video can be trained on or scored"))
    if depth_dir is None:
        problems.append(Problem("warning", path, f"no {_folders(depth_names)} folder: every frame is RGB-only"))
    rgb, depth, gt = (_images_by_stem(d, problems) for d in (rgb_dir, depth_dir, gt_dir))
    if not rgb:
        problems.append(Problem("error", rgb_dir, "no RGB images"))
    for kind, files in (("depth", depth), ("GT", gt)):
        for stem in sorted(set(files) - set(rgb), key=natural_key):
            problems.append(Problem("error", files[stem], f"{kind} file has no RGB frame with stem {stem!r}"))
    missing_depth = [s for s in rgb if s not in depth] if depth_dir is not None else []
    if missing_depth:
        problems.append(Problem("warning", depth_dir, f"{len(missing_depth)} frame(s) without depth (read as RGB-only), "
                                                      f"e.g. {sorted(missing_depth, key=natural_key)[:3]}"))
    missing_gt = [s for s in rgb if s not in gt] if gt_dir is not None else []
    if missing_gt and spec.dense_gt:
        problems.append(Problem("warning", gt_dir, f"{len(missing_gt)} frame(s) without GT (not trained on or scored), "
                                                   f"e.g. {sorted(missing_gt, key=natural_key)[:3]}"))
    if gt_dir is not None and rgb and not gt:
        problems.append(Problem("warning", gt_dir, "no GT images: this video cannot be trained on or scored"))
    frames = [FrameRecord(stem, rgb[stem], depth.get(stem), gt.get(stem)) for stem in sorted(rgb, key=natural_key)]
    return VideoRecord(path.name, path, frames)


def _video_dirs(parent: Path) -> list[Path]:
    return sorted((p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: natural_key(p.name))


def read_split_list(path: Path) -> list[str]:
    """Video names of a DViSal split list (one per line; see the module docstring)."""
    if not path.is_file():
        raise DatasetError(f"missing split list {path}")
    names: list[str] = []
    for line in path.read_text().splitlines():
        token = line.strip().split()[0] if line.strip() else ""
        if not token or token.startswith("#"):
            continue
        token = token.removeprefix("data/").strip("/")
        name = token.split("/")[0]
        if name not in names:
            names.append(name)
    return names


def detect_layout(root: Path) -> str:
    """Guess the layout of ``root`` from its folders (see the module docstring)."""
    if (root / "data").is_dir() and any(root.glob("*.txt")):
        return "dvisal"
    for split in ("train", "test"):
        split_dir = root / split
        if split_dir.is_dir():
            for video in _video_dirs(split_dir):
                if _find_dir(video, ("ground-truth",)) is not None:
                    return "rdvs"
                if _find_dir(video, ("gt",)) is not None:
                    return "vidsod100"
    return "generic"


def open_dataset(root: str | Path, layout: str = "auto", split: str | None = None,
                 depth_folder: str | None = None, videos: Sequence[str] | None = None) -> RGBDVideoDataset:
    """Index a dataset split; problems are collected in ``.problems`` (call ``raise_on_errors``).

    split: ``train`` / ``test`` for RDVS and ViDSOD-100 (default ``test``); the split-list
    name for DViSal (``train``, ``val``, ``test_<x>``; default ``test``: the one ``test_*.txt``
    when there is exactly one); ignored for ``generic``. depth_folder overrides the layout's
    depth folder (RDVS: ``SyntheticDepth``). videos: keep only these video names.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a directory")
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown dataset layout {layout!r}; choose one of {LAYOUTS}")
    if layout == "auto":
        layout = detect_layout(root)
    spec = SPECS[layout]
    problems: list[Problem] = []
    if layout == "generic":
        video_dirs = _video_dirs(root)
    elif layout in ("vidsod100", "rdvs"):
        split = split or "test"
        split_dir = root / split
        if not split_dir.is_dir():
            raise DatasetError(f"{layout} split folder {split_dir} not found (splits are train/ and test/)")
        video_dirs = _video_dirs(split_dir)
    else:
        video_dirs = _dvisal_videos(root, split, problems)
    if videos is not None:
        wanted = set(videos)
        unknown = wanted - {d.name for d in video_dirs}
        if unknown:
            raise DatasetError(f"videos {sorted(unknown)} not in {root} ({layout}, split {split})")
        video_dirs = [d for d in video_dirs if d.name in wanted]
    if not video_dirs:
        problems.append(Problem("error", root, f"no video folders found for layout {layout!r}"))
    records = [index_video(d, spec, problems, depth_folder) for d in video_dirs]
    return RGBDVideoDataset(root, layout, records, problems)


def _dvisal_videos(root: Path, split: str | None, problems: list[Problem]) -> list[Path]:
    list_path = root / f"{split}.txt" if split else None
    # "test" (the default split of `m4sam eval` and of training's held-out set) means the one
    # test_*.txt list when the root has no test.txt itself.
    if list_path is None or (split == "test" and not list_path.is_file()):
        tests = sorted(root.glob("test*.txt"))
        if len(tests) != 1:
            raise DatasetError(f"DViSal root {root} has split lists {[p.name for p in tests]}; name one with split=")
        list_path = tests[0]
    dirs = []
    for name in read_split_list(list_path):
        video = root / "data" / name
        if video.is_dir():
            dirs.append(video)
        else:
            problems.append(Problem("error", video, f"listed in {list_path.name} but not found"))
    return dirs


def validate(dataset: RGBDVideoDataset, deep: bool = True) -> list[Problem]:
    """Everything wrong with a dataset, before any training starts.

    The indexing problems, plus with ``deep`` every file decoded once (unreadable files,
    GT/RGB size mismatches, depth of a dtype ``normalize_depth`` refuses). Slow on a full
    benchmark (it reads every image) but it turns a crash in hour three into a list now.
    """
    problems = list(dataset.problems)
    if not deep:
        return problems
    for video in dataset.videos:
        for record in video.frames:
            try:
                load_frame(record)
            except DatasetError as error:
                problems.append(Problem("error", record.rgb, str(error)))
    return problems

