"""Evaluation: pysodmetrics wiring, streaming through the SaliencyTracker, reports and the CLI."""
import argparse
import json

import cv2
import numpy as np
import py_sod_metrics
import pytest

from m4sam_ros.learn import evaluate
from m4sam_ros.learn.datasets import load_frame, open_dataset
from m4sam_ros.learn.metrics import METRIC_KEYS, score_frames
from m4sam_ros.learn.synthetic import SyntheticConfig, write_video
from m4sam_ros.tracker import SaliencyTracker, TrackerConfig

SIZE = 64



def _gt() -> np.ndarray:
    gt = np.zeros((40, 50), np.uint8)
    gt[10:30, 15:35] = 255
    return gt


def test_score_frames_perfect_inverted_and_library_agreement():
    gt = _gt()
    perfect = score_frames([gt.astype(np.float32) / 255], [gt])
    assert perfect["s_measure"] == pytest.approx(1.0, abs=1e-6) and perfect["mae"] == 0.0
    assert perfect["f_measure_max"] == pytest.approx(1.0) and perfect["frames"] == 1
    inverted = score_frames([1.0 - gt.astype(np.float32) / 255], [gt])
    assert inverted["s_measure"] < 0.1 and inverted["mae"] == 1.0
    rng = np.random.default_rng(0)
    preds = [rng.random(gt.shape).astype(np.float32) for _ in range(3)]
    ours = score_frames(preds, [gt > 0] * 3)  # bool GT is accepted too
    s_measure, mae = py_sod_metrics.Smeasure(), py_sod_metrics.MAE()
    for p in preds:
        s_measure.step(np.rint(p * 255).astype(np.uint8), gt)
        mae.step(np.rint(p * 255).astype(np.uint8), gt)
    assert ours["s_measure"] == pytest.approx(float(s_measure.get_results()["sm"]))
    assert ours["mae"] == pytest.approx(float(mae.get_results()["mae"]))
    assert set(METRIC_KEYS) <= set(ours) and ours["e_measure_max"] >= ours["e_measure_mean"]


def test_s_measure_of_an_object_on_the_last_column_is_defined():
    """An object leaving the view on the right: the GT centroid lands on the last column, and
    pysodmetrics' empty quadrant made S NaN, then every frame pooled with it too."""
    border = np.zeros((40, 50), np.uint8)
    border[20:26, 49] = 255
    library = py_sod_metrics.Smeasure()
    with pytest.warns(RuntimeWarning):  # numpy: mean of an empty slice
        library.step(np.zeros_like(border), border)
    assert np.isnan(library.get_results()["sm"])  # the library's behaviour our override corrects
    assert score_frames([border.astype(np.float32) / 255], [border])["s_measure"] == pytest.approx(1.0, abs=1e-6)
    missed = score_frames([np.zeros(border.shape, np.float32)], [border])["s_measure"]
    assert 0.0 <= missed < 0.6
    inside = score_frames([_gt().astype(np.float32) / 255], [_gt()])["s_measure"]
    pooled = score_frames([_gt().astype(np.float32) / 255, np.zeros(border.shape, np.float32)], [_gt(), border])
    assert pooled["s_measure"] == pytest.approx((inside + missed) / 2)


def test_score_frames_rejects_bad_input_clearly():
    gt = _gt()
    with pytest.raises(ValueError, match="same"):
        score_frames([np.zeros((10, 10), np.float32)], [gt])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        score_frames([np.full(gt.shape, 2.0, np.float32)], [gt])
    with pytest.raises(ValueError, match="2 predictions but 1"):
        score_frames([gt, gt], [gt])
    with pytest.raises(ValueError, match="no frames"):
        score_frames([], [])


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_data")
    for i in range(2):
        write_video(root, f"v{i}", SyntheticConfig(height=48, width=64, frames=5, seed=10 + i, missing_depth_prob=0.3))
    return open_dataset(root).videos


def _tracker() -> SaliencyTracker:
    return SaliencyTracker.from_settings(preset="test", image_size=SIZE, seed=0,
                                         config=TrackerConfig(image_size=SIZE, mode="learned"))


def test_streaming_matches_manual_tracker_steps_and_resets_per_video(videos):
    tracker = _tracker()
    metrics, samples = evaluate.evaluate_videos(tracker, videos, fps=30.0, strip_frames=3)
    # the same tracker class stepped by hand, one fresh stream per video
    manual = _tracker()
    preds, gts = [], []
    for video in videos:
        manual.reset()
        for i, record in enumerate(video.frames):
            frame = load_frame(record)
            preds.append(manual.step(frame.rgb, frame.depth_raw, stamp=i / 30.0).probability)
            gts.append(frame.gt)
    assert metrics["dataset"] == score_frames(preds, gts)
    alone, _ = evaluate.evaluate_videos(tracker, videos[1:], fps=30.0)  # reset => v1 scores the same alone
    assert alone["videos"]["v1"] == metrics["videos"]["v1"]
    assert metrics["dataset"]["frames"] == 10 and metrics["video_mean"]["videos"] == 2
    assert len(samples) == 3 and samples[0].prediction.shape == (48, 64)


