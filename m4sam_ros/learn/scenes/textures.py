"""Procedural surface textures for rooms, tables and props, as tileable RGB images.

pybullet_data ships few surface textures and a model that has seen one wood grain learns
that grain. These generators draw a material's look (plaster, wallpaper, tiles, planks,
carpet, laminate, cardboard, posters) from a seeded generator; each returns the image and
the physical size in metres of one tile, so that surfaces tile at a true scale (a floor
tile is 30 cm whatever the room size). Images tile seamlessly: the noise is periodic.
"""
from __future__ import annotations

import colorsys
from collections.abc import Callable

import cv2
import numpy as np

SIZE = 128  # texels per tile side: TinyRenderer samples without mipmaps, finer detail only aliases

__all__ = ["SIZE", "MATERIALS", "make_texture"]


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))), np.float32) * 255


def _periodic_noise(rng: np.random.Generator, cells: int, size: int = SIZE, channels: int = 1) -> np.ndarray:
    """Smooth zero-mean noise (size, size[, C]) that wraps at the borders (``cells`` bumps per side)."""
    coarse = rng.standard_normal((cells, cells, channels)).astype(np.float32)
    tiled = np.tile(coarse, (3, 3, 1))
    fine = cv2.resize(tiled, (3 * size, 3 * size), interpolation=cv2.INTER_CUBIC)
    fine = fine.reshape(3 * size, 3 * size, channels)[size:2 * size, size:2 * size]
    return fine if channels > 1 else fine[:, :, 0]


def _fractal(rng: np.random.Generator, octaves: tuple[int, ...] = (4, 8, 16, 32)) -> np.ndarray:
    """Sum of periodic noise octaves, amplitude halving per octave, roughly unit variance."""
    total = sum(_periodic_noise(rng, cells) * 0.5 ** i for i, cells in enumerate(octaves))
    return total / np.float32(np.sqrt(sum(0.25 ** i for i in range(len(octaves)))))


