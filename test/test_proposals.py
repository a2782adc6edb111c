"""RGB-D candidate masks on table-tops rendered by PyBullet with exact depth: the support plane,
walls, objects on pedestals, bumps that belong to their object, and the scores."""
from __future__ import annotations

import numpy as np
import pybullet
import pytest

from m4sam_ros.learn.scenes.camera import intrinsics_for, look_at, projection_matrix, view_matrix
from m4sam_ros.learn.scenes.world import metric_depth
from m4sam_ros.proposals import ProposalConfig, propose, score_candidate

WIDTH, HEIGHT = 160, 120
NEAR, FAR = 0.02, 20.0
INTRINSICS = intrinsics_for(WIDTH, HEIGHT, 60.0)


def render(boxes: list[tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, ...]]],
           eye=(0.0, -0.7, 1.25), target=(0.0, 0.0, 0.75)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes (half extents, centre, RGBA) seen from ``eye``: (rgb, depth m, segmentation by box index)."""
    client = pybullet.connect(pybullet.DIRECT)
    try:
        ids = []
        for half, centre, colour in boxes:
            shape = pybullet.createVisualShape(pybullet.GEOM_BOX, halfExtents=half, rgbaColor=colour,
                                               physicsClientId=client)
            ids.append(pybullet.createMultiBody(0, -1, shape, basePosition=centre, physicsClientId=client))
        eye = np.asarray(eye, float)
        _, _, rgba, zbuffer, seg = pybullet.getCameraImage(
            WIDTH, HEIGHT, view_matrix(look_at(eye, np.asarray(target, float)), eye),
            projection_matrix(INTRINSICS, WIDTH, HEIGHT, NEAR, FAR), renderer=pybullet.ER_TINY_RENDERER,
            physicsClientId=client)
    finally:
        pybullet.disconnect(client)
    rgb = np.asarray(rgba, np.uint8).reshape(HEIGHT, WIDTH, 4)[..., :3].copy()
    depth = metric_depth(np.asarray(zbuffer).reshape(HEIGHT, WIDTH), NEAR, FAR).astype(np.float32)
    depth[~np.isfinite(depth)] = np.nan
    segmentation = np.asarray(seg).reshape(HEIGHT, WIDTH)
    return rgb, depth, np.array([segmentation == i for i in ids])


TABLE = ((0.6, 0.45, 0.02), (0.0, 0.0, 0.7), (0.55, 0.4, 0.3, 1))  # top at z = 0.72
WALL = ((2.0, 0.02, 1.2), (0.0, 0.5, 1.2), (0.8, 0.8, 0.75, 1))  # right behind the table's far edge
FLOOR = ((3.0, 3.0, 0.01), (0.0, 0.0, 0.0), (0.3, 0.3, 0.35, 1))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_an_object_on_the_table_is_the_best_candidate_and_the_wall_is_background():
    box = ((0.05, 0.05, 0.05), (0.05, 0.0, 0.77), (0.2, 0.4, 0.9, 1))
    rgb, depth, masks = render([FLOOR, TABLE, WALL, box])
    proposals = propose(rgb, depth, INTRINSICS)
    assert proposals.best is not None and _iou(proposals.best.mask, masks[3]) > 0.85, proposals.rule
    normal, offset = proposals.support  # the table top: up in the world is -y-ish in the camera
    assert normal[1] < -0.5
    assert all(_iou(c.mask, masks[2]) < 0.1 for c in proposals.candidates)  # the wall is no object
    assert proposals.rule.startswith("geometry")


def test_the_object_on_a_pedestal_beats_the_pedestal():
    pedestal = ((0.08, 0.08, 0.06), (0.0, 0.0, 0.78), (0.5, 0.5, 0.5, 1))
    toy = ((0.03, 0.03, 0.04), (0.0, 0.0, 0.88), (0.9, 0.1, 0.1, 1))
    rgb, depth, masks = render([TABLE, pedestal, toy])
    best = propose(rgb, depth, INTRINSICS).best
    assert best.origin == "on_face" and _iou(best.mask, masks[2]) > 0.7


def test_a_bump_of_the_objects_own_colour_stays_part_of_it():
    brick = ((0.1, 0.07, 0.04), (0.0, 0.0, 0.76), (0.9, 0.8, 0.1, 1))
    stud = ((0.02, 0.02, 0.03), (0.04, 0.0, 0.83), (0.9, 0.8, 0.1, 1))  # same paint, 6 cm tall
    rgb, depth, masks = render([TABLE, brick, stud])
    best = propose(rgb, depth, INTRINSICS).best
    assert best.origin == "region" and _iou(best.mask, masks[1] | masks[2]) > 0.8


def test_a_big_objects_top_face_does_not_pass_for_the_table():
    """A close object's top face can be the biggest up-facing plane; the table below it is the support."""
    big = ((0.2, 0.15, 0.05), (0.0, 0.0, 0.77), (0.2, 0.7, 0.3, 1))
    rgb, depth, masks = render([TABLE, big], eye=(0.0, -0.45, 1.1), target=(0.0, 0.0, 0.78))
    best = propose(rgb, depth, INTRINSICS).best
    assert best is not None and _iou(best.mask, masks[1]) > 0.8


def test_holes_from_dark_surfaces_do_not_split_the_object():
    box = ((0.06, 0.06, 0.06), (0.0, 0.0, 0.78), (0.05, 0.05, 0.05, 1))
    rgb, depth, masks = render([TABLE, box])
    holes = depth.copy()
    rng = np.random.default_rng(0)
    holes[masks[1] & (rng.random(depth.shape) < 0.5)] = np.nan  # half its depth lost, as on black plastic
    best = propose(rgb, holes, INTRINSICS).best
    assert _iou(best.mask, masks[1]) > 0.8


def test_no_depth_no_support_and_determinism():
    rgb = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    assert propose(rgb, np.full((HEIGHT, WIDTH), np.nan, np.float32)).rule.startswith("no candidate")
    box = ((0.05, 0.05, 0.05), (0.05, 0.0, 0.77), (0.2, 0.4, 0.9, 1))
    rgb, depth, _ = render([TABLE, box])
    first, second = propose(rgb, depth, INTRINSICS), propose(rgb, depth, INTRINSICS)
    assert [c.score for c in first.candidates] == [c.score for c in second.candidates]
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(first.candidates, second.candidates))
    without_intrinsics = propose(rgb, depth).best  # planes stay planes under another focal length
    assert _iou(without_intrinsics.mask, first.best.mask) > 0.8


def test_scores_prefer_the_centre_a_moderate_size_and_a_compact_shape():
    config = ProposalConfig()
    depth = np.full((60, 80), 2.0, np.float32)
    height = np.zeros((60, 80), np.float32)
    centred, corner = np.zeros((60, 80), bool), np.zeros((60, 80), bool)
    centred[25:35, 35:45] = True
    corner[0:10, 0:10] = True
    depth[centred | corner] = 1.5  # nearer than the ring around them
    a, b = score_candidate(centred, depth, height, config), score_candidate(corner, depth, height, config)
    assert a["centre"] > 0.9 > b["centre"] and a["inside"] == 1.0 > b["inside"]
    assert a["contrast"] == pytest.approx(1.0) and a["compactness"] == pytest.approx(1.0, abs=0.05)
    ring = np.zeros((60, 80), bool)
    ring[20:40, 30:50] = True
    ring[22:38, 32:48] = False
    assert score_candidate(ring, depth, height, config)["compactness"] < 0.5
    with pytest.raises(ValueError, match="weights"):
        ProposalConfig(weights={"centre": 1.0})
