"""Build a ``SceneSpec`` in a headless PyBullet client and render its frames.

PyBullet is used as a scene graph and CPU rasteriser only (TinyRenderer: RGB, z-buffer and
a per-body segmentation buffer, no GPU or GL); nothing is simulated, every pose is set
kinematically per frame, so rendering is deterministic and independent of physics steps.
Each world owns its own ``DIRECT`` client, so several can exist in one process.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import cv2
import numpy as np
import pybullet

from m4sam_ros.learn.scenes.assets import data_path, load_asset
from m4sam_ros.learn.scenes.camera import intrinsics_for, projection_matrix, view_matrix
from m4sam_ros.learn.scenes.spec import Placement, SceneSpec, Surface
from m4sam_ros.learn.scenes.textures import make_texture
from m4sam_ros.postprocess import CameraIntrinsics

NEAR_M, FAR_M = 0.02, 20.0  # clip planes: nearer than any camera gets, farther than any room
_ARM_EE_LINK = 6  # lbr_iiwa_link_7
_FLANGE_M = 0.045  # link 7's frame to its flange face
_TOOL = (0.02, 0.07)  # suction tool radius, length
_ARM_REST = (0.0, 0.5, 0.0, -1.6, 0.0, 1.0, 0.0)  # elbow up, flange down: IK stays near it (null space)
_ARM_LIMITS = ((-2.96, -2.09, -2.96, -2.09, -2.96, -2.09, -3.05), (2.96, 2.09, 2.96, 2.09, 2.96, 2.09, 3.05))
_DOWN = pybullet.getQuaternionFromEuler((np.pi, 0.0, 0.0))

__all__ = ["NEAR_M", "FAR_M", "RenderedFrame", "SceneWorld", "metric_depth", "box_mesh"]


@dataclass
class RenderedFrame:
    """A clean render: rgb (H, W, 3) uint8; depth_m (H, W) float32 z in metres (inf: nothing hit);
    segmentation (H, W) int32 body unique ids (-1: nothing)."""

    rgb: np.ndarray
    depth_m: np.ndarray
    segmentation: np.ndarray


def metric_depth(zbuffer: np.ndarray, near: float, far: float) -> np.ndarray:
    """OpenGL z-buffer in [0, 1] -> z along the optical axis in metres; the far plane -> inf."""
    zbuffer = np.asarray(zbuffer, dtype=np.float64)
    z = far * near / (far - (far - near) * zbuffer)
    return np.where(zbuffer >= 1.0, np.inf, z).astype(np.float32)


def box_mesh(half_extents: tuple[float, float, float], tile_m: float) -> dict:
    """Vertices, indices, normals and UVs of a box whose textures tile every ``tile_m`` metres.

    Each face's v axis is world +z on the side faces (textures stand upright on walls);
    triangles wind counter-clockwise seen from outside.
    """
    h = np.asarray(half_extents, dtype=np.float64)
    x, y, z = np.eye(3)
    faces = [(x, y, z), (-x, -y, z), (y, -x, z), (-y, x, z), (z, x, y), (-z, x, -y)]  # (normal, u axis, v axis)
    vertices, uvs, normals, indices = [], [], [], []
    for normal, u_axis, v_axis in faces:
        hu, hv, hn = abs(u_axis @ h), abs(v_axis @ h), abs(normal @ h)
        start = len(vertices)
        for su, sv in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
            vertices.append((normal * hn + su * u_axis * hu + sv * v_axis * hv).tolist())
            uvs.append([(su + 1) * hu / tile_m, (sv + 1) * hv / tile_m])
            normals.append(normal.tolist())
        indices += [start, start + 1, start + 2, start, start + 2, start + 3]
    return {"vertices": vertices, "indices": indices, "normals": normals, "uvs": uvs}


class SceneWorld:
    """One scene loaded in its own PyBullet client; ``render(t)`` poses frame t and renders it."""

    def __init__(self, spec: SceneSpec, width: int, height: int) -> None:
        self.spec, self.width, self.height = spec, width, height
        self.intrinsics: CameraIntrinsics = intrinsics_for(width, height, spec.hfov_deg)
        self._projection = projection_matrix(self.intrinsics, width, height, NEAR_M, FAR_M)
        self._client = pybullet.connect(pybullet.DIRECT)
        self._textures_dir = tempfile.TemporaryDirectory(prefix="m4sam_scene_")
        self._textures: dict[tuple[str, int], tuple[int, float]] = {}
        try:
            for surface in spec.surfaces:
                self._add_surface(surface)
            for prop in spec.props:
                self._add_object(prop)
            self.clutter_ids = [self._add_object(p)[0] for p in spec.clutter]
            self.salient_id, *self._salient_anchor = self._add_object(spec.salient)
            self.shiny_ids = [i for i, p in zip(self.clutter_ids + [self.salient_id],
                                                list(spec.clutter) + [spec.salient], strict=True) if p.shiny]
            self._arm = self._add_arm() if spec.arm is not None else None
            self._occluder = self._add_occluder() if spec.occluder is not None else None
        except Exception:
            self.close()
            raise

    # ---- building ------------------------------------------------------------------------------
    def _texture(self, material: str, seed: int) -> tuple[int, float]:
        """(texture id, tile side in metres), generated and loaded once per (material, seed)."""
        key = (material, seed)
        if key not in self._textures:
            image, tile_m = make_texture(material, seed)
            path = os.path.join(self._textures_dir.name, f"{material}_{seed}.png")
            if not cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
                raise OSError(f"could not write texture {path}")
            self._textures[key] = (pybullet.loadTexture(path, physicsClientId=self._client), tile_m)
        return self._textures[key]

    def _textured_box(self, half_extents: tuple[float, float, float], material: str | None, seed: int,
                      rgba: tuple[float, float, float, float], tile_m: float | None) -> int:
        texture, own_tile = self._texture(material, seed) if material else (-1, 1.0)
        mesh = box_mesh(half_extents, tile_m or own_tile)
        visual = pybullet.createVisualShape(pybullet.GEOM_MESH, rgbaColor=list(rgba), physicsClientId=self._client,
                                            **mesh)
        body = pybullet.createMultiBody(0, -1, visual, physicsClientId=self._client)
        if texture >= 0:
            pybullet.changeVisualShape(body, -1, textureUniqueId=texture, physicsClientId=self._client)
        return body

    def _add_surface(self, surface: Surface) -> int:
        body = self._textured_box(surface.half_extents, surface.material, surface.texture_seed,
                                  (*surface.tint, 1.0), surface.tile_m)
        pybullet.resetBasePositionAndOrientation(body, surface.centre, (0, 0, 0, 1), physicsClientId=self._client)
        return body

    def _add_object(self, placement: Placement) -> tuple[int, np.ndarray, np.ndarray]:
        """Load an object so that its AABB's bottom centre is at the placement. Returns the body,
        the offset from that point to the body origin and the orientation (to move it later)."""
        upright = pybullet.getQuaternionFromEuler(placement.asset.upright)
        yaw = pybullet.getQuaternionFromEuler((0.0, 0.0, placement.yaw))
        orientation = np.array(pybullet.multiplyTransforms((0, 0, 0), yaw, (0, 0, 0), upright)[1])
        body = load_asset(self._client, placement.asset, placement.scale, np.zeros(3), orientation)
        low, high = (np.array(v) for v in pybullet.getAABB(body, physicsClientId=self._client))
        offset = -np.array([(low[0] + high[0]) / 2, (low[1] + high[1]) / 2, low[2]])
        target = np.array([placement.x, placement.y, placement.support_z])
        pybullet.resetBasePositionAndOrientation(body, (target + offset).tolist(), orientation.tolist(),
                                                 physicsClientId=self._client)
        if placement.colour is not None:
            pybullet.changeVisualShape(body, -1, rgbaColor=list(placement.colour), textureUniqueId=-1,
                                       physicsClientId=self._client)
        return body, offset, orientation

    def _add_arm(self) -> tuple[int, int]:
        arm = pybullet.loadURDF(os.path.join(data_path(), "kuka_iiwa/model.urdf"), self.spec.arm.base,
                                useFixedBase=True, physicsClientId=self._client)
        for joint, angle in enumerate(_ARM_REST):
            pybullet.resetJointState(arm, joint, angle, physicsClientId=self._client)
        radius, length = _TOOL
        visual = pybullet.createVisualShape(pybullet.GEOM_CYLINDER, radius=radius, length=length,
                                            rgbaColor=[0.25, 0.25, 0.27, 1.0], physicsClientId=self._client)
        tool = pybullet.createMultiBody(0, -1, visual, physicsClientId=self._client)
        return arm, tool

    def _add_occluder(self) -> int:
        occluder = self.spec.occluder
        a, b, c = occluder.size
        if occluder.shape == "cylinder":
            visual = pybullet.createVisualShape(pybullet.GEOM_CYLINDER, radius=a, length=2 * c,
                                                rgbaColor=list(occluder.colour), physicsClientId=self._client)
            return pybullet.createMultiBody(0, -1, visual, physicsClientId=self._client)
        return self._textured_box((a, b, c), occluder.material, occluder.texture_seed, occluder.colour, None)

    # ---- per frame -----------------------------------------------------------------------------
    def _pose_arm(self, t: int) -> None:
        arm, tool = self._arm
        radius, length = _TOOL
        tip = self.spec.arm.tool_path[t]
        target = tip + np.array([0.0, 0.0, length + _FLANGE_M])
        low, high = _ARM_LIMITS
        for _ in range(3):  # IK starts from the current joints; a few passes converge from the last frame
            angles = pybullet.calculateInverseKinematics(
                arm, _ARM_EE_LINK, target.tolist(), _DOWN, lowerLimits=list(low), upperLimits=list(high),
                jointRanges=[b - a for a, b in zip(low, high, strict=True)], restPoses=list(_ARM_REST),
                maxNumIterations=50, residualThreshold=1e-4, physicsClientId=self._client)
            for joint, angle in enumerate(angles):
                pybullet.resetJointState(arm, joint, angle, physicsClientId=self._client)
        state = pybullet.getLinkState(arm, _ARM_EE_LINK, computeForwardKinematics=True, physicsClientId=self._client)
        position, orientation = np.array(state[4]), state[5]
        axis = np.array(pybullet.getMatrixFromQuaternion(orientation)).reshape(3, 3)[:, 2]
        centre = position + axis * (_FLANGE_M + length / 2)
        pybullet.resetBasePositionAndOrientation(tool, centre.tolist(), orientation, physicsClientId=self._client)
        offset, body_orientation = self._salient_anchor
        pybullet.resetBasePositionAndOrientation(self.salient_id, (self.spec.arm.object_path[t] + offset).tolist(),
                                                 body_orientation.tolist(), physicsClientId=self._client)

    def render(self, t: int) -> RenderedFrame:
        """Pose everything for frame t and render it."""
        if not 0 <= t < self.spec.frames:
            raise IndexError(f"frame {t} outside 0..{self.spec.frames - 1}")
        if self._arm is not None:
            self._pose_arm(t)
        if self._occluder is not None:
            yaw = pybullet.getQuaternionFromEuler((0.0, 0.0, self.spec.occluder.yaw))
            pybullet.resetBasePositionAndOrientation(self._occluder, self.spec.occluder.path[t].tolist(), yaw,
                                                     physicsClientId=self._client)
        light = self.spec.lighting
        camera = self.spec.camera
        _, _, rgba, zbuffer, segmentation = pybullet.getCameraImage(
            self.width, self.height, view_matrix(camera.rotations[t], camera.eyes[t]), self._projection,
            lightDirection=list(light.direction), lightColor=list(light.colour), lightDistance=4.0,
            shadow=int(light.shadow), lightAmbientCoeff=light.ambient, lightDiffuseCoeff=light.diffuse,
            lightSpecularCoeff=light.specular, renderer=pybullet.ER_TINY_RENDERER, physicsClientId=self._client)
        rgb = np.asarray(rgba, dtype=np.uint8).reshape(self.height, self.width, 4)[:, :, :3].copy()
        depth = metric_depth(np.asarray(zbuffer).reshape(self.height, self.width), NEAR_M, FAR_M)
        segmentation = np.asarray(segmentation, dtype=np.int32).reshape(self.height, self.width)
        return RenderedFrame(rgb, depth, segmentation)

    # ---- lifetime ------------------------------------------------------------------------------
    def close(self) -> None:
        if self._client is not None and pybullet.isConnected(self._client):
            pybullet.disconnect(self._client)
        self._client = None
        self._textures_dir.cleanup()

    def __enter__(self) -> "SceneWorld":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
