"""MVTec 3D-AD reader/writer: the real cable_gland subset and small hand-made folders."""
import cv2
import numpy as np
import pytest
import tifffile

from cmdr_ros import CmdrError
from cmdr_ros.data.mvtec3d import (MVTec3DClass, load_mask, load_rgb, load_sample, load_xyz,
                                   write_sample)

DEFECTS = ["bent", "cut", "hole", "thread"]


def test_real_subset_listing(cable_gland_dir):
    ds = MVTec3DClass(cable_gland_dir)
    assert ds.name == "cable_gland"
    train, val, test = ds.samples("train"), ds.samples("validation"), ds.samples("test")
    assert len(train) == 15 and len(val) == 3 and len(test) == 11
    for s in train + val:
        assert (s.label, s.defect, s.gt_path) == (0, "good", None)
        assert s.rgb_path.is_file() and s.xyz_path.is_file()
    assert [s.sample_id for s in train] == [f"{i:03d}" for i in range(15)]
    assert [s.defect for s in test] == ["good"] * 3 + [d for d in DEFECTS for _ in range(2)]
    assert [s.label for s in test] == [0] * 3 + [1] * 8
    assert [s.sample_id for s in test[3:5]] == ["000", "001"]
    assert all(s.gt_path is not None and s.gt_path.is_file() for s in test)
    assert all(s.split == "test" and s.class_name == "cable_gland" for s in test)
    assert test[3].xyz_path == cable_gland_dir / "test" / "bent" / "xyz" / "000.tiff"
    params = ds.camera_parameters()
    assert params["camera_type"] == "area_scan_division" and params["focus"] == pytest.approx(0.0103431)


def test_real_subset_loading(cable_gland_dir):
    test = MVTec3DClass(cable_gland_dir).samples("test")
    cut = next(s for s in test if s.defect == "cut")
    rgb, xyz, mask = load_sample(cut)
    assert rgb.shape == (400, 400, 3) and rgb.dtype == np.uint8
    assert xyz.shape == (400, 400, 3) and xyz.dtype == np.float32
    assert mask.shape == (400, 400) and mask.dtype == bool
    assert 0 < mask.sum() < mask.size // 10  # a small defect region
    valid = np.any(xyz != 0, axis=-1)
    assert 0.3 < valid.mean() < 0.9  # the real captures have holes marked 0
    assert np.all((xyz[valid, 2] > 0.5) & (xyz[valid, 2] < 1.0))  # metres from the camera
    # cv2 gives BGR: load_rgb must have swapped it back
    assert np.array_equal(rgb, cv2.imread(str(cut.rgb_path))[:, :, ::-1])
    _, _, good_mask = load_sample(test[0], need_rgb=False, need_xyz=False)
    assert not good_mask.any()
    rgb_none, xyz_only, _ = load_sample(cut, need_rgb=False)
    assert rgb_none is None and np.array_equal(xyz_only, xyz)


def _arrays(h=6, w=8, seed=0):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    xyz = rng.normal(0, 0.1, (h, w, 3)).astype(np.float32)
    mask = rng.random((h, w)) > 0.5
    return rgb, xyz, mask


def test_write_then_read_round_trip(tmp_path):
    root = tmp_path / "widget"
    rgb, xyz, mask = _arrays()
    xyz[0, 0] = np.nan
    written = write_sample(root, "test", "dent", "007", rgb, xyz, mask)
    write_sample(root, "test", "good", "000", *_arrays(seed=1))
    write_sample(root, "train", "good", "000", *_arrays(seed=2)[:2])
    ds = MVTec3DClass(root)
    assert [(s.defect, s.sample_id, s.label) for s in ds.samples("test")] == [("good", "000", 0), ("dent", "007", 1)]
    assert ds.samples("test")[1] == written
    train = ds.samples("train")
    assert train[0].gt_path is None and train[0].class_name == "widget"
    r, x, m = load_sample(written)
    assert np.array_equal(r, rgb) and np.array_equal(m, mask)
    assert np.all(x[0, 0] == 0) and np.array_equal(x[1:], xyz[1:])
    assert cv2.imread(str(written.gt_path), cv2.IMREAD_UNCHANGED).max() == 255
    # the png is stored BGR on disk, like any other tool expects
    assert np.array_equal(cv2.imread(str(written.rgb_path)), rgb[:, :, ::-1])
    assert ds.camera_parameters() is None


