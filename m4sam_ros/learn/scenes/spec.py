"""A scene as plain data: what ``layout`` samples and ``world`` builds.

Frozen dataclasses with per-frame paths as arrays, no callables, so a scene is
reproducible from its seed and inspectable (``SceneSpec.summary`` goes into camera.json)
without rendering.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from m4sam_ros.learn.scenes.assets import Asset, native_extent
from m4sam_ros.learn.scenes.camera import CameraTrack
from m4sam_ros.learn.sensor_model import SensorConfig

__all__ = ["SceneOptions", "Surface", "Placement", "ArmSpec", "OccluderSpec", "Lighting", "SceneSpec"]


@dataclass(frozen=True)
class SceneOptions:
    """How often each hard case appears (probabilities per video)."""

    arm_prob: float = 0.35
    occluder_prob: float = 0.4
    low_texture_prob: float = 0.25
    close_background_prob: float = 0.35
    shadow_prob: float = 0.5
    depth_drop_prob: float = 0.02

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"SceneOptions.{name} must be in [0, 1], got {value}")


@dataclass(frozen=True)
class Surface:
    """A textured box (walls, floor, table, cabinets, panels, pedestal); tile_m: texture tile side."""

    name: str
    centre: tuple[float, float, float]
    half_extents: tuple[float, float, float]
    material: str
    texture_seed: int
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    tile_m: float | None = None  # None: the material's own tile size


@dataclass(frozen=True)
class Placement:
    """An object standing on a support: its AABB's bottom centre at ``(x, y, support_z)``.

    colour: None keeps the asset's own look; an RGBA replaces colour and texture (plain objects).
    low_texture: the colour is a plain white or grey (the hard case for RGB saliency).
    shiny: reflective surface (the sensor loses depth on patches of it).
    """

    asset: Asset
    size_m: float
    x: float
    y: float
    support_z: float
    yaw: float
    colour: tuple[float, float, float, float] | None = None
    low_texture: bool = False
    shiny: bool = False

    @property
    def scale(self) -> float:
        return self.size_m / max(native_extent(self.asset.name))

    @property
    def extent(self) -> np.ndarray:
        """AABB size (x, y, z) before the yaw, in metres."""
        return np.array(native_extent(self.asset.name)) * self.scale

    @property
    def footprint_radius(self) -> float:
        return 0.5 * float(np.hypot(*self.extent[:2]))


@dataclass(frozen=True)
class ArmSpec:
    """A KUKA iiwa on the table moving the salient object.

    object_path: (T, 3) bottom centre of the carried object per frame.
    tool_path: (T, 3) where the tip of the suction tool is per frame (on the object's top while
    it is carried; above it before the grasp and after the release).
    """

    base: tuple[float, float, float]
    object_path: np.ndarray
    tool_path: np.ndarray


@dataclass(frozen=True)
class OccluderSpec:
    """Something passing between camera and target: a vertical cylinder or a box (board, book).

    path: (T, 3) centre per frame; size: (radius or half-width, half-depth, half-height).
    """

    shape: str
    size: tuple[float, float, float]
    colour: tuple[float, float, float, float]
    material: str | None
    texture_seed: int
    path: np.ndarray
    yaw: float


@dataclass(frozen=True)
class Lighting:
    """TinyRenderer's one directional light (direction points towards the light)."""

    direction: tuple[float, float, float]
    colour: tuple[float, float, float]
    ambient: float
    diffuse: float
    specular: float
    shadow: bool


@dataclass(frozen=True)
class SceneSpec:
    """Everything one video shows; ``world.SceneWorld`` builds it."""

    split: str
    family: str
    frames: int
    hfov_deg: float
    surfaces: tuple[Surface, ...]
    salient: Placement
    clutter: tuple[Placement, ...]
    props: tuple[Placement, ...]  # tray
    arm: ArmSpec | None
    occluder: OccluderSpec | None
    camera: CameraTrack
    lighting: Lighting
    sensor: SensorConfig
    white_balance: tuple[float, float, float]
    table_top_z: float
    salient_rule: str = "fixated"
    leaves_view: bool = False  # the salient object is meant to leave the view (pan, carried away)

    def summary(self) -> dict:
        """What camera.json records about the scene."""
        return {
            "family": self.family, "camera_motion": self.camera.motion, "hfov_deg": round(self.hfov_deg, 3),
            "salient_object": self.salient.asset.name, "salient_rule": self.salient_rule,
            "salient_low_texture": self.salient.low_texture,
            "clutter": [p.asset.name for p in self.clutter], "arm": self.arm is not None,
            "leaves_view": self.leaves_view,
            "occluder": None if self.occluder is None else self.occluder.shape,
            "close_background": any(s.name in ("backdrop", "back_wall_near") for s in self.surfaces),
            "shadow": self.lighting.shadow,
        }