def test_sparse_ground_truth_scores_only_annotated_frames(tmp_path):
    video = write_video(tmp_path, "sparse", SyntheticConfig(height=48, width=64, frames=6, seed=3))
    for stem in ("00001", "00002", "00004"):
        (video / "gt" / f"{stem}.png").unlink()
    dataset = open_dataset(tmp_path)
    metrics, _ = evaluate.evaluate_videos(_tracker(), dataset.videos)
    assert metrics["videos"]["sparse"]["frames"] == 3


def test_report_files(videos, tmp_path):
    metrics, samples = evaluate.evaluate_videos(_tracker(), videos, strip_frames=2)
    report = evaluate.write_report(metrics, samples, tmp_path, "unit", {"preset": "test"})
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["dataset"] == pytest.approx(metrics["dataset"]) and set(saved["videos"]) == {"v0", "v1"}
    table = (tmp_path / "metrics.md").read_text()
    assert "| v0 |" in table and "all frames" in table and "| S | E max | E mean | F max | F adp | MAE |" in table
    strip = cv2.imread(report["paths"]["strip"])
    assert strip.shape[0] == 2 * 122 and strip.shape[1] == 4 * 160  # 2 rows of 4 tiles (120 px high + 2 px gap)


def _cli(argv):
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    return evaluate.run(parser.parse_args(argv))


def test_cli_writes_table_and_reports_bad_input(videos, tmp_path, capsys):
    root = videos[0].path.parent
    out = tmp_path / "out"
    assert _cli(["--data", str(root), "--image-size", str(SIZE), "--out-dir", str(out), "--no-progress",
                 "--mode", "learned"]) == 0
    assert "all frames" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["settings"]["layout"] == "generic"
    assert _cli(["--image-size", str(SIZE)]) == 2  # no --data: a clear error, not a traceback
    assert _cli(["--data", str(tmp_path / "missing"), "--image-size", str(SIZE)]) == 2


def test_help_documents_every_flag(capsys):
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    for name in evaluate.EvalConfig.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in text


def test_cli_defaults_follow_the_adapters_own_config(videos, tmp_path):
    """The demo weights were trained at 256 px: without --preset/--image-size eval runs them there."""
    from m4sam_ros.ros.demo import DEMO_WEIGHTS

    out = tmp_path / "demo"
    assert _cli(["--data", str(videos[0].path.parent), "--adapter", str(DEMO_WEIGHTS / "demo_adapter.pt"),
                 "--sam2-checkpoint", str(DEMO_WEIGHTS / "demo_sam2.pt"), "--out-dir", str(out), "--no-progress"]) == 0
    settings = json.loads((out / "metrics.json").read_text())["settings"]
    assert (settings["preset"], settings["image_size"], settings["mode"]) == ("test", 256, "learned")


@pytest.mark.slow
def test_first_mask_evaluation_on_held_out_rendered_scenes(tmp_path):
    """The zero-shot initialisation scored alone on rendered val scenes (unseen objects and
    layouts): the RGB-D candidates beat the depth/centre prior by a margin and reach the
    target of S 0.75 (no SAM2 refinement here: geometry alone)."""
    from m4sam_ros.learn.scenes.generate import SceneConfig, write_dataset

    write_dataset(SceneConfig(out=str(tmp_path / "val"), split="val", videos=16, frames=2, width=160, height=120,
                              seed=21, progress=False))
    out = tmp_path / "first"
    assert _cli(["--data", str(tmp_path / "val"), "--layout", "generic", "--image-size", "64", "--mode", "zero_shot",
                 "--first-mask", "--out-dir", str(out), "--no-progress"]) == 0
    result = json.loads((out / "metrics_first_mask.json").read_text())
    assert result["frames"] >= 14 and sum(result["rules"].values()) == result["frames"]
    assert result["initial_mask"]["s_measure"] > result["prior"]["s_measure"] + 0.05, result
    assert result["initial_mask"]["s_measure"] >= 0.75, result


@pytest.mark.slow
def test_int8_accuracy_measures_the_s_drop_through_onnx_runtime(videos, tmp_path):
    """What the int8 policy rests on: the demo weights through ONNX Runtime in fp32 and int8 on
    the same videos, printed as the record int8_policy.py keeps."""
    from m4sam_ros.engines.int8_policy import HeldOutScore, Int8Measurement
    from m4sam_ros.tools import int8_accuracy

    data = int8_accuracy.DATA
    scores = int8_accuracy.measure(str(data / "demo_sam2.pt"), str(data / "demo_adapter.pt"), {"tiny": videos},
                                   cache_dir=str(tmp_path))
    (score,) = scores
    assert score.name == "tiny" and score.frames == 10 and 0 < score.s_int8 <= 1 and 0 < score.s_fp32 <= 1
    assert abs(score.drop) < 0.05
    assert len(list(tmp_path.glob("encoder-*-int8-*.onnx"))) == 1
    measurement = Int8Measurement("w", "today", scores, "measure")
    names = {"Int8Measurement": Int8Measurement, "HeldOutScore": HeldOutScore}
    assert eval(int8_accuracy.record(measurement).split("=", 1)[1], names) == measurement  # the literal to paste