def test_rgb_only_dataset(tmp_path):
    root = tmp_path / "flat"
    rgb, _, _ = _arrays()
    s = write_sample(root, "train", "good", "000", rgb, None)
    listed = MVTec3DClass(root).samples("train")
    assert listed == [s] and s.xyz_path is None
    assert load_sample(s, need_xyz=False)[0].shape == (6, 8, 3)
    with pytest.raises(CmdrError, match="no xyz map"):
        load_sample(s)


def test_missing_folders(tmp_path):
    with pytest.raises(CmdrError, match=str(tmp_path / "nope")):
        MVTec3DClass(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CmdrError, match="train/"):
        MVTec3DClass(tmp_path / "empty")
    write_sample(tmp_path / "c", "train", "good", "000", *_arrays())
    with pytest.raises(CmdrError, match="validation"):
        MVTec3DClass(tmp_path / "c").samples("validation")
    with pytest.raises(CmdrError, match="unknown split"):
        MVTec3DClass(tmp_path / "c").samples("val")


def test_missing_partner_file(tmp_path):
    root = tmp_path / "c"
    write_sample(root, "test", "cut", "000", *_arrays())
    write_sample(root, "test", "cut", "001", *_arrays())
    (root / "test" / "cut" / "xyz" / "001.tiff").unlink()
    with pytest.raises(CmdrError, match=r"xyz[/\\]001\.tiff"):
        MVTec3DClass(root).samples("test")
    write_sample(root, "test", "cut", "001", *_arrays())
    (root / "test" / "cut" / "gt" / "000.png").unlink()
    with pytest.raises(CmdrError, match=r"gt[/\\]000\.png"):
        MVTec3DClass(root).samples("test")


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 4), (3, 5, 7)])
def test_xyz_wrong_shape(tmp_path, shape):
    path = tmp_path / "bad.tiff"
    tifffile.imwrite(path, np.zeros(shape, np.float32), photometric="minisblack")
    with pytest.raises(CmdrError, match=rf"{path.name}.*{shape}".replace("(", r"\(").replace(")", r"\)")):
        load_xyz(path)


def test_unreadable_files(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(CmdrError, match="junk.png"):
        load_rgb(junk)
    with pytest.raises(CmdrError, match="junk.png"):
        load_mask(junk)
    with pytest.raises(CmdrError, match="junk.tiff"):
        load_xyz(tmp_path / "junk.tiff")  # absent
    (tmp_path / "junk.tiff").write_bytes(b"II*\x00garbage")
    with pytest.raises(CmdrError, match="junk.tiff"):
        load_xyz(tmp_path / "junk.tiff")


def test_mismatched_sizes(tmp_path):
    root = tmp_path / "c"
    rgb, _, _ = _arrays(6, 8)
    _, xyz, _ = _arrays(6, 9)
    write_sample(root, "train", "good", "000", rgb, None)
    (root / "train" / "good" / "xyz").mkdir()
    tifffile.imwrite(root / "train" / "good" / "xyz" / "000.tiff", xyz, photometric="rgb")
    s = MVTec3DClass(root).samples("train")[0]
    with pytest.raises(CmdrError, match=r"6x8.*6x9"):
        load_sample(s)
    with pytest.raises(CmdrError, match="sizes differ"):
        write_sample(root, "train", "good", "001", rgb, xyz)


def test_image_conversions(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    assert np.array_equal(load_rgb(tmp_path / "g.png"), np.stack([gray] * 3, axis=-1))
    deep = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 257 * 20)  # 257 * k -> k in 8 bits
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    assert np.array_equal(load_rgb(tmp_path / "d.png")[:, :, 1], gray)
    bgra = np.zeros((3, 4, 4), np.uint8)
    bgra[..., 0], bgra[..., 3] = 200, 255  # blue, opaque
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    assert np.array_equal(load_rgb(tmp_path / "a.png")[0, 0], [0, 0, 200])
    m = np.zeros((3, 4), np.uint8)
    m[1, 2] = 254  # MVTec gt stores the defect class id, not 255
    cv2.imwrite(str(tmp_path / "m.png"), m)
    assert np.array_equal(load_mask(tmp_path / "m.png"), m > 0)

