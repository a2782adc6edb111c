"""Sampling one table-top scene as plain data: room, table, objects, arm, occluder, camera, light.

Everything random about a video's content is drawn here, from one ``numpy.random.Generator``,
into a ``spec.SceneSpec``; ``world.py`` only builds and renders it.

Salient rule: exactly one object per video is salient. In arm videos (``arm`` not None)
it is **the object the arm manipulates** (picked, carried, placed); otherwise it is **the
object the camera fixates on** (every camera motion keeps its look-at point on it; a pan
looks away, so that the object leaves the view, and in some videos back). It is also drawn
a little larger than the clutter (largest side 0.1-0.25 m against 0.04-0.14 m), as the
object a person would name first. The arm, clutter, occluders, tray, pedestal and room are
never salient.

Layout families (arrangements) and the split rule: train scenes use ``scattered`` (objects
anywhere on the table), ``cluster`` (clutter packed around the salient object) and ``row``
(objects lined up); val scenes use ``tray`` (the salient object and some clutter in a tray)
and ``pedestal`` (the salient object raised on a box), which training never sees. Objects
come from the split's own pool (``assets.object_pool``). Rooms, textures, cameras and
lights are drawn from the same ranges in both splits: they vary per seed, not per split.
"""
from __future__ import annotations

import colorsys
from dataclasses import replace

import numpy as np

from m4sam_ros.learn.scenes.assets import TRAY, Asset, object_pool
from m4sam_ros.learn.scenes.camera import MOTIONS, CameraTrack, camera_track, ease
from m4sam_ros.learn.scenes.spec import (ArmSpec, Lighting, OccluderSpec, Placement, SceneOptions, SceneSpec,
                                         Surface)
from m4sam_ros.learn.sensor_model import SensorConfig

FAMILIES: dict[str, tuple[str, ...]] = {"train": ("scattered", "cluster", "row"), "val": ("tray", "pedestal")}
SALIENT_SIZE_M = (0.1, 0.25)
CLUTTER_SIZE_M = (0.04, 0.14)

__all__ = ["FAMILIES", "SALIENT_SIZE_M", "CLUTTER_SIZE_M", "sample_scene"]


# ---- room --------------------------------------------------------------------------------------
def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


def _tint(rng: np.random.Generator, spread: float = 0.08) -> tuple[float, float, float]:
    return tuple(float(v) for v in np.clip(1.0 + rng.uniform(-spread, spread, size=3), 0.0, 1.0))


