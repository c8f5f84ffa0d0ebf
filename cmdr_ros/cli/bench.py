"""``cmdr bench``: how fast a part is judged.

* ``bench``: latency per stage of the judge path in this process, on synthetic or recorded frames
  (``cmdr_ros.ros.bench.judge_path``);
* ``bench node``: the inspection node as a separate process fed over DDS at a fixed rate: throughput,
  publish -> ~/result latency, fail-safe decisions, memory (``cmdr_ros.ros.bench.node``).

torch and rclpy are imported by the handlers only, so ``cmdr --help`` stays fast.
"""
from __future__ import annotations

import argparse
import json
import os

from cmdr_ros import CmdrError
from cmdr_ros.config import MODES, PRESETS


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``cmdr bench [options]`` and ``cmdr bench node [options]``."""
    p.add_argument("--mode", choices=MODES + ("all",), default="rgbd", help="rgbd (default), 3d, 2d or all")
    p.add_argument("--preset", choices=PRESETS + ("all",), default="lite",
                   help="paper: the paper's architectures with random-init backbones (timing does not depend on "
                        "weights)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto", "onnx", "all"), default="auto",
                   help="auto: CUDA when present; onnx: the heads and scoring exported and run by onnxruntime "
                        "(backbones on the CPU); all: the CPU, onnx, and CUDA when present")
    p.add_argument("--size", type=int, default=400, help="side of the synthetic frames in pixels (default 400)")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="time recorded frames instead: every xyz/*.tiff with its rgb/*.png under DIR (MVTec 3D-AD "
                        "layout), the first 5")
    p.add_argument("--warmup", type=int, default=2, help="frames judged before timing (default 2)")
    p.add_argument("--repeat", type=int, default=10, help="frames timed per stage, and again end to end (default 10)")
    p.add_argument("--threads", type=int, default=_cores(), help="torch CPU threads (default: the cores, %(default)s)")
    p.add_argument("--compare", action="store_true",
                   help="also judge the same frames the plain way (exact DBSCAN, the reference's pooling layout, "
                        "PyTorch for onnx): the speed-up of each run and how much its maps and scores differ")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.set_defaults(func=run_model)

    verbs = p.add_subparsers(dest="bench_verb", metavar="[node]", title="optional sub-verb")
    q = verbs.add_parser("node", help="time the inspection node over DDS: throughput, latency, fail-safes, memory")
    q.add_argument("--checkpoint", default=None,
                   help="model to serve (default: a tiny lite model trained here on synthetic parts of --size)")
    q.add_argument("--mode", choices=MODES, default="rgbd", help="mode of the model trained without --checkpoint")
    q.add_argument("--rate", type=float, default=2.0, help="parts per second (default 2)")
    q.add_argument("--seconds", type=float, default=20.0, help="how long to publish (default 20)")
    q.add_argument("--size", type=int, default=400, help="side of the synthetic frames in pixels (default 400)")
    q.add_argument("--data", default=None, help="recorded frames instead (xyz/*.tiff + rgb/*.png of an MVTec 3D-AD "
                                                "style folder): its first 10, published in turn")
    q.add_argument("--device", default="auto", help="the node's device parameter: auto (default), cpu, cuda, cuda:N")
    q.add_argument("-p", "--param", action="append", default=[], metavar="NAME:=VALUE",
                   help="further node parameter (repeatable), e.g. -p overload:=newest")
    q.add_argument("--no-outputs", action="store_true",
                   help="do not subscribe to ~/heatmap, ~/anomaly_map, ~/anomaly_cloud (the node then skips them)")
    q.add_argument("--publisher-profile", choices=("on", "off"), default="on",
                   help="off: publish the parts with Fast DDS's defaults, as a camera driver started without the "
                        "large-message profile (the node keeps it); default on")
    q.add_argument("--image-transport", choices=("raw", "compressed"), default="raw",
                   help="compressed: publish the image as JPEG sensor_msgs/CompressedImage and run the node with "
                        "input.image_transport:=compressed")
    q.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    q.set_defaults(func=run_node)


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise CmdrError(what)


def run_model(args: argparse.Namespace) -> int:
    _check(args.size >= 64 or args.data is not None, f"--size {args.size}: at least 64 pixels")
    _check(args.warmup >= 0 and args.repeat >= 1, "--warmup must be >= 0 and --repeat >= 1")
    _check(args.threads >= 1, "--threads must be >= 1")
    from cmdr_ros.ros.bench.judge_path import format_table, run_bench  # noqa: PLC0415 - torch only when run

    presets = ["lite", "paper"] if args.preset == "all" else [args.preset]
    modes = ["2d", "3d", "rgbd"] if args.mode == "all" else [args.mode]  # lightest first
    report = run_bench(presets, modes, args.device, args.size, args.data, args.warmup, args.repeat, args.threads,
                       args.compare)
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0


def run_node(args: argparse.Namespace) -> int:
    _check(args.size >= 64, f"--size {args.size}: at least 64 pixels")
    _check(args.rate > 0 and args.seconds > 0, "--rate and --seconds must be > 0")
    _check(all(":=" in p for p in args.param), "-p takes NAME:=VALUE")
    from cmdr_ros.ros.bench.node import format_report, run_node_bench  # noqa: PLC0415 - rclpy only when run

    report = run_node_bench(args.checkpoint, args.mode, args.rate, args.seconds, args.size, args.device,
                            args.param, outputs=not args.no_outputs, data=args.data,
                            publisher_profile=args.publisher_profile == "on", image_transport=args.image_transport)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
