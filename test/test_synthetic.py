"""Tests of the simulated cutting cell (cmdr_ros.data.synthetic).

Most checks compare a defective part with its defect-free twin: the same seed without a defect renders
the same block under the same sensor noise, so every difference is the defect's.
Set CMDR_SYNTHETIC_MONTAGE=/some/file.png to keep the montage of all defect types for a visual check.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from cmdr_ros import CmdrError
from cmdr_ros.geometry import CameraIntrinsics
from cmdr_ros.data.synthetic import (
    DEFECT_TYPES,
    GEOMETRIC_DEFECTS,
    CellConfig,
    PartFrame,
    calibration_dict,
    class_ids,
    generate_dataset,
    generate_profilometer_dataset,
    render_part,
    render_profilometer_cloud,
)

CFG = CellConfig()
SEEDS = (3, 11)


def _render(seed: int, defect: str | None, cfg: CellConfig = CFG) -> PartFrame:
    return render_part(np.random.default_rng(seed), cfg, defect)


@pytest.fixture(scope="module")
def twins() -> dict[tuple[str, int], tuple[PartFrame, PartFrame]]:
    """(defect, seed) -> (defective frame, defect-free twin)."""
    return {(d, s): (_render(s, d), _render(s, None)) for d in DEFECT_TYPES for s in SEEDS}


def test_camera_model_worked_values() -> None:
    cam = CFG.camera()
    assert isinstance(cam, CameraIntrinsics) and cam.rectified
    fx, fy, cx, cy = cam.K[0, 0], cam.K[1, 1], cam.K[0, 2], cam.K[1, 2]
    assert fx == pytest.approx(256 * 0.45 / 0.26) and fy == fx
    assert (cx, cy, cam.width, cam.height) == (127.5, 127.5, 256, 256)
    # the image spans field_of_view metres of table: pixel 0's centre sits half a pixel inside the edge
    assert (0 - cx) / fx * 0.45 == pytest.approx(-0.13 + 0.26 / 512)
    np.testing.assert_allclose(cam.K, [[fx, 0, 127.5], [0, fx, 127.5], [0, 0, 1]])
    info = cam.to_dict()
    assert info["distortion_model"] == "plumb_bob" and info["d"] == [0.0] * 5
    assert info["r"] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    np.testing.assert_allclose(np.reshape(info["p"], (3, 4))[:, :3], cam.K)
    assert np.reshape(info["p"], (3, 4))[:, 3].tolist() == [0.0, 0.0, 0.0]
    calib = calibration_dict(cam)
    assert calib == {"camera_type": "pinhole", "fx": fx, "fy": fy, "cx": 127.5, "cy": 127.5, "image_width": 256,
                     "image_height": 256}
    # what the dataset reader makes of it is the same camera
    back = CameraIntrinsics.from_mvtec_json(json.loads(json.dumps(calib)))
    np.testing.assert_array_equal(back.K, cam.K)
    assert back.to_dict() == info
    with pytest.raises(CmdrError, match="no distortion"):
        calibration_dict(CameraIntrinsics(256, 256, cam.K, D=[0.1, 0, 0, 0, 0]))


def test_shapes_dtypes_and_determinism() -> None:
    a, b, other = _render(5, "bump"), _render(5, "bump"), _render(6, "bump")
    assert a.rgb.shape == (256, 256, 3) and a.rgb.dtype == np.uint8
    assert a.xyz.shape == (256, 256, 3) and a.xyz.dtype == np.float32
    assert a.mask.shape == (256, 256) and a.mask.dtype == bool
    assert a.defect == "bump" and isinstance(a.camera, CameraIntrinsics)
    for name in ("rgb", "xyz", "mask"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.xyz, other.xyz)
    small = _render(5, "tear", CellConfig(image_size=96))
    assert small.rgb.shape == (96, 96, 3) and small.xyz.shape == (96, 96, 3)


def test_good_part_has_empty_mask_and_is_a_block_on_a_table() -> None:
    frame = _render(7, None)
    assert frame.defect == "good" and not frame.mask.any()
    z = frame.xyz[..., 2][frame.valid]
    # the table is ~0.45 m away, the block top 3-5 cm closer: a clearly bimodal depth
    assert 0.44 < np.median(z) < 0.47
    top = z < 0.43
    assert 0.05 < top.mean() < 0.4
    assert 0.40 < np.median(z[top]) < 0.42
    assert 0.95 < frame.valid.mean() < 1.0  # some dropout, not much
    # foam is pale yellow on the block, the table darker: R > B on the block, block brighter than table
    rgb = frame.rgb.astype(float)
    block = frame.valid & (frame.xyz[..., 2] < 0.43)
    table = frame.valid & (frame.xyz[..., 2] > 0.44)
    assert rgb[block, 0].mean() > rgb[block, 2].mean() + 20
    assert rgb[block].mean() > rgb[table].mean() + 80


@pytest.mark.parametrize("defect", DEFECT_TYPES)
def test_defect_mask_size_and_location(twins, defect: str) -> None:
    for seed in SEEDS:
        frame, clean = twins[defect, seed]
        assert frame.defect == defect
        assert 0.001 < frame.mask.mean() < 0.10, (defect, seed, frame.mask.mean())
        assert not (frame.mask & ~frame.valid).any()  # restricted to valid pixels
        # on the block (or where the block was, for a missing chunk): closer than the table
        assert np.all(clean.xyz[..., 2][frame.mask & clean.valid] < 0.44)


@pytest.mark.parametrize("defect", GEOMETRIC_DEFECTS)
def test_geometric_defect_changes_xyz_only_inside_mask(twins, defect: str) -> None:
    for seed in SEEDS:
        frame, clean = twins[defect, seed]
        both = frame.valid & clean.valid
        dz = np.abs(frame.xyz[..., 2] - clean.xyz[..., 2])
        inside, outside = both & frame.mask, both & ~frame.mask
        assert dz[inside].mean() > 3 * CFG.depth_noise, (defect, seed, dz[inside].mean())
        assert dz[inside].max() > 2e-3
        # shared sensor noise: outside the mask the cloud equals the twin's up to the mask's 1 um epsilon
        assert dz[outside].max() <= 1.1e-6
        assert np.abs(frame.rgb[outside].astype(int) - clean.rgb[outside]).max() <= 1


def test_stain_changes_colour_not_geometry(twins) -> None:
    for seed in SEEDS:
        stain, clean = twins["stain", seed]
        np.testing.assert_array_equal(stain.xyz, clean.xyz)  # no geometry: invisible to 3D-only
        diff = np.abs(stain.rgb.astype(int) - clean.rgb.astype(int)).sum(-1)
        assert diff[stain.mask].mean() > 40  # a clearly visible blotch ...
        assert (stain.rgb[stain.mask].astype(float) < clean.rgb[stain.mask]).all(-1).mean() > 0.9  # ... darker
        assert diff[~stain.mask & stain.valid].max() == 0


def test_tear_is_a_dark_groove(twins) -> None:
    frame, clean = twins["tear", SEEDS[0]]
    both = frame.mask & clean.valid
    assert (frame.xyz[..., 2][both] >= clean.xyz[..., 2][both]).all()  # deeper (farther) everywhere
    darker = frame.rgb[frame.mask].astype(float).mean() / clean.rgb[frame.mask].astype(float).mean()
    assert darker < 0.8


@pytest.mark.parametrize("defect, sign", [("bump", -1), ("burr", -1), ("gouge", 1), ("missing_chunk", 1)])
def test_defect_direction(twins, defect: str, sign: int) -> None:
    """Raised defects come closer to the camera (z shrinks), removed material goes away from it."""
    for seed in SEEDS:
        frame, clean = twins[defect, seed]
        both = frame.mask & frame.valid & clean.valid
        dz = frame.xyz[..., 2][both] - clean.xyz[..., 2][both]
        assert (sign * dz >= 0).all(), (defect, seed)


def test_background_plane_recoverable_and_xyz_reprojects() -> None:
    frame = _render(21, "missing_chunk")
    xyz, valid, cam = frame.xyz.astype(np.float64), frame.valid, frame.camera
    border = np.zeros_like(valid)
    border[:10], border[-10:], border[:, :10], border[:, -10:] = True, True, True, True
    p = xyz[border & valid]
    a = np.c_[p[:, :2], np.ones(len(p))]
    coef, *_ = np.linalg.lstsq(a, p[:, 2], rcond=None)
    residual = p[:, 2] - a @ coef
    assert 0.7 * CFG.depth_noise < residual.std() < 1.5 * CFG.depth_noise
    assert np.abs(residual).max() < 6 * CFG.depth_noise
    assert np.abs(coef[:2]).max() < np.tan(np.deg2rad(CFG.max_table_tilt_deg)) + 1e-3
    # every valid point projects back onto its own pixel; invalid pixels are exactly zero
    v, u = np.nonzero(valid)
    x, y, z = xyz[valid].T
    (fx, _, cx), (_, fy, cy), _ = cam.K
    assert np.abs(fx * x / z + cx - u).max() < 0.5
    assert np.abs(fy * y / z + cy - v).max() < 0.5
    assert not frame.xyz[~valid].any()


def test_rejects_bad_input() -> None:
    with pytest.raises(CmdrError, match="unknown defect"):
        render_part(np.random.default_rng(0), CFG, "scratch")
    with pytest.raises(CmdrError, match="field_of_view"):
        CellConfig(field_of_view=0.15)
    with pytest.raises(CmdrError, match="block_height"):
        CellConfig(block_height=(0.05, 0.03))


def test_generate_dataset_layout(tmp_path: Path) -> None:
    cfg = CellConfig(image_size=96)
    defects = ("tear", "stain")
    folder = generate_dataset(tmp_path / "a", n_train=3, n_val=2, n_test_good=2, n_test_per_defect=2,
                              cfg=cfg, seed=4, defects=defects)
    assert folder == tmp_path / "a" / "foam_block"
    expected = {("train", "good"): 3, ("validation", "good"): 2, ("test", "good"): 2,
                ("test", "tear"): 2, ("test", "stain"): 2}
    dirs = {p.relative_to(folder).parts[:2] for p in folder.glob("*/*") if p.is_dir()}
    assert dirs == set(expected)
    for (split, kind), n in expected.items():
        subs = ("rgb", "xyz", "gt") if split == "test" else ("rgb", "xyz")
        assert sorted(p.name for p in (folder / split / kind).iterdir()) == sorted(subs)
        names = [f"{i:03d}" for i in range(n)]
        assert sorted(p.stem for p in (folder / split / kind / "rgb").glob("*.png")) == names
        assert sorted(p.stem for p in (folder / split / kind / "xyz").glob("*.tiff")) == names
        for name in names:
            xyz = tifffile.imread(folder / split / kind / "xyz" / f"{name}.tiff")
            assert xyz.dtype == np.float32 and xyz.shape == (96, 96, 3)
            bgr = cv2.imread(str(folder / split / kind / "rgb" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
            assert bgr.dtype == np.uint8 and bgr.shape == (96, 96, 3)
            block = (xyz[..., 2] > 0) & (xyz[..., 2] < 0.43)
            assert bgr[block, 2].mean() > bgr[block, 0].mean() + 20  # written as BGR: red is last on disk
            if split == "test":
                gt = cv2.imread(str(folder / split / kind / "gt" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
                assert gt.dtype == np.uint8 and gt.shape == (96, 96)
                if kind == "good":
                    assert not gt.any()
                else:
                    assert set(np.unique(gt)) == {0, 255 - DEFECT_TYPES.index(kind)}
    assert json.loads((folder / "class_ids.json").read_text()) == {"0": "good", "255": "tear", "250": "stain"}
    assert class_ids() == {"0": "good", "255": "tear", "254": "burr", "253": "gouge", "252": "missing_chunk",
                           "251": "bump", "250": "stain"}
    calib = json.loads((folder / "calibration" / "camera_parameters.json").read_text())
    assert calib == calibration_dict(cfg.camera())

    # deterministic: a second run with the same seed writes identical data; a sample does not depend
    # on the other counts
    again = generate_dataset(tmp_path / "b", n_train=1, n_val=0, n_test_good=0, n_test_per_defect=0,
                             cfg=cfg, seed=4, defects=())
    np.testing.assert_array_equal(tifffile.imread(again / "train/good/xyz/000.tiff"),
                                  tifffile.imread(folder / "train/good/xyz/000.tiff"))
    with pytest.raises(CmdrError, match="not empty"):
        generate_dataset(tmp_path / "b", n_train=1, n_val=0, n_test_good=0, n_test_per_defect=0, cfg=cfg)
    generate_dataset(tmp_path / "b", n_train=1, n_val=0, n_test_good=0, n_test_per_defect=0, cfg=cfg,
                     seed=5, defects=(), overwrite=True)
    assert not np.array_equal(tifffile.imread(again / "train/good/xyz/000.tiff"),
                              tifffile.imread(folder / "train/good/xyz/000.tiff"))


def test_profilometer_cloud() -> None:
    grid = len(np.arange(-0.11, 0.11, CFG.profile_line_spacing)) * len(np.arange(-0.11, 0.11, CFG.profile_point_spacing))
    good, good_labels = render_profilometer_cloud(np.random.default_rng(2), CFG, None)
    assert good.dtype == np.float32 and good.ndim == 2 and good.shape[1] == 3
    assert good_labels.dtype == bool and good_labels.shape == (len(good),) and not good_labels.any()
    assert 20_000 < len(good) < 0.97 * grid  # occlusion behind the block and random loss
    assert np.abs(good[:, :2]).max() <= 0.11 + 1e-6
    on_block = good[:, 2] > 0.02
    assert 0.05 < on_block.mean() < 0.4
    assert 0.029 < np.median(good[on_block, 2]) < 0.051  # the block height range
    assert (good[:, 2] < -0.0015).sum() > 0  # a few outliers below the belt
    np.testing.assert_array_equal(good, render_profilometer_cloud(np.random.default_rng(2), CFG, None)[0])

    for defect in GEOMETRIC_DEFECTS:
        points, labels = render_profilometer_cloud(np.random.default_rng(2), CFG, defect)
        assert 50 < labels.sum() < 0.05 * len(points), defect
        assert (points[labels, 2] > 0).mean() > 0.9  # on the block (the missing chunk's floor included)
    bump, bump_labels = render_profilometer_cloud(np.random.default_rng(2), CFG, "bump")
    assert np.median(bump[bump_labels, 2]) > np.median(bump[bump[:, 2] > 0.02, 2])  # raised above the top
    # a stain has labels but leaves the cloud bit-identical: a profilometer cannot see it
    stain, stain_labels = render_profilometer_cloud(np.random.default_rng(2), CFG, "stain")
    assert stain_labels.sum() > 50
    np.testing.assert_array_equal(stain, good)


def test_generate_profilometer_dataset(tmp_path: Path) -> None:
    from cmdr_ros.geometry import rasterize_on_plane

    folder = generate_profilometer_dataset(tmp_path, "prof", n_train=2, n_val=1, n_test_good=1, n_test_per_defect=1,
                                           resolution=0.002, seed=5, defects=("tear", "bump"))
    count = {s: len(list((folder / s).glob("*/xyz/*.tiff"))) for s in ("train", "validation", "test")}
    assert count == {"train": 2, "validation": 1, "test": 3}
    assert not list(folder.glob("*/*/rgb")) and not (folder / "train" / "good" / "gt").exists()
    assert json.loads((folder / "class_ids.json").read_text()) == {"0": "good", "255": "tear", "251": "bump"}
    for kind, gt_value in (("good", 0), ("tear", 255), ("bump", 251)):
        points = np.load(folder / "test" / kind / "points" / "000.npy")
        # the raw cloud is the sample's render (seeded by seed, split 2, kind, index) ...
        key = [5, 2, (("good",) + DEFECT_TYPES).index(kind), 0]
        expected, labels = render_profilometer_cloud(np.random.default_rng(key), CFG, None if kind == "good" else kind)
        np.testing.assert_array_equal(points, expected)
        # ... and the stored map is exactly what the node's rasterization of it gives
        raster = rasterize_on_plane(points, resolution=0.002)
        xyz = tifffile.imread(folder / "test" / kind / "xyz" / "000.tiff")
        assert xyz.dtype == np.float32
        np.testing.assert_array_equal(xyz, raster.xyz_map)
        gt = cv2.imread(str(folder / "test" / kind / "gt" / "000.png"), cv2.IMREAD_UNCHANGED)
        assert gt.shape == raster.shape and set(np.unique(gt)) <= {0, gt_value}
        defective = np.zeros(raster.shape, bool).ravel()
        defective[raster.cell_of_point[labels]] = True
        np.testing.assert_array_equal(gt.ravel() > 0, defective)  # any defect point marks its cell
        assert (gt == 0).all() if kind == "good" else 5 < (gt > 0).sum() < 0.05 * gt.size
        assert (xyz[gt > 0, 2] > 0).all()  # a defective cell holds a point


def _montage_row(frame: PartFrame) -> np.ndarray:
    z, valid = frame.xyz[..., 2], frame.valid
    zz = np.where(valid, z, z[valid].max())
    depth = cv2.applyColorMap(((zz.max() - zz) / (zz.max() - zz.min()) * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)
    depth[~valid] = 0
    rgb = cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR)
    overlay = rgb.copy()
    overlay[frame.mask] = (0.4 * overlay[frame.mask] + (0, 0, 150)).astype(np.uint8)
    row = np.concatenate([rgb, depth, overlay, np.repeat(frame.mask[..., None] * np.uint8(255), 3, -1)], 1)
    cv2.putText(row, frame.defect, (4, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 255), 2)
    return row


def test_montage(twins, tmp_path: Path) -> None:
    """rgb | depth | mask overlay | mask for a good part and each defect (set CMDR_SYNTHETIC_MONTAGE to keep it)."""
    frames = [_render(SEEDS[0], None)] + [twins[d, SEEDS[0]][0] for d in DEFECT_TYPES]
    path = Path(os.environ.get("CMDR_SYNTHETIC_MONTAGE", tmp_path / "montage.png"))
    assert cv2.imwrite(str(path), np.concatenate([_montage_row(f) for f in frames], 0))
    assert cv2.imread(str(path)).shape == (256 * len(frames), 4 * 256, 3)