def _room(rng: np.random.Generator, table: tuple[float, float, float], close: bool) -> list[Surface]:
    """Floor, ceiling, four walls, furniture and decor around a table centred at the origin.

    The camera stays on the table's -y side; the back wall (+y) is the background, near the
    table (0.05-0.6 m behind it) when ``close``, else 1-3.5 m away.
    """
    half_w, half_d, top = table
    back = half_d + (rng.uniform(0.05, 0.6) if close else rng.uniform(1.0, 3.5))
    front, side, height = -rng.uniform(2.4, 4.0), rng.uniform(2.0, 4.5), rng.uniform(2.4, 3.0)
    wall_material = str(rng.choice(["plaster", "plaster", "wallpaper", "tiles", "posters"]))
    wall_seed = _seed(rng)
    floor_material = str(rng.choice(["planks", "tiles", "carpet", "laminate"]))
    t = 0.05  # wall thickness
    cx, cy = 0.0, (back + front) / 2
    surfaces = [
        Surface("floor", (cx, cy, -t), (side, (back - front) / 2, t), floor_material, _seed(rng), _tint(rng)),
        Surface("ceiling", (cx, cy, height + t), (side, (back - front) / 2, t), "plaster", _seed(rng)),
        Surface("back_wall_near" if close else "back_wall", (cx, back + t, height / 2), (side, t, height / 2),
                wall_material, wall_seed, _tint(rng)),
        Surface("front_wall", (cx, front - t, height / 2), (side, t, height / 2), wall_material, wall_seed, _tint(rng)),
        Surface("left_wall", (-side - t, cy, height / 2), (t, (back - front) / 2, height / 2), wall_material, wall_seed,
                _tint(rng)),
        Surface("right_wall", (side + t, cy, height / 2), (t, (back - front) / 2, height / 2), wall_material, wall_seed,
                _tint(rng)),
    ]
    # furniture against the back wall and the side walls beside or behind the table (never
    # where the camera moves, on the -y side): cabinets, shelves, boxes as depth structure
    for i in range(int(rng.integers(0, 5))):
        w, d, h = rng.uniform(0.3, 1.2), rng.uniform(0.25, 0.6), rng.uniform(0.3, 2.0)
        if rng.random() < 0.5:
            if back - half_d < d + 0.1:
                continue
            centre, half = (rng.uniform(-side + w / 2, side - w / 2), back - d / 2), (w / 2, d / 2)
        else:
            if back - w / 2 < 0.0:
                continue
            sign = rng.choice([-1.0, 1.0])
            centre, half = (sign * (side - d / 2), rng.uniform(0.0, back - w / 2)), (d / 2, w / 2)
        material = str(rng.choice(["planks", "laminate", "posters", "cardboard"]))
        surfaces.append(Surface(f"furniture_{i}", (float(centre[0]), float(centre[1]), h / 2), (*half, h / 2),
                                material, _seed(rng), _tint(rng)))
    # pictures and notice boards on the back wall
    for i in range(int(rng.integers(0, 4))):
        w, h = rng.uniform(0.3, 1.0), rng.uniform(0.3, 0.8)
        x, z = rng.uniform(-side + w, side - w), rng.uniform(top + 0.2, height - h / 2 - 0.1)
        surfaces.append(Surface(f"picture_{i}", (float(x), back - 0.01, float(z)), (w / 2, 0.01, h / 2), "posters",
                                _seed(rng), tile_m=float(max(w, h))))
    return surfaces


def _table(rng: np.random.Generator) -> tuple[list[Surface], tuple[float, float, float]]:
    half_w, half_d, top = rng.uniform(0.4, 0.8), rng.uniform(0.3, 0.5), rng.uniform(0.6, 0.8)
    thick = rng.uniform(0.02, 0.05)
    material = str(rng.choice(["planks", "laminate", "laminate", "tiles", "carpet", "cardboard"]))
    surfaces = [Surface("table_top", (0.0, 0.0, top - thick / 2), (half_w, half_d, thick / 2), material, _seed(rng),
                        _tint(rng))]
    leg_material, leg_seed, leg = str(rng.choice(["laminate", "planks"])), _seed(rng), rng.uniform(0.02, 0.04)
    for i, (sx, sy) in enumerate([(-1, -1), (-1, 1), (1, -1), (1, 1)]):
        centre = (sx * (half_w - 2 * leg), sy * (half_d - 2 * leg), (top - thick) / 2)
        surfaces.append(Surface(f"table_leg_{i}", centre, (leg, leg, (top - thick) / 2), leg_material, leg_seed))
    return surfaces, (float(half_w), float(half_d), float(top))


# ---- objects -----------------------------------------------------------------------------------
def _look(rng: np.random.Generator, asset: Asset, low_texture: bool) -> tuple[float, float, float, float] | None:
    """None keeps the asset's own look (texture or URDF colour); else a plain RGBA: white/grey
    when ``low_texture``, otherwise a random colour, one in five near-black."""
    if low_texture:
        v = rng.uniform(0.7, 0.97)
        return (float(v), float(v), float(v * rng.uniform(0.97, 1.0)), 1.0)
    if rng.random() < (0.8 if asset.textured else 0.4):
        return None
    value = rng.uniform(0.05, 0.25) if rng.random() < 0.2 else rng.uniform(0.4, 1.0)
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.3, 1.0), value)
    return (float(r), float(g), float(b), 1.0)


