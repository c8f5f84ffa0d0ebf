"""`cmdr` end to end: train + eval on the real MVTec 3D-AD subset (lite preset), predict, calibrate, errors."""
import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from cli_harness import one_line_error as _err
from cmdr_ros.cli.main import main

pytestmark = pytest.mark.slow


def run_cmdr(*args, cache=None):
    """Run the CLI in a subprocess (as a user would) and return (rc, stdout, stderr)."""
    env_args = ["--cache-dir", str(cache)] if cache else []
    verb, rest = args[0], list(args[1:])
    proc = subprocess.run([sys.executable, "-m", "cmdr_ros.cli.main", verb, *rest, *env_args],
                          capture_output=True, text=True, timeout=900)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def trained_3d(cable_gland_dir, tmp_path_factory, preprocess_cache):
    out = tmp_path_factory.mktemp("m3d") / "model.ckpt"
    rc, so, se = run_cmdr("train", "--data", str(cable_gland_dir), "--mode", "3d", "--preset", "lite",
                          "--epochs", "3", "--out", str(out), "--quiet", cache=preprocess_cache)
    assert rc == 0, se
    assert "threshold" in so and out.is_file()
    return out


def test_train_and_eval_3d_on_real_data(trained_3d, cable_gland_dir, tmp_path, preprocess_cache):
    rc, so, se = run_cmdr("eval", "--data", str(cable_gland_dir), "--checkpoint", str(trained_3d),
                          "--out", str(tmp_path), "--quiet", cache=preprocess_cache)
    assert rc == 0, se
    rep = json.loads((tmp_path / "metrics.json").read_text())
    m = rep["classes"]["cable_gland"]
    for k in ("i_auroc", "p_auroc", "aupro@0.3", "aupro@0.1", "aupro@0.05", "aupro@0.01"):
        assert 0.0 <= m[k] <= 1.0 and k in rep["mean"]
    assert set(m["defects"]) == {"bent", "cut", "hole", "thread"}
    assert m["n_good"] == 3 and m["n_defect"] == 8
    maps = sorted((tmp_path / "anomaly_maps" / "cable_gland" / "test").glob("*/*.tiff"))
    assert len(maps) == 11
    amap = tifffile.imread(maps[0])
    assert amap.shape == (400, 400) and amap.dtype == np.float32
    assert len(list((tmp_path / "overlays" / "cable_gland").glob("*.png"))) == 11
    assert (tmp_path / "roc.png").stat().st_size > 0 and (tmp_path / "pro_curve.png").stat().st_size > 0
    rows = (tmp_path / "scores.csv").read_text().splitlines()
    assert len(rows) == 12 and rows[0].startswith("class,defect,id,label,score,reject")
    assert "i_auroc" in so and "cable_gland" in so


def test_eval_at_full_resolution_scores_the_written_maps_against_the_original_masks(trained_3d, cable_gland_dir,
                                                                                    tmp_path, preprocess_cache):
    """--resolution full: the pixel metrics are those of the full-size TIFFs it writes (what MVTec's evaluator
    reads) against the dataset's own masks, not of the model grid."""
    from sklearn.metrics import roc_auc_score

    from cmdr_ros.data.mvtec3d import MVTec3DClass, load_mask

    rc, so, se = run_cmdr("eval", "--data", str(cable_gland_dir), "--checkpoint", str(trained_3d), "--out",
                          str(tmp_path), "--quiet", "--resolution", "full", cache=preprocess_cache)
    assert rc == 0, se
    rep = json.loads((tmp_path / "metrics.json").read_text())
    assert rep["resolution"] == "full"
    maps, masks = [], []
    for s in MVTec3DClass(cable_gland_dir).samples("test"):
        maps.append(tifffile.imread(tmp_path / "anomaly_maps" / "cable_gland" / "test" / s.defect / f"{s.sample_id}.tiff"))
        masks.append(load_mask(s.gt_path) if s.gt_path is not None else np.zeros(maps[-1].shape, bool))
    assert maps[0].shape == masks[0].shape == (400, 400)
    p_auroc = roc_auc_score(np.concatenate([m.ravel() for m in masks]), np.concatenate([m.ravel() for m in maps]))
    assert rep["classes"]["cable_gland"]["p_auroc"] == pytest.approx(p_auroc, abs=1e-9)
    assert 0 <= rep["classes"]["cable_gland"]["aupro@0.3"] <= 1


