"""``cmdr bench``: the per-stage report of the judge path and the node benchmark, on small frames.

Only the presence and sanity of the figures is checked, never their values (the machine may be busy).
"""
from __future__ import annotations

import json
import math

from cmdr_ros.cli.main import main
from cmdr_ros.config import preset
from cmdr_ros.ros.bench.judge_path import STAGES, build_detector
from domains import new_domain


def _json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_bench_reports_every_stage(capsys):
    report = _json(capsys, ["bench", "--preset", "lite", "--mode", "rgbd", "--size", "64", "--repeat", "2",
                            "--warmup", "1", "--device", "cpu", "--threads", "1", "--json"])
    assert report["threads"] == 1 and report["repeat"] == 2
    (run,) = report["runs"]
    assert (run["preset"], run["mode"], run["device"], run["input"]) == ("lite", "rgbd", "cpu", "64x64")
    assert run["outcomes"] == {"judged": 2}
    assert set(run["stages"]) == set(STAGES)
    for stage, t in [*run["stages"].items(), ("total", run["stages_total"]), ("end to end", run["end_to_end"])]:
        assert all(math.isfinite(v) and v > 0 for v in (t["median_ms"], t["p95_ms"])), (stage, t)
    assert run["end_to_end"]["frames_per_s"] > 0
    assert run["memory"]["peak_rss_mb"] > 0 and run["memory"]["cuda_max_allocated_mb"] is None


def test_bench_table_names_the_stages(capsys):
    assert main(["bench", "--mode", "2d", "--size", "64", "--repeat", "1", "--warmup", "0", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "lite 2d cpu" in out and "frames/s" in out and "random-init" in out
    assert all(stage in out for stage in STAGES)


def test_bench_times_a_scan_preset_on_profilometer_scans(capsys):
    report = _json(capsys, ["bench", "--preset", "lite3d", "--mode", "3d", "--repeat", "1", "--warmup", "0",
                            "--device", "cpu", "--json"])
    (run,) = report["runs"]
    assert "profilometer scans" in report["frames"] and run["input"].endswith(" points")
    assert run["outcomes"] == {"judged": 1}
    # the scan's own stages: decoding its points, cutting the chunks, FPFH per chunk, heads, stitching, the messages
    assert {"decode", "prepare", "backbone_3d", "heads", "fusion", "outputs"} <= set(run["stages"])
    assert "background" not in run["stages"] and "backbone_2d" not in run["stages"]
    bank = build_detector("lite3d", "3d", "cpu").memory_bank  # the preset's memory bank is timed with it
    assert bank["3d"].shape == (preset("lite3d", "3d").memory_bank, 66)


def test_bench_compare_runs_the_plain_path_beside_the_fast_one(capsys):
    report = _json(capsys, ["bench", "--preset", "lite", "--mode", "3d", "--size", "96", "--repeat", "2",
                            "--warmup", "0", "--device", "cpu", "--compare", "--json"])
    fast, plain = report["runs"]
    assert (fast["plain"], plain["plain"]) == (False, True) and "versus_plain" not in plain
    v = fast["versus_plain"]
    assert v["frames"] == 2 and v["judged_one_way_only"] == 0 and v["speed_up"] > 0
    # exact DBSCAN and its grid version keep the same foreground; the pooling layouts give the same features
    assert v["min_foreground_iou"] >= 0.99 and v["max_map_rel_diff"] <= 1e-4 and v["max_score_rel_diff"] <= 1e-4
    assert any("exact DBSCAN" in n for n in report["notes"])


def test_bench_refuses_bad_sizes(capsys):
    assert main(["bench", "--size", "32"]) == 2
    assert "at least 64" in capsys.readouterr().err


def test_bench_node_answers_every_part(capsys, monkeypatch):
    monkeypatch.setenv("ROS_DOMAIN_ID", str(new_domain()))  # this test's own domain
    r = _json(capsys, ["bench", "node", "--rate", "2", "--seconds", "5", "--size", "64", "--device", "cpu", "--json"])
    assert r["published"] == 10 and r["results"] == 10 and r["missing"] == 0
    assert r["judged"] + sum(r["not_judged"].values()) == 10
    assert set(r["outputs_received"]) <= {"heatmap", "anomaly_map", "anomaly_cloud"}
    for key in ("latency_ms", "node_latency_ms"):
        assert set(r[key]) == {"p50", "p95", "p99", "max"} and all(v >= 0 for v in r[key].values()), key
    assert r["throughput_hz"] > 0 and r["node_exit_code"] == 0
    assert all(r["node_rss_mb"][k] > 0 for k in ("start", "end", "peak"))
    assert r["source"] == "64x64 synthetic parts" and r["dds"]["profile"].startswith("Fast DDS profile: ")


def test_bench_node_plays_recorded_frames(capsys, monkeypatch, tmp_path):
    from cmdr_ros.data.synthetic import CellConfig, generate_dataset

    data = generate_dataset(tmp_path / "cell", "block", n_train=0, n_val=0, n_test_good=2, n_test_per_defect=0,
                            cfg=CellConfig(image_size=72))
    monkeypatch.setenv("ROS_DOMAIN_ID", str(new_domain()))
    # as a camera driver the node does not start: Fast DDS defaults on the publisher, a JPEG image
    r = _json(capsys, ["bench", "node", "--data", str(data), "--rate", "4", "--seconds", "1", "--size", "64",
                       "--device", "cpu", "--no-outputs", "--publisher-profile", "off", "--image-transport",
                       "compressed", "--json"])
    assert r["source"] == f"{data} (2 frames of 72x72)" and r["outputs_received"] is None
    assert r["published"] == 4 and r["results"] == 4 and r["judged"] + sum(r["not_judged"].values()) == 4
    assert r["image_transport"] == "compressed" and "input.image_transport:=compressed" in r["params"]
    assert r["dds"]["profile"].endswith("publisher: Fast DDS defaults (no profile)")
    assert {"late.image_p95_ms", "late.points_p95_ms"} <= set(r["late_inputs"]), r["late_inputs"]  # node's view
    assert not {"bad_input", "ConversionError"} & set(r["not_judged"]), r["not_judged"]  # the JPEG was decoded
    assert main(["bench", "node", "--data", str(tmp_path / "cell" / "none")]) == 2
    assert "no xyz/*.tiff" in capsys.readouterr().err


def test_openblas_runs_single_threaded_and_torch_keeps_its_cores():
    """cmdr processes limit NumPy/SciPy's OpenBLAS to one thread (its spinning threads slowed torch's next stages)."""
    import torch
    from threadpoolctl import threadpool_info

    from cmdr_ros.threads import single_threaded_blas

    before = torch.get_num_threads()
    single_threaded_blas()
    blas = [i for i in threadpool_info() if i["internal_api"] == "openblas"]
    assert blas and all(i["num_threads"] == 1 for i in blas)
    assert torch.get_num_threads() == before


def test_bench_compressed_image_is_what_compressed_image_transport_sends():
    import numpy as np
    from std_msgs.msg import Header

    from cmdr_ros.ros.bench.node import compressed_image
    from cmdr_ros.ros.conversions import array_to_image, compressed_image_to_rgb

    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[..., 0], rgb[8:24, 8:40, 1] = 200, 120
    msg = compressed_image(array_to_image(rgb, "rgb8", Header(frame_id="camera")))
    assert msg.format == "rgb8; jpeg compressed bgr8" and msg.header.frame_id == "camera"
    back = compressed_image_to_rgb(msg)
    assert back.shape == rgb.shape and np.abs(back.astype(int) - rgb).mean() < 3  # JPEG: nearly, channels in order