def _pick_assets(rng: np.random.Generator, pool: tuple[Asset, ...], count: int) -> list[Asset]:
    """``count`` distinct assets: the first (the salient one) a named mesh half the time, the
    rest one in three, else random shapes (which outnumber the named meshes 60 to 1)."""
    named = [a for a in pool if not a.name.startswith("shape_")]
    shapes = [a for a in pool if a.name.startswith("shape_")]
    chosen: list[Asset] = []
    for i in range(count):
        source = named if rng.random() < (0.5 if i == 0 else 0.33) else shapes
        left = [a for a in source if a not in chosen] or [a for a in pool if a not in chosen]
        chosen.append(left[int(rng.integers(len(left)))])
    return chosen


def _placement(rng: np.random.Generator, asset: Asset, size: tuple[float, float], low_texture: bool) -> Placement:
    """An unplaced object: size, yaw and look drawn; position set by ``_arrange``."""
    return Placement(asset, float(rng.uniform(*size)), 0.0, 0.0, 0.0, float(rng.uniform(0, 2 * np.pi)),
                     _look(rng, asset, low_texture), low_texture, shiny=bool(rng.random() < 0.2))


def _free_spot(rng: np.random.Generator, radius: float, bounds: tuple[float, float, float, float],
               taken: list[tuple[float, float, float]], gap: float = 0.01,
               tries: int = 60) -> tuple[float, float] | None:
    """A point in bounds (x0, x1, y0, y1) whose disc of ``radius`` clears every taken disc."""
    x0, x1, y0, y1 = bounds
    if x0 > x1 or y0 > y1:
        return None
    for _ in range(tries):
        x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
        if all(np.hypot(x - tx, y - ty) >= radius + tr + gap for tx, ty, tr in taken):
            return float(x), float(y)
    return None


def _arrange(rng: np.random.Generator, family: str, salient: Placement, clutter: list[Placement],
             table: tuple[float, float, float], reserved: list[tuple[float, float, float]]
             ) -> tuple[Placement, list[Placement], list[Placement], list[Surface]]:
    """Positions for the salient object and the clutter according to the layout family.

    Returns (salient, placed clutter, props, extra surfaces). Objects never overlap: each
    keeps a disc (its footprint radius) clear; clutter that finds no free spot is left out.
    """
    half_w, half_d, top = table
    margin = 0.04

    def on_table(r: float) -> tuple[float, float, float, float]:
        return (-half_w + r + margin, half_w - r - margin, -half_d + r + margin, half_d - r - margin)

    taken = list(reserved)  # (x, y, radius) discs
    props: list[Placement] = []
    surfaces: list[Surface] = []
    placed: list[Placement] = []
    rs = salient.footprint_radius
    x, y = _free_spot(rng, rs, (-0.4 * half_w, 0.4 * half_w, -0.5 * half_d, 0.3 * half_d), taken) or (0.0, 0.0)
    salient = replace(salient, x=x, y=y, support_z=top)
    if family == "tray":
        tray = Placement(TRAY, float(np.clip(3.6 * rs + rng.uniform(0.15, 0.3), 0.3, 0.8)), x, y, top,
                         float(rng.uniform(-0.3, 0.3)))
        props.append(tray)
        floor_z = top + 0.015 * tray.scale  # the tray's floor, measured on traybox.urdf
        inner = 0.33 * tray.size_m  # half-width of the flat floor inside the sloping walls
        inside: list[tuple[float, float, float]] = []
        count = int(rng.integers(1, 4))
        in_tray, clutter = clutter[:count], clutter[count:]
        for item in [salient] + in_tray:
            r = item.footprint_radius
            got = _free_spot(rng, r, (x - inner + r, x + inner - r, y - inner + r, y + inner - r), inside)
            if item is salient:
                got = got or (x, y)
                salient = replace(item, x=got[0], y=got[1], support_z=floor_z)
            elif got is not None:
                placed.append(replace(item, x=got[0], y=got[1], support_z=floor_z))
            if got is not None:
                inside.append((got[0], got[1], r))
        taken.append((x, y, 0.5 * tray.size_m * np.sqrt(2)))
    elif family == "pedestal":
        half, height = rs + rng.uniform(0.01, 0.05), rng.uniform(0.05, 0.2)
        material = str(rng.choice(["laminate", "planks", "cardboard", "posters"]))
        surfaces.append(Surface("pedestal", (x, y, top + height / 2), (half, half, height / 2), material, _seed(rng),
                                _tint(rng)))
        salient = replace(salient, support_z=top + height)
        taken.append((x, y, half * np.sqrt(2)))
    else:
        taken.append((x, y, rs))
    sides = [rs, rs]  # row: how far the row reaches to the right (0) and left (1) of the salient object
    for i, item in enumerate(clutter):
        r = item.footprint_radius
        if family == "row":
            side = i % 2
            offset = sides[side] + rng.uniform(0.01, 0.08) + r
            got = (x + offset if side == 0 else x - offset, y)
            if not (on_table(r)[0] <= got[0] <= on_table(r)[1]):
                continue
            sides[side] = offset + r
        elif family == "cluster":
            reach = rs + r + rng.uniform(0.0, 0.12)
            lo_x, hi_x, lo_y, hi_y = on_table(r)
            area = (max(x - reach, lo_x), min(x + reach, hi_x), max(y - reach, lo_y), min(y + reach, hi_y))
            got = _free_spot(rng, r, area, taken, gap=0.0)
        else:
            got = _free_spot(rng, r, on_table(r), taken)
        if got is not None and all(np.hypot(got[0] - tx, got[1] - ty) >= r + tr for tx, ty, tr in taken):
            placed.append(replace(item, x=float(got[0]), y=float(got[1]), support_z=top))
            taken.append((got[0], got[1], r))
    return salient, placed, props, surfaces


