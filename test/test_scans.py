"""Unorganized scans and the cutting-cell chunking (``cmdr_ros.data.scans``): exact chunking, per-axis scaling,
stitching in input order, chunk labels, file formats and the dataset layout."""
from __future__ import annotations

import numpy as np
import pytest

from cmdr_ros import CmdrError
from cmdr_ros.data.scans import (CHUNK_POINTS, ScanDataset, chunk_labels, chunk_scan, read_scan, scale_isotropic,
                                 scale_per_axis, stitch)
from cmdr_ros.data.synthetic import CellConfig, generate_scan_dataset, render_profilometer_cloud


def test_chunk_is_9216_points_a_96x96_grid():
    assert CHUNK_POINTS == 96 * 96


def test_scale_per_axis_by_hand():
    pts = np.array([[0.0, 10.0, 5.0], [2.0, 20.0, 5.0], [1.0, 15.0, 5.0]])
    np.testing.assert_array_equal(scale_per_axis(pts), [[-1, -1, 0], [1, 1, 0], [0, 0, 0]])  # flat z -> 0


def test_isotropic_scaling_keeps_the_shape():
    pts = np.array([[0.0, 10.0, 5.0], [2.0, 20.0, 5.0], [1.0, 15.0, 6.0]])
    np.testing.assert_allclose(scale_isotropic(pts), [[-0.2, -1, -0.1], [0.2, 1, -0.1], [0, 0, 0.1]], atol=1e-6)
    c = chunk_scan(np.tile(pts, (40, 1)), size=100, scaling="isotropic")
    np.testing.assert_allclose(c.points[0][:3], scale_isotropic(pts), atol=1e-6)
    with pytest.raises(CmdrError, match="unknown chunk scaling"):
        chunk_scan(pts.repeat(50, 0), size=100, scaling="none")


def test_chunks_are_sequential_scaled_and_the_tail_overlaps():
    rng = np.random.default_rng(0)
    n = 2 * 100 + 37
    pts = rng.normal(size=(n, 3)) * [1.0, 5.0, 0.01] + [3.0, -2.0, 1.0]
    c = chunk_scan(pts, size=100)
    assert len(c) == 3 and c.n_points == n
    np.testing.assert_array_equal(c.index[0], np.arange(100))
    np.testing.assert_array_equal(c.index[1], np.arange(100, 200))
    np.testing.assert_array_equal(c.index[2], np.arange(n - 100, n))  # the last 100 points
    for k in range(3):
        chunk = pts[c.index[k]]
        lo, hi = chunk.min(0), chunk.max(0)
        np.testing.assert_allclose(c.points[k], 2 * (chunk - lo) / (hi - lo) - 1, atol=1e-6)
        assert c.points[k].min(0).tolist() == [-1, -1, -1] and c.points[k].max(0).tolist() == [1, 1, 1]
    assert c.points.dtype == np.float32 and c.points.shape == (3, 100, 3)
    exact = chunk_scan(pts[:200], size=100)
    assert len(exact) == 2  # no tail chunk when the scan divides evenly


def test_stitch_returns_scores_in_input_order_max_where_chunks_overlap():
    n = 250
    c = chunk_scan(np.random.default_rng(1).normal(size=(n, 3)), size=100)
    scores = np.stack([np.full(100, 1.0), np.full(100, 2.0), np.arange(100, dtype=float)])
    out = stitch(scores, c)
    assert out.shape == (n,)
    np.testing.assert_array_equal(out[:100], 1.0)
    np.testing.assert_array_equal(out[100:150], 2.0)
    np.testing.assert_array_equal(out[150:200], np.maximum(2.0, np.arange(50)))  # overlap with the tail chunk
    np.testing.assert_array_equal(out[200:], np.arange(50, 100))
    with pytest.raises(ValueError):
        stitch(scores[:2], c)


def test_chunk_label_is_a_quarter_percent_of_points():
    c = chunk_scan(np.random.default_rng(2).normal(size=(2 * CHUNK_POINTS, 3)))
    labels = np.zeros(2 * CHUNK_POINTS, bool)
    labels[:23] = True  # 23 / 9216 = 0.2496 %
    labels[CHUNK_POINTS:CHUNK_POINTS + 24] = True  # 24 / 9216 = 0.2604 %
    assert chunk_labels(labels, c).tolist() == [False, True]
    with pytest.raises(CmdrError, match="point labels"):
        chunk_labels(labels[:-1], c)


@pytest.mark.parametrize("bad, match", [(np.zeros((50, 3)), "too few points"), (np.zeros((200, 2)), "Nx3"),
                                        (np.full((200, 3), np.nan), "non-finite")])
def test_bad_scans_are_refused_with_a_reason(bad, match):
    with pytest.raises(CmdrError, match=match):
        chunk_scan(bad, size=100)


@pytest.mark.parametrize("ext", [".npy", ".ply", ".pcd"])
def test_read_scan_keeps_the_file_order(tmp_path, ext):
    pts = np.random.default_rng(3).normal(size=(500, 3)).astype(np.float32)
    path = tmp_path / f"scan{ext}"
    if ext == ".npy":
        np.save(path, pts)
    else:
        o3d = pytest.importorskip("open3d")
        assert o3d.io.write_point_cloud(str(path), o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts)))
    np.testing.assert_allclose(read_scan(path), pts, rtol=1e-6)
    with pytest.raises(CmdrError, match="unknown scan format"):
        read_scan(tmp_path / "scan.xyz")


def test_profilometer_scan_order_holds_the_same_points_as_the_shuffled_cloud():
    cfg = CellConfig()
    ordered, lab = render_profilometer_cloud(np.random.default_rng(5), cfg, "bump", shuffle=False)
    shuffled, lab2 = render_profilometer_cloud(np.random.default_rng(5), cfg, "bump")
    key = np.lexsort(ordered.T)
    key2 = np.lexsort(shuffled.T)
    np.testing.assert_array_equal(ordered[key], shuffled[key2])
    np.testing.assert_array_equal(lab[key], lab2[key2])
    # the sensor's order: profile after profile along the travel (y), each along the laser line (x)
    assert (np.diff(ordered[:, 1]) >= 0).all()


def test_scan_dataset_layout(tmp_path):
    root = generate_scan_dataset(tmp_path, n_train=2, n_val=1, n_test_good=1, n_test_per_defect=1,
                                 defects=("bump",))
    data = ScanDataset(root)
    assert ScanDataset.is_scan_folder(root)
    train = data.scans("train")
    assert [(s.defect, s.sample_id, s.label) for s in train] == [("good", "000", 0), ("good", "001", 0)]
    test = data.scans("test")
    assert [(s.defect, s.label) for s in test] == [("good", 0), ("bump", 1)]
    points, labels = test[1].load()
    assert points.shape[1] == 3 and labels.shape == (len(points),) and labels.any()
    points, labels = train[0].load()
    assert not labels.any()  # a good part without gt/: every point good
    with pytest.raises(CmdrError, match="not a scan class folder"):
        ScanDataset(tmp_path / "nothing")
