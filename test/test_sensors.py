"""Sensors as they come: frames larger than the training data are brought to its size before background removal
(``frame_size.fit_frame``), and the stuck-sensor check is relative to the sensor's own point density
(``background.point_spacing`` / ``cell_limit``)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from cmdr_ros import CmdrError
from cmdr_ros.config import PreprocessConfig, preset
from cmdr_ros.data import background
from cmdr_ros.data.background import cell_limit, check_cloud, point_spacing, remove_background
from cmdr_ros.data.frame_size import MAX_SIDE, fit_frame, fit_rgb, fit_xyz, fitted_size
from cmdr_ros.data.model_input import prepare_input, working_side
from cmdr_ros.geometry import valid_mask

SENSOR = (1200, 1920)  # height, width of a common industrial 3D camera


def sensor_frame(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 1920x1200 rgb + organized cloud of a simulated part, made the way a denser sensor's frame looks: a 400x250
    view of a small part (0.3 mm pitch) resized by linear interpolation: every point is distinct, 0.06 mm apart,
    ~9 000 of them in a 6 mm cube of the table (the old absolute limit: 7 500)."""
    from cmdr_ros.data.synthetic import CellConfig, render_part

    cell = CellConfig(image_size=400, field_of_view=0.12, block_length=(0.04, 0.05), block_width=(0.03, 0.04),
                      block_height=(0.015, 0.02), max_translation=0.005)
    part = render_part(np.random.default_rng(seed), cell)
    rgb, xyz = part.rgb[75:325], part.xyz[75:325]
    size = (SENSOR[1], SENSOR[0])
    return (cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR),
            cv2.resize(xyz, size, interpolation=cv2.INTER_LINEAR))


def dense_table(h: int, w: int, pitch: float) -> np.ndarray:
    """A tilted table seen from 0.6 m at ``pitch`` metres per pixel, every point distinct."""
    v, u = np.mgrid[0:h, 0:w]
    x, y = (u - w / 2) * pitch, (v - h / 2) * pitch
    return np.stack([x, y, 0.6 + 0.2 * x + 0.1 * y], axis=-1).astype(np.float32)


# ------------------------------------------------------------------------------------------------ fit_frame
def test_fitted_size_keeps_aspect_and_small_frames():
    assert fitted_size(*SENSOR) == (500, 800)
    assert fitted_size(1920, 1200) == (800, 500)
    assert fitted_size(800, 800) == (800, 800) and fitted_size(400, 400) == (400, 400)
    assert fitted_size(3000, 10) == (800, 3)
    assert fitted_size(*SENSOR, max_side=1000) == (625, 1000)
    with pytest.raises(ValueError):
        fitted_size(10, 10, max_side=0)


def test_fit_frame_nearest_for_xyz_bicubic_for_rgb():
    rng = np.random.default_rng(1)
    xyz = rng.normal(size=SENSOR + (3,)).astype(np.float32)
    rgb = rng.integers(0, 256, SENSOR + (3,), dtype=np.uint8)
    f_rgb, f_xyz = fit_frame(rgb, xyz)
    assert f_rgb.shape == f_xyz.shape == (500, 800, 3) and f_rgb.dtype == np.uint8
    # nearest: every fitted point is one the sensor measured, at torch's nearest source pixel
    rows, cols = np.floor(np.arange(500) * np.float32(1200 / 500)).astype(int), np.floor(
        np.arange(800) * np.float32(1920 / 800)).astype(int)
    assert np.array_equal(f_xyz, xyz[rows[:, None], cols[None, :]])
    # bicubic with antialiasing: a flat colour stays flat, a noise image is smoothed (not a pixel pick)
    flat = np.full(SENSOR + (3,), (10, 200, 90), np.uint8)
    assert np.array_equal(np.unique(fit_rgb(flat).reshape(-1, 3), axis=0), [[10, 200, 90]])
    assert f_rgb.std() < rgb.std() / 2
    # frames within the size pass as they are; fitting twice is fitting once
    small = xyz[:400, :400]
    assert fit_xyz(small) is small and fit_rgb(rgb[:800, :600]) is not None
    assert fit_frame(None, None) == (None, None)
    again = fit_frame(f_rgb, f_xyz)
    assert again[0] is f_rgb and again[1] is f_xyz


def test_working_side_is_the_training_size_or_a_larger_model_input():
    assert working_side(preset("lite", "rgbd")) == MAX_SIDE
    cfg = preset("lite", "3d")
    cfg.xyz_size = 1024
    assert working_side(cfg) == 1024