# ---- motion --------------------------------------------------------------------------------------
def _arm(rng: np.random.Generator, base: tuple[float, float, float], salient: Placement,
         table: tuple[float, float, float], frames: int,
         taken: list[tuple[float, float, float]]) -> tuple[ArmSpec, bool]:
    """Pick the salient object where it stands, carry it in an arc, place it elsewhere.

    The place spot is on the table within the arm's reach, or (one video in four) beside the
    table, held in the air out of the camera's view. Returns the arm and whether it leaves.
    """
    half_w, half_d, top = table
    r = salient.footprint_radius
    leaves = bool(rng.random() < 0.25)
    place = None
    if leaves:  # swung out sideways and held in the air, within reach of the base
        side = float(rng.choice([-1.0, 1.0]))
        place = (base[0] + side * rng.uniform(0.5, 0.75), base[1] - rng.uniform(0.1, 0.4))
        place_z = top + rng.uniform(0.15, 0.35)
    else:
        for _ in range(40):
            got = _free_spot(rng, r, (-half_w + r + 0.05, half_w - r - 0.05, -half_d + r + 0.05, half_d - r - 0.15),
                             taken, gap=0.02, tries=1)
            if got and 0.3 < np.hypot(got[0] - base[0], got[1] - base[1]) < 0.75 and \
                    np.hypot(got[0] - salient.x, got[1] - salient.y) > 0.15:
                place = got
                break
        place = place or (float(np.clip(-salient.x, -half_w + r, half_w - r)), float(salient.y))
        place_z = top
    t = np.arange(frames) / (frames - 1)
    grasp, release = rng.uniform(0.1, 0.3), rng.uniform(0.65, 0.9)
    s = ease((t - grasp) / (release - grasp))
    start = np.array([salient.x, salient.y, salient.support_z])
    end = np.array([place[0], place[1], place_z])
    path = start[None, :] + s[:, None] * (end - start)[None, :]
    path[:, 2] += rng.uniform(0.1, 0.3) * np.sin(np.pi * s)  # lifted over the clutter
    tool = path + np.array([0.0, 0.0, salient.extent[2]])
    hover = 0.2  # the tool comes down onto the object and goes up after letting go
    before, after = t < grasp, t > release
    tool[before, 2] += hover * (1.0 - ease(t[before] / grasp))
    tool[after, 2] += hover * ease((t[after] - release) / (1.0 - release))
    return ArmSpec(base, path, tool), leaves