def _finish(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def plaster(rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Painted wall: a pale, mostly grey-ish colour with soft mottling."""
    base = _hsv(rng.random(), rng.uniform(0.0, 0.35), rng.uniform(0.55, 0.95))
    image = base * (1.0 + 0.06 * _fractal(rng))[:, :, None]
    return _finish(image), float(rng.uniform(0.8, 1.6))


def wallpaper(rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Stripes or a dot grid in two related colours."""
    hue = rng.random()
    a = _hsv(hue, rng.uniform(0.1, 0.5), rng.uniform(0.5, 0.9))
    b = _hsv(hue + rng.uniform(-0.1, 0.1), rng.uniform(0.1, 0.6), rng.uniform(0.3, 0.9))
    x = np.arange(SIZE, dtype=np.float32)
    xx, yy = np.meshgrid(x, x)
    repeats = int(rng.integers(2, 7))
    if rng.random() < 0.5:
        pattern = (np.sin(2 * np.pi * repeats * xx / SIZE) > rng.uniform(-0.5, 0.5)).astype(np.float32)
    else:
        phase = 2 * np.pi * repeats / SIZE
        pattern = ((np.cos(phase * xx) * np.cos(phase * yy)) > 0.6).astype(np.float32)
    image = a + (b - a) * pattern[:, :, None]
    image *= (1.0 + 0.04 * _fractal(rng))[:, :, None]
    return _finish(image), float(rng.uniform(0.4, 1.0))


def tiles(rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Square tiles with grout lines and per-tile shade."""
    per_side = int(rng.choice([2, 4]))
    base = _hsv(rng.random(), rng.uniform(0.0, 0.4), rng.uniform(0.4, 0.95))
    grout = _hsv(rng.random(), rng.uniform(0.0, 0.2), rng.uniform(0.2, 0.8))
    cell = SIZE // per_side
    shades = 1.0 + 0.08 * rng.standard_normal((per_side, per_side)).astype(np.float32)
    image = base * np.kron(shades, np.ones((cell, cell), np.float32))[:, :, None]
    image *= (1.0 + 0.03 * _fractal(rng))[:, :, None]
    line = max(1, cell // 16)
    index = np.arange(SIZE) % cell
    mask = (index[:, None] < line) | (index[None, :] < line)
    image[mask] = grout
    return _finish(image), float(rng.uniform(0.2, 0.4)) * per_side


def planks(rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Wood: parallel planks with grain lines warped by noise and a seam between planks."""
    count = int(rng.choice([2, 4]))
    hue, sat, val = rng.uniform(0.04, 0.11), rng.uniform(0.35, 0.75), rng.uniform(0.3, 0.85)
    y = np.arange(SIZE, dtype=np.float32)[:, None] * np.ones((1, SIZE), np.float32)
    warp = 6.0 * _periodic_noise(rng, 4) + 2.0 * _periodic_noise(rng, 16)
    grain = 0.5 + 0.5 * np.sin(2 * np.pi * (y + warp) * rng.uniform(6, 14) / SIZE * count)
    plank = (np.arange(SIZE) * count // SIZE)[:, None] * np.ones((1, SIZE), np.int64)
    tone = 1.0 + 0.12 * rng.standard_normal(count).astype(np.float32)
    image = _hsv(hue, sat, val) * (tone[plank] * (0.85 + 0.2 * grain))[:, :, None]
    image[(np.arange(SIZE) % (SIZE // count)) == 0] *= 0.55
    return _finish(image), float(rng.uniform(0.12, 0.25)) * count


def carpet(rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Fine fibrous noise on a muted colour."""
    base = _hsv(rng.random(), rng.uniform(0.1, 0.6), rng.uniform(0.2, 0.7))
    fibres = _periodic_noise(rng, 64) * 0.12 + _fractal(rng, (8, 16)) * 0.06
    return _finish(base * (1.0 + fibres)[:, :, None]), float(rng.uniform(0.3, 0.6))


def laminate(rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Nearly uniform plastic or painted top: white, grey, black or a pastel (low texture)."""
    kind = rng.random()
    if kind < 0.5:
        base = _hsv(0.0, 0.0, rng.uniform(0.6, 0.97))
    elif kind < 0.7:
        base = _hsv(0.0, 0.0, rng.uniform(0.05, 0.3))
    else:
        base = _hsv(rng.random(), rng.uniform(0.15, 0.5), rng.uniform(0.5, 0.9))
    return _finish(base * (1.0 + 0.015 * _fractal(rng))[:, :, None]), float(rng.uniform(0.5, 1.0))


def cardboard(rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Brown board with fibre streaks."""
    base = _hsv(rng.uniform(0.07, 0.11), rng.uniform(0.35, 0.6), rng.uniform(0.45, 0.75))
    streaks = cv2.resize(rng.standard_normal((SIZE, 8)).astype(np.float32), (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
    return _finish(base * (1.0 + 0.05 * streaks + 0.03 * _fractal(rng))[:, :, None]), float(rng.uniform(0.3, 0.6))


def posters(rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """A busy surface (notice board, bookshelf, poster): random coloured rectangles on a base."""
    image = np.empty((SIZE, SIZE, 3), np.float32)
    image[:] = _hsv(rng.random(), rng.uniform(0, 0.3), rng.uniform(0.3, 0.9))
    for _ in range(int(rng.integers(6, 20))):
        x0, y0 = rng.integers(0, SIZE, size=2)
        w, h = rng.integers(SIZE // 12, SIZE // 3, size=2)
        image[y0:y0 + h, x0:x0 + w] = _hsv(rng.random(), rng.uniform(0.2, 1.0), rng.uniform(0.2, 1.0))
    image *= (1.0 + 0.03 * _fractal(rng))[:, :, None]
    return _finish(image), float(rng.uniform(0.5, 1.2))


MATERIALS: dict[str, Callable[[np.random.Generator], tuple[np.ndarray, float]]] = {
    "plaster": plaster, "wallpaper": wallpaper, "tiles": tiles, "planks": planks, "carpet": carpet,
    "laminate": laminate, "cardboard": cardboard, "posters": posters,
}


def make_texture(material: str, seed: int) -> tuple[np.ndarray, float]:
    """(SIZE, SIZE, 3) uint8 RGB tile and its side in metres; deterministic in (material, seed)."""
    if material not in MATERIALS:
        raise ValueError(f"unknown material {material!r}; known: {sorted(MATERIALS)}")
    return MATERIALS[material](np.random.default_rng(seed))
