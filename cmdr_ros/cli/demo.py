"""``cmdr demo``: the whole product on a simulated cutting cell, with no hardware and no downloads.

1. renders a simulated cell (foam blocks, good and with cut defects, exact masks, a real CameraInfo);
2. trains a ``lite`` model on the good parts and calibrates its threshold;
3. writes the test parts as a rosbag2 (mcap) with Image, PointCloud2 and CameraInfo at a real frame rate;
4. starts the real inspection node in its own process;
5. replays the bag through DDS into it and records what it publishes;
6. prints a per-part table, I-AUROC, reject precision/recall, latency p50/p95, and writes heatmap PNGs and a
   one-page HTML report;
7. runs the learning loop on that cell (``demo_loop``): a new material it rejects, the rejects reviewed, a model
   retrained on what was confirmed and promoted into the running node, the false reject rate before and after;
8. repeats 2-6 for a 3D-only laser profilometer: unorganized clouds, rasterized for training exactly as a
   second node in mode 3d rasterizes them (``raster_resolution``), replayed from their own bag.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import time
from pathlib import Path

from cmdr_ros.cli.demo_cell import replay_through_node, report
from cmdr_ros.cli.demo_loop import run_loop
from cmdr_ros.model.training import train_model
from cmdr_ros.config import preset
from cmdr_ros.data.synthetic import generate_dataset, generate_profilometer_dataset, generate_scan_dataset
from cmdr_ros.run_report import write_html
from cmdr_ros.ros.dds_profile import use_large_message_profile
from cmdr_ros.ros.topics import PROFILER, RECORDED

RATE_HZ = 2.0  # parts per second on the simulated belt
PROFILER_RATE_HZ = 1.0  # profilometer scans per second (the 3D-only pass)
SCAN_RATE_HZ = 0.25  # the chunk pipeline (lite3d) takes ~2.4 s per 51k-point scan on 2 CPU cores
PROFILER_RESOLUTION = 0.001  # m: raster cell of the profilometer clouds, in training and in the node alike


def bag_from_profiles(data: Path, out: Path, rate: float = PROFILER_RATE_HZ) -> int:
    """Write the test parts' raw profilometer clouds (``test/<defect>/points/NNN.npy``) as a bag: per part an
    unorganized PointCloud2 on /profiler/points (frame ``profiler``) and its /cmdr/sample name at the same stamp,
    ``rate`` parts per second. Returns the number of parts."""
    import numpy as np
    from std_msgs.msg import String

    from cmdr_ros.ros.bags import BagWriter
    from cmdr_ros.ros.conversions import make_header, xyz_to_pointcloud2
    from cmdr_ros.ros.stamps import paced_stamps

    files = sorted((data / "test").glob("*/points/*.npy"))
    with BagWriter(out, "mcap", {"cmdr_ros.class": data.name, "cmdr_ros.split": "test"}) as bag:
        for f, stamp in zip(files, paced_stamps(len(files), rate)):
            bag.write(PROFILER["points"], xyz_to_pointcloud2(np.load(f), make_header(stamp, "profiler")), stamp)
            bag.write(RECORDED["sample"], String(data=f"{f.parent.parent.name}/{f.stem}"), stamp)
    return len(files)


def run(args: argparse.Namespace) -> int:
    from cmdr_ros.ros.bags import bag_from_dataset

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 200)))
    # Fast DDS: frames (a 256x256 cloud is ~800 KB) whole through shared memory, not fragmented UDP
    print(use_large_message_profile())
    t0 = time.perf_counter()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    report_dir = out / "report"
    (report_dir / "heatmaps").mkdir(parents=True, exist_ok=True)
    progress = not args.quiet
    print(f"[1/8] rendering the simulated cutting cell in {out / 'data'}")
    data = generate_dataset(out / "data", n_train=30, n_val=6, n_test_good=12, n_test_per_defect=4, seed=args.seed,
                            overwrite=True)
    print(f"[2/8] training a lite {args.mode} model on the good parts")
    s = _train(data, args.mode, out / "model.ckpt", args, progress)
    bag = out / "cell_bag"
    print(f"[3/8] recording the {len(list((data / 'test').glob('*/rgb/*.png')))} test parts as a rosbag2 (mcap): {bag}")
    shutil.rmtree(bag, ignore_errors=True)
    bag_from_dataset(data, bag, storage="mcap", split="test", rate=RATE_HZ)
    print(f"[4/8] starting the inspection node; [5/8] replaying the bag into it over DDS at {RATE_HZ:g} parts/s")
    results, samples = replay_through_node(bag, Path(s["checkpoint"]), out, args.device)
    print("[6/8] report")
    rows, summary = report(results, samples, report_dir, "", s["threshold"])

    print("[7/8] the learning loop: a new material, its rejects reviewed, a model retrained and promoted")
    loop_sections = run_loop(out, data, s, args,
                             lambda d, ckpt: _train(d, args.mode, ckpt, args, progress))

    print("[8/8] 3D-only: a laser profilometer scans the parts (unorganized clouds, no camera)")
    p_data = generate_profilometer_dataset(out / "data", n_train=20, n_val=4, n_test_good=6, n_test_per_defect=2,
                                           resolution=PROFILER_RESOLUTION, seed=args.seed, overwrite=True)
    p_s = _train(p_data, "3d", out / "model_3d.ckpt", args, progress)
    p_bag = out / "profiler_bag"
    shutil.rmtree(p_bag, ignore_errors=True)
    n = bag_from_profiles(p_data, p_bag)
    print(f"      {n} test scans in {p_bag}; a second node (mode 3d, raster {PROFILER_RESOLUTION * 1000:g} mm) "
          f"gets them over DDS at {PROFILER_RATE_HZ:g} parts/s")
    p_results, p_samples = replay_through_node(p_bag, Path(p_s["checkpoint"]), out, args.device,
                                               remaps=PROFILER, log_name="node_3d.log",
                                               params={"mode": "3d", "raster_resolution": PROFILER_RESOLUTION})
    p_rows, p_summary = report(p_results, p_samples, report_dir, "3d_", p_s["threshold"])

    print("      the same scans through the paper's cutting-cell pipeline (lite3d: 9216-point chunks, no raster)")
    c_data = generate_scan_dataset(out / "data", n_train=20, n_val=6, n_test_good=6, n_test_per_defect=2,
                                   seed=args.seed, overwrite=True)
    c_s = _train(c_data, "3d", out / "model_lite3d.ckpt", args, progress, preset_name="lite3d")
    c_bag = out / "scan_bag"
    shutil.rmtree(c_bag, ignore_errors=True)
    c_n = bag_from_profiles(c_data, c_bag, rate=SCAN_RATE_HZ)
    print(f"      {c_n} test scans in {c_bag}; a third node (mode 3d, the lite3d model) gets them over DDS at "
          f"{SCAN_RATE_HZ:g} parts/s")
    c_results, c_samples = replay_through_node(c_bag, Path(c_s["checkpoint"]), out, args.device, timeout=180.0,
                                               remaps=PROFILER, log_name="node_lite3d.log",
                                               params={"mode": "3d", "time_budget": 10.0})
    c_rows, c_summary = report(c_results, c_samples, report_dir, "lite3d_", c_s["threshold"])
    html = write_html(report_dir / "index.html", "cmdr_ros demo: simulated cutting cell", [
        (f"Camera + structured light ({args.mode})", summary, rows,
         f"lite {args.mode} model {s['model_id']} trained on {s['train_samples']} good parts; parts replayed "
         f"from {bag.name} through DDS into the inspection node."),
        *loop_sections,
        ("3D-only laser profilometer, rasterized", p_summary, p_rows,
         f"lite 3d model {p_s['model_id']} trained on {p_s['train_samples']} rasterized good scans; unorganized "
         f"clouds replayed from {p_bag.name} into a node in mode 3d (stains are invisible to it and not tested)."),
        ("3D-only laser profilometer, the paper's chunk pipeline (lite3d)", c_summary, c_rows,
         f"lite3d model {c_s['model_id']} trained on the {c_s['train_chunks']} chunks of {c_s['train_samples']} good "
         f"scans (the same parts, points in the sensor's order); scans replayed from {c_bag.name} into a node in "
         "mode 3d that scores every point."),
    ])
    print(f"done in {time.perf_counter() - t0:.0f} s. Artefacts:")
    print(f"  simulated cell: {data}, {p_data}, {c_data}")
    print(f"  models:         {s['checkpoint']}, {p_s['checkpoint']}, {c_s['checkpoint']}")
    print(f"  bags:           {bag}, {p_bag}, {c_bag}   (cmdr bag play {bag} / ros2 bag play {bag})")
    print(f"  node logs:      {out / 'node.log'}, {out / 'node_3d.log'}, {out / 'node_lite3d.log'}")
    print(f"  heatmaps:       {report_dir / 'heatmaps'}")
    print(f"  report:         {html}")
    return 0


def _train(data: Path, mode: str, checkpoint: Path, args: argparse.Namespace, progress: bool,
           preset_name: str = "lite") -> dict:
    """Train and calibrate a ``preset_name`` ``mode`` model on ``data`` (``train_model``) and print what it did."""
    config = preset(preset_name, mode)
    if args.epochs is not None:
        config.train.epochs = args.epochs
    s = train_model(data, config, checkpoint, args.device, args.cache_dir, args.no_cache, progress)
    print(f"      {s['train_samples']} good parts, {s['epochs']} epochs in {s['fit_s']:.0f} s; "
          f"threshold {s['threshold']:.3f} from {s['validation_samples']} validation parts")
    return s
