"""``cmdr demo``: the whole product on a simulated cutting cell, with no hardware and no downloads.

1. renders a simulated cell (foam blocks, good and with cut defects, exact masks, a real CameraInfo);
2. trains a ``lite`` model on the good parts and calibrates its threshold;
3. writes the test parts as a rosbag2 (mcap) with Image, PointCloud2 and CameraInfo at a real frame rate;
4. starts the real inspection node in its own process;
5. replays the bag through DDS into it and records what it publishes;
6. prints a per-part table, I-AUROC, reject precision/recall, latency p50/p95, and writes heatmap PNGs and a
   one-page HTML report.
"""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2

from cmdr_ros import CmdrError
from cmdr_ros.cli.train import train_model
from cmdr_ros.config import preset
from cmdr_ros.data.synthetic import generate_dataset
from cmdr_ros.report import PartRow, format_rows, format_summary, summarize, write_html

RATE_HZ = 2.0  # parts per second on the simulated belt


def _start_node(checkpoint: Path, device: str, log_path: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cmdr_ros.ros.inspection_node", "--ros-args",
           "-p", f"checkpoint:={checkpoint}", "-p", f"device:={device}", "-p", "worker.queue_size:=8",
           "-r", "image:=/camera/image", "-r", "points:=/camera/points", "-r", "camera_info:=/camera/camera_info"]
    log = open(log_path, "w")  # noqa: SIM115 - lives as long as the node process
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())


def replay_through_node(bag: Path, checkpoint: Path, out: Path, device: str = "auto",
                        timeout: float = 300.0) -> tuple[dict, dict[int, str]]:
    """Start the node, play the bag into it, return (results by stamp, sample names by stamp)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from cmdr_ros.ros.bags import TOPICS, play_bag, read_messages
    from cmdr_ros.ros.recorder import ResultRecorder

    samples = {stamp: msg.data for _, stamp, msg in read_messages(bag, [TOPICS["sample"]])}
    proc = _start_node(checkpoint, device, out / "node.log")
    ctx = rclpy.Context()
    rclpy.init(context=ctx, signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
    node = rclpy.create_node("cmdr_demo", context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    try:
        recorder = ResultRecorder(node)
        spin.start()
        deadline = time.monotonic() + 180
        while node.count_subscribers("/camera/points") == 0:  # the node subscribes once configured and active
            if proc.poll() is not None or time.monotonic() > deadline:
                raise CmdrError(f"the inspection node did not come up; see {out / 'node.log'}")
            time.sleep(0.2)
        played = play_bag(bag, node=node, topics=[TOPICS["image"], TOPICS["points"], TOPICS["info"]], wait=30)
        print(f"      replayed {played} messages at {RATE_HZ:g} parts/s")
        if not recorder.wait_for(set(samples), timeout):
            print(f"      warning: {len(set(samples) - set(recorder.results))} parts got no result in {timeout:.0f} s")
        return dict(recorder.results), samples
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def run(args: argparse.Namespace) -> int:
    from cmdr_ros.ros.bags import bag_from_dataset

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 200)))
    # Fast DDS: large messages (a 256x256 cloud is ~800 KB) over the LARGE_DATA transports, not fragmented UDP
    os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")
    t0 = time.perf_counter()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.quiet
    print(f"[1/6] rendering the simulated cutting cell in {out / 'data'}")
    data = generate_dataset(out / "data", n_train=30, n_val=6, n_test_good=12, n_test_per_defect=4, seed=args.seed,
                            overwrite=True)
    config = preset("lite", args.mode)
    if args.epochs is not None:
        config.train.epochs = args.epochs
    print(f"[2/6] training a lite {args.mode} model on the good parts")
    s = train_model(data, config, out / "model.ckpt", args.device, args.cache_dir, args.no_cache, progress)
    print(f"      {s['train_samples']} good parts, {s['epochs']} epochs in {s['fit_s']:.0f} s; "
          f"threshold {s['threshold']:.3f} from {s['validation_samples']} validation parts")
    bag = out / "cell_bag"
    print(f"[3/6] recording the {len(list((data / 'test').glob('*/rgb/*.png')))} test parts as a rosbag2 (mcap): {bag}")
    bag_from_dataset(data, bag, storage="mcap", split="test", rate=RATE_HZ)
    print("[4/6] starting the inspection node; [5/6] replaying the bag into it over DDS")
    results, samples = replay_through_node(bag, Path(s["checkpoint"]), out, args.device)
    print("[6/6] report")
    heat_dir = out / "report" / "heatmaps"
    heat_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for stamp, name in sorted(samples.items(), key=lambda kv: kv[1]):
        r = results.get(stamp)
        png = ""
        if r is not None and r.heatmap is not None:
            png = f"heatmaps/{name.replace('/', '_')}.png"
            cv2.imwrite(str(out / "report" / png), r.heatmap)
        judged = r is not None and r.judged
        rows.append(PartRow(name, int(not name.startswith("good/")), r.score if judged else float("nan"),
                            bool(r.reject) if r is not None else False,
                            float(r.values.get("latency_ms", "nan")) if judged else float("nan"), png))
    summary = summarize(rows, s["threshold"])
    print(format_rows(rows))
    print(format_summary(summary))
    html = write_html(out / "report" / "index.html", "cmdr_ros demo: simulated cutting cell", summary, rows,
                      notes=[f"lite {args.mode} model {s['model_id']} trained on {s['train_samples']} good parts; "
                             f"parts replayed from {bag.name} through DDS into the inspection node."])
    print(f"done in {time.perf_counter() - t0:.0f} s. Artefacts:")
    print(f"  simulated cell: {data}")
    print(f"  model:          {s['checkpoint']}")
    print(f"  bag:            {bag}   (cmdr bag play {bag} / ros2 bag play {bag})")
    print(f"  node log:       {out / 'node.log'}")
    print(f"  heatmaps:       {heat_dir}")
    print(f"  report:         {html}")
    return 0
