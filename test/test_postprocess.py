"""Probability -> mask -> objects: boxes, areas, filtering, stable IDs, 3D from depth."""
import cv2
import numpy as np
import pytest

from m4sam_ros.postprocess import CameraIntrinsics, ObjectExtractor, PostprocessConfig

H, W = 96, 128


def _rect(prob: np.ndarray, x: int, y: int, w: int, h: int, value: float = 0.9) -> np.ndarray:
    prob[y:y + h, x:x + w] = value
    return prob


def _blank() -> np.ndarray:
    return np.zeros((H, W), np.float32)


def test_boxes_areas_scores_of_drawn_shapes():
    prob = _rect(_blank(), 10, 20, 30, 15, 0.8)
    cv2.circle(prob, (90, 50), 12, 0.95, -1)
    mask, objects = ObjectExtractor(PostprocessConfig())(prob, None, None)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert mask.sum() == (prob >= 0.5).sum()
    assert [o.score for o in objects] == sorted((o.score for o in objects), reverse=True)
    circle, rect = objects
    assert rect.box == (10, 20, 30, 15) and rect.area == 450 and rect.score == pytest.approx(0.8)
    assert circle.box == (78, 38, 25, 25) and circle.score == pytest.approx(0.95)
    assert circle.area == int((prob == np.float32(0.95)).sum())
    assert all(o.centroid is None and o.extent is None and o.age == 0 for o in objects)
    assert {o.id for o in objects} == {1, 2}


def test_min_area_filter_and_max_objects():
    prob = _rect(_blank(), 5, 5, 3, 3)  # 9 px < 0.1 % ... of 12288 is 13 px
    _rect(prob, 40, 40, 10, 10, 0.7)
    _rect(prob, 80, 10, 10, 10, 0.9)
    _rect(prob, 80, 60, 10, 10, 0.6)
    mask, objects = ObjectExtractor(PostprocessConfig(min_area_fraction=0.001, max_objects=2))(prob, None, None)
    assert mask[5:8, 5:8].sum() == 0  # speck removed from the mask too
    assert mask.sum() == 300  # three kept components, though only two are reported
    assert [o.box for o in objects] == [(80, 10, 10, 10), (40, 40, 10, 10)]


def test_ids_stay_stable_as_blob_moves_and_new_blob_gets_new_id():
    extractor = ObjectExtractor(PostprocessConfig())
    ids = []
    for t in range(6):
        prob = _rect(_blank(), 10 + 3 * t, 30, 20, 20)
        if t >= 3:
            _rect(prob, 90, 60, 15, 15, 0.95)
        _, objects = extractor(prob, None, None)
        ids.append({o.box[0]: (o.id, o.age) for o in objects})
    assert [frame[10 + 3 * t] for t, frame in enumerate(ids)] == [(1, t) for t in range(6)]
    assert [frame[90] for frame in ids[3:]] == [(2, 0), (2, 1), (2, 2)]


def test_one_frame_dropout_keeps_id_and_reset_restarts():
    extractor = ObjectExtractor(PostprocessConfig(max_missed_frames=2))
    prob = _rect(_blank(), 40, 30, 20, 20)
    assert extractor(prob, None, None)[1][0].id == 1
    assert extractor(_blank(), None, None)[1] == []
    again = extractor(prob, None, None)[1][0]
    assert (again.id, again.age) == (1, 2)
    far = _rect(_blank(), 90, 60, 20, 20)  # no overlap: a new object
    assert extractor(far, None, None)[1][0].id == 2
    extractor.reset()
    assert extractor(prob, None, None)[1][0].id == 1


def test_new_ids_increase_after_track_is_forgotten():
    extractor = ObjectExtractor(PostprocessConfig(max_missed_frames=0))
    prob = _rect(_blank(), 40, 30, 20, 20)
    extractor(prob, None, None)
    extractor(_blank(), None, None)
    assert extractor(prob, None, None)[1][0].id == 2


def test_centroid_and_extent_of_plane_at_known_depth():
    k = [100.0, 0.0, 63.5, 0.0, 110.0, 47.5, 0.0, 0.0, 1.0]
    intrinsics = CameraIntrinsics.from_k(k)
    depth = np.full((H, W), np.nan, np.float32)
    depth[20:60, 70:110] = 2.0  # plane z = 2 m seen through the object
    prob = _rect(_blank(), 70, 20, 40, 40)
    _, (obj,) = ObjectExtractor(PostprocessConfig(depth_percentiles=(0.0, 100.0)))(prob, depth, intrinsics)
    u_mid, v_mid = (70 + 109) / 2, (20 + 59) / 2
    expected = [(u_mid - 63.5) * 2.0 / 100.0, (v_mid - 47.5) * 2.0 / 110.0, 2.0]
    np.testing.assert_allclose(obj.centroid, expected, atol=1e-6)
    np.testing.assert_allclose(obj.extent, [39 * 2.0 / 100.0, 39 * 2.0 / 110.0, 0.0], atol=1e-6)
    few = ObjectExtractor(PostprocessConfig(max_depth_points=400))(prob, depth, intrinsics)[1][0]
    np.testing.assert_allclose(few.centroid, expected, atol=0.02)  # a 2-px grid of points: within a pixel