def _occluder(rng: np.random.Generator, track: CameraTrack, fixation: np.ndarray, target_size: float,
              table_top: float) -> OccluderSpec:
    """A thing crossing the line of sight at a random frame, between camera and target."""
    frames = len(track.eyes)
    # covering the target for 5-15 frames (at most a third of the video), around a frame in the
    # middle half, so that the first frames show the target unoccluded
    duration = min(rng.uniform(5, 15), frames / 3)
    low = max(0.25 * frames, duration)
    t_cross = int(round(rng.uniform(low, max(low, min(0.75 * frames, frames - 1 - duration / 2)))))
    eye, target = track.eyes[t_cross], fixation[t_cross]
    centre = eye + rng.uniform(0.3, 0.7) * (target - eye)
    right = track.rotations[t_cross][:, 0]
    if rng.random() < 0.6:  # an arm, a bottle, a pole
        shape, size = "cylinder", (rng.uniform(0.02, 0.05), 0.0, rng.uniform(0.15, 0.4))
    else:  # a board, a book, a box carried past
        shape, size = "box", (rng.uniform(0.04, 0.12), rng.uniform(0.01, 0.04), rng.uniform(0.08, 0.25))
    centre[2] = max(centre[2], table_top + size[2] + 0.01)  # never through the table
    width = 2 * size[0] + target_size
    speed = width / duration * rng.choice([-1.0, 1.0])  # metres per frame
    path = centre[None, :] + (np.arange(frames) - t_cross)[:, None] * speed * right[None, :]
    skin = rng.random() < 0.4
    if skin:
        colour = (float(rng.uniform(0.55, 0.95)), float(rng.uniform(0.4, 0.75)), float(rng.uniform(0.3, 0.6)), 1.0)
    else:
        colour = tuple(float(c) for c in rng.uniform(0.1, 0.95, size=3)) + (1.0,)
    material = None if skin or shape == "cylinder" else str(rng.choice(["cardboard", "posters", "laminate"]))
    return OccluderSpec(shape, tuple(float(v) for v in size), colour, material, _seed(rng), path,
                        float(rng.uniform(0, np.pi)))


def _lighting(rng: np.random.Generator, shadow_prob: float) -> Lighting:
    azimuth, elevation = rng.uniform(0, 2 * np.pi), np.radians(rng.uniform(25, 85))
    direction = (np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation))
    warm, cool = np.array([1.0, 0.85, 0.7]), np.array([0.8, 0.9, 1.0])
    mix = rng.uniform(0, 1)
    colour = np.clip((mix * warm + (1 - mix) * cool) * rng.uniform(0.9, 1.1, size=3), 0, 1)
    return Lighting(tuple(float(v) for v in direction), tuple(float(v) for v in colour),
                    float(rng.uniform(0.35, 0.7)), float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.05, 0.5)),
                    bool(rng.random() < shadow_prob))