def test_train_and_eval_rgbd_weights_free(cable_gland_dir, tmp_path, preprocess_cache):
    ckpt = tmp_path / "rgbd.ckpt"
    rc, so, se = run_cmdr("train", "--data", str(cable_gland_dir), "--mode", "rgbd", "--preset", "lite",
                          "--epochs", "2", "--out", str(ckpt), "--quiet", cache=preprocess_cache)
    assert rc == 0, se
    rc, so, se = run_cmdr("eval", "--data", str(cable_gland_dir), "--checkpoint", str(ckpt),
                          "--out", str(tmp_path / "rep"), "--quiet", "--no-images", cache=preprocess_cache)
    assert rc == 0, se
    rep = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert rep["mode"] == "rgbd" and 0 <= rep["mean"]["i_auroc"] <= 1


def test_predict_and_calibrate(trained_3d, cable_gland_dir, tmp_path, preprocess_cache):
    xyz = cable_gland_dir / "test" / "cut" / "xyz" / "000.tiff"
    rc, so, se = run_cmdr("predict", "--checkpoint", str(trained_3d), "--xyz", str(xyz), "--out", str(tmp_path))
    assert rc == 0, se
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["reject"] == (res["score"] >= res["threshold"])
    assert tifffile.imread(tmp_path / "anomaly_map.tiff").shape == (400, 400)
    assert (tmp_path / "overlay.png").is_file()
    new = tmp_path / "recal.ckpt"
    rc, so, se = run_cmdr("calibrate", "--data", str(cable_gland_dir), "--checkpoint", str(trained_3d),
                          "--sigma", "0", "--out", str(new), "--quiet", cache=preprocess_cache)
    assert rc == 0, se
    assert "threshold" in so and new.is_file()


def test_bad_inputs_are_one_line_errors(capsys, tmp_path, trained_3d, cable_gland_dir):
    assert "not found" in _err(capsys, ["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "m.ckpt")])
    assert "checkpoint not found" in _err(capsys, ["eval", "--data", str(cable_gland_dir), "--checkpoint",
                                                   str(tmp_path / "missing.ckpt"), "--out", str(tmp_path)])
    bad = tmp_path / "flat.tiff"
    tifffile.imwrite(bad, np.zeros((20, 20), np.float32))
    line = _err(capsys, ["predict", "--checkpoint", str(trained_3d), "--xyz", str(bad), "--out", str(tmp_path)])
    assert str(bad) in line
    # judgeable files of unjudgeable parts: the fail-safe decision, exit 3, one line saying why
    for name, value, kind in (("zero", 0.0, "degraded"), ("huge", 1e30, "implausible")):
        path = tmp_path / f"{name}.tiff"
        tifffile.imwrite(path, np.full((40, 40, 3), value, np.float32))
        assert main(["predict", "--checkpoint", str(trained_3d), "--xyz", str(path), "--out", str(tmp_path)]) == 3
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"cmdr: not judged ({kind})") and "REJECT" in err and "\n" not in err, err
        res = json.loads((tmp_path / "result.json").read_text())
        assert (res["decision"], res["judged"], res["error"]) == ("reject", False, kind)
    png = tmp_path / "notanimage.png"
    png.write_text("hello")
    line = _err(capsys, ["predict", "--checkpoint", str(trained_3d), "--xyz", str(png), "--out", str(tmp_path)])
    assert str(png) in line
    line = _err(capsys, ["predict", "--checkpoint", str(trained_3d), "--rgb", str(png), "--out", str(tmp_path)])
    assert "needs --xyz" in line
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("grdi: 3\n")
    assert "unknown model config key" in _err(capsys, ["train", "--data", str(cable_gland_dir), "--config", str(cfg),
                                                       "--out", str(tmp_path / "m.ckpt")])


def test_cmdr_train_takes_the_mode_of_its_config_file_unless_given(tmp_path):
    """`cmdr train --config f.yaml` with `mode: 3d` in the file trains 3d (--mode used to override it silently)."""
    from cmdr_ros.cli.main import build_parser
    from cmdr_ros.cli.train import build_config

    cfg = tmp_path / "cell.yaml"
    cfg.write_text("mode: 3d\ngrid: 32\n")
    parser = build_parser()
    base = ["train", "--data", "d", "--out", "m.ckpt", "--preset", "lite"]
    assert build_config(parser.parse_args(base + ["--config", str(cfg)])).mode == "3d"
    given = build_config(parser.parse_args(base + ["--config", str(cfg), "--mode", "2d"]))
    assert (given.mode, given.grid) == ("2d", 32)
    assert build_config(parser.parse_args(base)).mode == "rgbd"
    # the lite step cap: kept, set, or lifted with 0
    assert build_config(parser.parse_args(base)).train.max_steps == 6000
    assert build_config(parser.parse_args(base + ["--max-steps", "900"])).train.max_steps == 900
    assert build_config(parser.parse_args(base + ["--max-steps", "0"])).train.max_steps is None