# ------------------------------------------------------------------------------- stuck-sensor check, relative
def test_point_spacing_is_the_sensors_own_and_ignores_duplicates():
    table = dense_table(200, 300, 5e-5)
    valid = valid_mask(table)
    assert point_spacing(table, valid) == pytest.approx(5e-5 * np.hypot(1, 0.2), rel=0.05)
    dup = np.repeat(np.repeat(table, 3, axis=0), 3, axis=1)  # every point reported 9 times
    assert point_spacing(dup, valid_mask(dup)) == pytest.approx(point_spacing(table, valid), rel=0.05)
    one = np.tile(np.array([0.0, 0.0, 0.5], np.float32), (20, 20, 1))
    assert point_spacing(one, valid_mask(one)) is None  # nothing distinct: the absolute limit applies
    cfg = PreprocessConfig()
    assert cell_limit(cfg, None) == cell_limit(cfg, 2.7e-4) == cfg.max_points_per_cell  # MVTec 3D-AD's pitch
    assert cell_limit(cfg, 5e-5) == int(np.ceil(8 * (0.006 / 5e-5) ** 2))


def test_dense_sensor_of_distinct_points_is_not_blamed_as_stuck():
    cfg = PreprocessConfig(remove_plane=False)
    table = dense_table(800, 800, 5e-5)  # 0.05 mm pitch: ~14 000 distinct points per 6 mm cube
    pts = table[valid_mask(table)]
    with pytest.raises(CmdrError, match="max_points_per_cell=7500"):
        check_cloud(pts, cfg)  # the absolute limit alone blames the sensor (what the node did before)
    check_cloud(pts, cfg, point_spacing(table, valid_mask(table)))
    assert valid_mask(remove_background(table, cfg)).all()  # one cluster, nothing refused


def test_stuck_patch_in_a_dense_cloud_is_still_refused():
    cfg = PreprocessConfig(remove_plane=False)
    table = dense_table(800, 800, 5e-5)
    table[100:500, 100:500] = [0.001, 0.002, 0.6]  # 160 000 pixels report one point
    limit = cell_limit(cfg, point_spacing(table, valid_mask(table)))
    assert cfg.max_points_per_cell < limit < 160_000
    with pytest.raises(CmdrError, match=rf"16\d{{4}} of the cloud's .* lie in one 0.006 m cube \(limit {limit}: 8 x a "
                                        r"flat patch at the cloud's own point spacing 0.05\d* mm\)"):
        remove_background(table, cfg)


def test_sensor_frame_is_refused_without_fitting_and_judged_with_it():
    """The issue's case: a 1920x1200 frame of distinct points was refused as a stuck sensor; now it is judged."""
    from cmdr_ros.judge import Judge
    from cmdr_ros.model.detector import CMDRDetector

    rgb, xyz = sensor_frame()
    pts = xyz[valid_mask(xyz)]
    with pytest.raises(CmdrError, match="coincident or duplicated"):
        check_cloud(pts, PreprocessConfig())  # the old rule on the frame as it comes
    det = CMDRDetector(preset("lite", "rgbd"), device="cpu")
    det.threshold, det.model_id = 2.0, "untrained"
    v = Judge(det).judge(rgb, xyz)
    assert v.judged, v.reason
    assert v.decision in ("pass", "reject") and np.isfinite(v.score)
    pred = v.prediction
    assert pred.anomaly_map.shape == SENSOR and pred.valid_mask.shape == SENSOR  # maps at the sensor's size
    # the background removal saw the frame brought to the training size: the same as fitting first
    inp = prepare_input(rgb, xyz, det.config)
    fitted = prepare_input(*fit_frame(rgb, xyz), det.config)
    assert torch_equal(inp.xyz, fitted.xyz) and torch_equal(inp.rgb, fitted.rgb) and torch_equal(inp.valid, fitted.valid)
    assert (inp.frame.height, inp.frame.width) == SENSOR


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_background_removal_of_a_fitted_frame_needs_no_dense_rule(monkeypatch):
    """Fitting alone brings the frame to training density: the sensor frame passes even the absolute limit."""
    _, xyz = sensor_frame()
    fitted = fit_xyz(xyz)
    monkeypatch.setattr(background, "cell_limit", lambda cfg, spacing=None: cfg.max_points_per_cell)
    assert valid_mask(remove_background(fitted)).any()


def test_bag_to_dataset_writes_frames_at_the_training_size(tmp_path):
    """`cmdr bag to-dataset` brings a recorded frame larger than the training data to its size as the node does."""
    from cmdr_ros.data.mvtec3d import MVTec3DClass, load_rgb, load_xyz, write_sample
    from cmdr_ros.ros.bags import bag_from_dataset, bag_to_dataset

    rgb, xyz = (np.ascontiguousarray(a[:900, :1000]) for a in sensor_frame(3))
    write_sample(tmp_path / "cam", "test", "good", "000", rgb, xyz)
    bag_from_dataset(tmp_path / "cam", tmp_path / "rec", split="test")
    assert bag_to_dataset(tmp_path / "rec", tmp_path / "out") == 1
    sample = MVTec3DClass(tmp_path / "out").samples("train")[0]
    want_rgb, want_xyz = fit_frame(rgb, xyz)
    assert want_xyz.shape == (720, 800, 3)
    np.testing.assert_array_equal(load_rgb(sample.rgb_path), want_rgb)
    np.testing.assert_array_equal(load_xyz(sample.xyz_path), want_xyz)