def sample_scene(rng: np.random.Generator, split: str, frames: int,
                 options: SceneOptions = SceneOptions()) -> SceneSpec:
    """Draw one scene of ``split`` with ``frames`` frames."""
    if frames < 2:
        raise ValueError(f"a scene needs at least 2 frames, got {frames}")
    pool = object_pool(split)
    family = str(rng.choice(FAMILIES[split]))
    table_surfaces, table = _table(rng)
    half_w, half_d, top = table
    close = bool(rng.random() < options.close_background_prob)
    surfaces = _room(rng, table, close) + table_surfaces
    assets = _pick_assets(rng, pool, 1 + int(rng.integers(2, 9)))
    salient = _placement(rng, assets[0], SALIENT_SIZE_M, bool(rng.random() < options.low_texture_prob))
    clutter = [_placement(rng, asset, CLUTTER_SIZE_M, bool(rng.random() < 0.2)) for asset in assets[1:]]
    with_arm = family != "pedestal" and bool(rng.random() < options.arm_prob)
    base = (float(rng.uniform(-0.5, 0.5) * half_w), half_d - 0.1, top)
    reserved = [(base[0], base[1], 0.15)] if with_arm else []  # the arm's base stands there
    salient, clutter, props, extra = _arrange(rng, family, salient, clutter, table, reserved)
    surfaces += extra
    arm, leaves = None, False
    centre = np.array([salient.x, salient.y, salient.support_z + 0.5 * salient.extent[2]])
    fixation = np.repeat(centre[None, :], frames, axis=0)
    if with_arm:
        taken = [(p.x, p.y, p.footprint_radius) for p in clutter + props] + reserved
        arm, leaves = _arm(rng, base, salient, table, frames, taken)
        if not leaves:  # follow the carried object, loosely; if it leaves, keep looking where it was
            path = arm.object_path + np.array([0.0, 0.0, 0.5 * salient.extent[2]])
            fixation = 0.5 * path + 0.5 * path.mean(axis=0, keepdims=True)
    elif close and family != "tray" and rng.random() < 0.5:
        # a board or box side right behind the salient object: the close background
        width, height = min(rng.uniform(0.4, 1.0), 2 * half_w), rng.uniform(0.3, 0.7)
        y = min(salient.y + salient.footprint_radius + rng.uniform(0.1, 0.4), half_d - 0.02)
        x = float(np.clip(salient.x, -half_w + width / 2, half_w - width / 2))
        surfaces.append(Surface("backdrop", (x, float(y), top + height / 2), (width / 2, 0.01, height / 2),
                                str(rng.choice(["cardboard", "posters", "laminate", "planks"])), _seed(rng)))
        clutter = [c for c in clutter
                   if abs(c.y - y) > c.footprint_radius + 0.02 or abs(c.x - x) > width / 2 + c.footprint_radius]
    motion = str(rng.choice([m for m in MOTIONS if not (with_arm and m == "pan")]))
    hfov = float(rng.uniform(55, 75))
    azimuth = -np.pi / 2 + np.radians(rng.uniform(-35, 35))
    # distance from the share of the image width the salient object spans (log-uniform): wide
    # enough in arm videos to see the arm's workspace, closer otherwise
    low, high = (0.12, 0.3) if with_arm else (0.2, 0.6)
    span = float(np.exp(rng.uniform(np.log(low), np.log(high))))
    radius = float(np.clip(salient.size_m / (2.0 * np.tan(np.radians(hfov) / 2.0) * span), 0.25, 1.5))
    track = camera_track(rng, motion, fixation, azimuth, np.radians(rng.uniform(15, 55)), radius, hfov)
    occluder = None
    if rng.random() < options.occluder_prob:
        occluder = _occluder(rng, track, fixation, salient.size_m, top)
    sensor = SensorConfig(subpixel=float(rng.uniform(0.06, 0.2)), max_range_m=float(rng.uniform(3.5, 8.0)),
                          drop_prob=options.depth_drop_prob)
    white_balance = tuple(float(v) for v in rng.uniform(0.9, 1.1, size=3) * rng.uniform(0.8, 1.2))
    return SceneSpec(split=split, family=family, frames=frames, hfov_deg=hfov, surfaces=tuple(surfaces),
                     salient=salient, clutter=tuple(clutter), props=tuple(props), arm=arm, occluder=occluder,
                     camera=track, lighting=_lighting(rng, options.shadow_prob), sensor=sensor,
                     white_balance=white_balance, table_top_z=top,
                     salient_rule="manipulated" if with_arm else "fixated", leaves_view=leaves or motion == "pan")
