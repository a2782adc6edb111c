"""The object pool from ``pybullet_data`` and the rule that splits it into train and val.

Split rule (objects): the named meshes are assigned by hand in ``NAMED`` so that each split
has textured, plain white (low-texture), round, boxy and animal-like objects; the 1,000
``random_urdfs`` shapes go to **val when their number is divisible by 5** (200 shapes) and
to train otherwise (800). An object of one split is never loaded in a scene of the other,
as the salient object, clutter or occluder alike. The tray is a prop of the val-only
``tray`` layout, never an object.

Sizes: every asset is rescaled at load time to a sampled physical size (its largest AABB
side), so the native scale of a mesh never matters; ``native_extent`` measures it once.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
import pybullet
import pybullet_data

SPLITS = ("train", "val")
_UPRIGHT_Y = (np.pi / 2, 0.0, 0.0)  # meshes modelled with +y up stand on +z after this roll

__all__ = ["SPLITS", "Asset", "NAMED", "object_pool", "asset_by_name", "native_extent", "data_path"]


@dataclass(frozen=True)
class Asset:
    """One loadable object.

    path: URDF, or OBJ (loaded as a mesh), relative to ``pybullet_data``.
    upright: roll, pitch, yaw making the object stand upright on +z.
    textured: the mesh has its own texture (recolouring it would throw that away).
    """

    name: str
    path: str
    split: str
    upright: tuple[float, float, float] = (0.0, 0.0, 0.0)
    textured: bool = False

    @property
    def is_urdf(self) -> bool:
        return self.path.endswith(".urdf")


NAMED: tuple[Asset, ...] = (
    Asset("duck", "duck_vhacd.urdf", "train", _UPRIGHT_Y, textured=True),
    Asset("teddy", "teddy_vhacd.urdf", "train", _UPRIGHT_Y),
    Asset("soccerball", "soccerball.urdf", "train", textured=True),
    Asset("lego", "lego/lego.urdf", "train"),
    Asset("jenga", "jenga/jenga.urdf", "train", textured=True),
    Asset("white_cube", "cube.urdf", "train"),
    Asset("checker_ball", "sphere2.urdf", "train", textured=True),
    Asset("toy_cylinder", "toys/cylinder.obj", "train"),
    Asset("mug", "objects/mug.urdf", "val"),
    Asset("torus", "torus/torus_textured.obj", "val", _UPRIGHT_Y, textured=True),
    Asset("bunny", "bunny.obj", "val", _UPRIGHT_Y),
    Asset("domino", "domino/domino.urdf", "val", textured=True),
    Asset("toy_prism", "toys/prism.obj", "val"),
)

TRAY = Asset("tray", "tray/traybox.urdf", "val")


def data_path() -> str:
    return pybullet_data.getDataPath()


def _random_shape(index: int) -> Asset:
    split = "val" if index % 5 == 0 else "train"
    return Asset(f"shape_{index:03d}", f"random_urdfs/{index:03d}/{index:03d}.urdf", split)


@functools.lru_cache(maxsize=None)
def object_pool(split: str) -> tuple[Asset, ...]:
    """Every object of one split, named meshes first, in a fixed order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    shapes = [_random_shape(i) for i in range(1000)
              if os.path.isfile(os.path.join(data_path(), f"random_urdfs/{i:03d}/{i:03d}.urdf"))]
    return tuple(a for a in (*NAMED, *shapes) if a.split == split)


def asset_by_name(name: str) -> Asset:
    for asset in (*NAMED, TRAY):
        if asset.name == name:
            return asset
    if name.startswith("shape_") and name[6:].isdigit():
        return _random_shape(int(name[6:]))
    raise KeyError(f"no asset named {name!r}")


def load_asset(client: int, asset: Asset, scale: float, position: np.ndarray, orientation: np.ndarray) -> int:
    """Create the body (static, physics unused) and return its unique id.

    URDFs load as they are; OBJ meshes get the same mesh as collision shape so that
    ``getAABB`` measures them like the URDFs.
    """
    path = os.path.join(data_path(), asset.path)
    if asset.is_urdf:
        return pybullet.loadURDF(path, position.tolist(), orientation.tolist(), globalScaling=scale,
                                 useFixedBase=True, physicsClientId=client)
    visual = pybullet.createVisualShape(pybullet.GEOM_MESH, fileName=path, meshScale=[scale] * 3,
                                        physicsClientId=client)
    collision = pybullet.createCollisionShape(pybullet.GEOM_MESH, fileName=path, meshScale=[scale] * 3,
                                              physicsClientId=client)
    return pybullet.createMultiBody(0, collision, visual, position.tolist(), orientation.tolist(),
                                    physicsClientId=client)


@functools.lru_cache(maxsize=None)
def native_extent(name: str) -> tuple[float, float, float]:
    """AABB size (x, y, z) in metres of an asset at scale 1, standing upright."""
    asset = asset_by_name(name)
    client = pybullet.connect(pybullet.DIRECT)
    try:
        orientation = np.array(pybullet.getQuaternionFromEuler(asset.upright))
        body = load_asset(client, asset, 1.0, np.zeros(3), orientation)
        low, high = pybullet.getAABB(body, physicsClientId=client)
    finally:
        pybullet.disconnect(client)
    return tuple(float(b - a) for a, b in zip(low, high, strict=True))