def test_centroid_ignores_holes_and_flying_pixels():
    intrinsics = CameraIntrinsics(fx=100.0, fy=100.0, cx=63.5, cy=47.5)
    depth = np.full((H, W), 1.5, np.float32)
    depth[30:40, 30:40] = np.nan
    depth[30, 30:70] = 8.0  # a few flying pixels at the edge
    prob = _rect(_blank(), 30, 30, 40, 40)
    _, (obj,) = ObjectExtractor()(prob, depth, intrinsics)
    assert obj.centroid[2] == pytest.approx(1.5)
    assert obj.extent[2] == pytest.approx(0.0)


def test_sparse_depth_beyond_max_points_still_gives_3d():
    """Depth valid only on every other row and column (aligned from a lower-resolution sensor,
    projected lidar): subsampling must not land between the valid pixels and find none."""
    intrinsics = CameraIntrinsics(fx=100.0, fy=100.0, cx=63.5, cy=47.5)
    depth = np.full((H, W), np.nan, np.float32)
    depth[::2, ::2] = 1.5
    prob = _rect(_blank(), 0, 0, W, H)  # 3072 valid depth pixels in the object
    _, (obj,) = ObjectExtractor(PostprocessConfig(max_depth_points=1000))(prob, depth, intrinsics)
    assert obj.centroid is not None and obj.centroid[2] == pytest.approx(1.5)
    assert obj.extent[0] > 0.5 * W * 1.5 / 100.0  # the sample spans the object, not one corner


def test_all_hole_depth_gives_no_3d():
    intrinsics = CameraIntrinsics(fx=100.0, fy=100.0, cx=63.5, cy=47.5)
    prob = _rect(_blank(), 30, 30, 40, 40)
    _, (obj,) = ObjectExtractor()(prob, np.full((H, W), np.nan, np.float32), intrinsics)
    assert obj.centroid is None and obj.extent is None


def test_depth_size_mismatch_is_refused():
    with pytest.raises(ValueError, match="resize"):
        ObjectExtractor()(_blank(), np.ones((H // 2, W // 2), np.float32), CameraIntrinsics(1.0, 1.0, 0.0, 0.0))


def test_millimetre_depth_is_refused():
    with pytest.raises(ValueError, match="depth_to_metres"):
        ObjectExtractor()(_blank(), np.ones((H, W), np.uint16), CameraIntrinsics(1.0, 1.0, 0.0, 0.0))


def test_bad_probability_is_refused():
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        ObjectExtractor()(np.zeros((H, W, 1), np.float32), None, None)
    with pytest.raises(ValueError, match="dtype uint8"):
        ObjectExtractor()(np.zeros((H, W), np.uint8), None, None)


def test_intrinsics_from_k_and_scaled_follow_resize():
    intrinsics = CameraIntrinsics.from_k([600.0, 0, 319.5, 0, 610.0, 239.5, 0, 0, 1])
    assert intrinsics == CameraIntrinsics(600.0, 610.0, 319.5, 239.5)
    half = intrinsics.scaled(0.5, 0.5)
    assert (half.fx, half.fy, half.cx, half.cy) == (300.0, 305.0, 159.5, 119.5)  # centre stays the centre
    with pytest.raises(ValueError, match="9 values"):
        CameraIntrinsics.from_k([1.0, 2.0])
    with pytest.raises(ValueError, match="fx, fy > 0"):
        CameraIntrinsics(0.0, 1.0, 0.0, 0.0)


def test_extent_of_a_flat_object_before_a_far_wall_ignores_edge_pixels_on_the_wall():
    """The mask spills onto the wall behind the object at its edges (12% of its pixels here, more
    than the 5-95 percentile range absorbs): centroid and extent come from the object's own depth."""
    intrinsics = CameraIntrinsics(fx=100.0, fy=100.0, cx=63.5, cy=47.5)
    depth = np.full((H, W), 3.0, np.float32)  # a wall at 3 m
    depth[30:70, 40:90] = 0.8  # a flat object at 0.8 m
    prob = _rect(_blank(), 37, 27, 56, 46)  # the mask: the object and a 3-pixel ring of wall
    ring = _rect(_blank(), 37, 27, 56, 46, 1.0) > 0
    ring[30:70, 40:90] = False
    assert ring.sum() / (prob > 0.5).sum() > 0.1
    (obj,) = ObjectExtractor()(prob, depth, intrinsics)[1]
    assert obj.centroid[2] == pytest.approx(0.8)
    assert obj.extent[2] < 0.01, obj.extent
    assert obj.extent[0] == pytest.approx(49 * 0.8 / 100.0, rel=0.1)  # the object's own width, not the ring's


def test_salient_points_back_project_the_mask_with_colour():
    from m4sam_ros.postprocess import salient_points

    intrinsics = CameraIntrinsics(fx=100.0, fy=100.0, cx=63.5, cy=47.5)
    depth = np.full((H, W), 2.0, np.float32)
    depth[0, 0] = np.nan
    mask = np.zeros((H, W), np.uint8)
    mask[:10, :20] = 1
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = np.arange(W, dtype=np.uint8)[None, :]
    xyz, colour = salient_points(mask, depth, rgb, intrinsics, decimation=2)
    assert xyz.shape == (5 * 10 - 1, 3) and xyz.dtype == np.float32 and colour.dtype == np.uint8
    assert np.allclose(xyz[:, 2], 2.0)
    first = xyz[0]  # pixel (u=2, v=0): (0, 0) is a hole
    assert first[0] == pytest.approx((2 - 63.5) * 2.0 / 100.0) and first[1] == pytest.approx(-47.5 * 2.0 / 100.0)
    assert colour[0, 0] == 2
