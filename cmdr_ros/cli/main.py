"""``cmdr``: train, evaluate, calibrate and run CMDR-IAD models.

Every user error (missing folder, wrong file, incompatible checkpoint, all-invalid cloud) is printed as
one line ``cmdr: error: ...`` with exit code 2, without a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Callable, Sequence

from cmdr_ros import CmdrError, __version__
from cmdr_ros.config import MODES, PRESETS
from cmdr_ros.threads import single_threaded_blas

Handler = Callable[[argparse.Namespace], int]


def _add_common_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N, or onnx (the "
                                                     "heads from CHECKPOINT.onnx in onnxruntime: cmdr export)")
    p.add_argument("--cache-dir", default=None,
                   help="disk cache of preprocessed clouds (default $CMDR_CACHE_DIR or ~/.cache/cmdr_ros)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the preprocessing cache")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _handler(module: str, name: str) -> Handler:
    """A verb's handler, imported when the verb runs: `cmdr --help` and `cmdr audit` do not load torch."""
    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(f"cmdr_ros.cli.{module}"), name)(args)
    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmdr", description="Train, evaluate, calibrate and run CMDR-IAD models.")
    parser.add_argument("--version", action="version", version=f"cmdr_ros {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("train", help="train a model on DIR/train/good, calibrate on DIR/validation/good")
    p.add_argument("--data", required=True, help="MVTec 3D-AD style class folder (paper3d/lite3d: a class of "
                                                 "unorganized scans, <split>/<defect>/points/NNN.npy|ply|pcd)")
    p.add_argument("--mode", choices=MODES, default=None,
                   help="rgbd | 3d | 2d (default: the --config file's mode, else rgbd; 3d for paper3d/lite3d)")
    p.add_argument("--preset", choices=PRESETS, default="lite",
                   help="lite (weights-free) | paper | paper3d, lite3d (the paper's 3D-only cutting-cell pipeline)")
    p.add_argument("--config", default=None, help="YAML file overriding config fields (see config/*.yaml)")
    p.add_argument("--weights-2d", default=None, help="DINO ViT-B/8 weights file (dino_vitbase8_pretrain.pth)")
    p.add_argument("--weights-3d", default=None, help="Point-MAE weights file (pretrain.pth)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None,
                   help="cap on optimiser steps: training ends with the epoch that reaches it (lite: 6000, which "
                        "shortens classes of more than 150 parts; 0: no cap)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", required=True, help="checkpoint file to write")
    _add_common_model_args(p)
    p.set_defaults(func=_handler("train", "run"))

    p = sub.add_parser("eval", help="evaluate on DIR/test/*: metrics.json, anomaly maps, overlays, curves")
    p.add_argument("--data", required=True, help="MVTec 3D-AD style class folder (or of scans: a chunks model)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--weights-2d", default=None)
    p.add_argument("--weights-3d", default=None)
    p.add_argument("--no-images", action="store_true", help="skip TIFF maps and overlay PNGs")
    p.add_argument("--resolution", choices=("model", "full"), default="model",
                   help="where the pixel metrics are computed: model (the map grid, fast; default) or full (each "
                        "image's own resolution against its original mask: the official MVTec 3D-AD procedure)")
    _add_common_model_args(p)
    p.set_defaults(func=_handler("evaluate", "run"))

    p = sub.add_parser("predict", help="judge one sample as the node would; write its heatmap (exit 3: not judged)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--rgb", default=None, help="RGB image (PNG/JPG)")
    p.add_argument("--xyz", default=None, help="organized point cloud TIFF (HxWx3, metres, invalid = 0)")
    p.add_argument("--scan", default=None, help="unorganized scan, Nx3 in the sensor's order (.npy/.ply/.pcd), for a "
                                                "paper3d/lite3d model: writes point_scores.npy")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--params-file", default=None, metavar="YAML",
                   help="the node's parameters file: judge with its on_error, min_coverage, min_valid_ratio, "
                        "max_range and threshold")
    p.add_argument("--threshold", type=float, default=None, help="reject threshold (default: the checkpoint's)")
    p.add_argument("--weights-2d", default=None)
    p.add_argument("--weights-3d", default=None)
    _add_common_model_args(p)
    p.set_defaults(func=_handler("predict", "run_predict"))

    p = sub.add_parser("calibrate", help="re-derive the reject threshold on DIR/validation/good")
    p.add_argument("--data", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--sigma", type=float, default=None, help="threshold = max(max score, mean + sigma*std)")
    p.add_argument("--out", default=None, help="write the updated checkpoint here (default: in place)")
    p.add_argument("--weights-2d", default=None)
    p.add_argument("--weights-3d", default=None)
    _add_common_model_args(p)
    p.set_defaults(func=_handler("predict", "run_calibrate"))

    p = sub.add_parser("node", help="run the inspection node without `ros2 launch` (same parameters)")
    p.add_argument("--params-file", default=None, help="ROS parameters YAML (e.g. config/inspection.yaml)")
    p.add_argument("--checkpoint", default=None, help="shorthand for -p checkpoint:=FILE")
    p.add_argument("--mode", choices=("auto",) + MODES, default=None, help="shorthand for -p mode:=MODE")
    p.add_argument("--namespace", default=None, help="node namespace (remaps every relative topic)")
    p.add_argument("ros_args", nargs=argparse.REMAINDER,
                   help="further ROS arguments: `--ros-args -p threshold:=3 -r image:=/cam/image ...` (or after --)")
    p.set_defaults(func=_run_node)

    p = sub.add_parser("demo", help="generate a simulated cutting cell, train a lite model, evaluate it")
    p.add_argument("--out", default="demo_out", help="working folder for data, model and report")
    p.add_argument("--mode", choices=MODES, default="rgbd")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    _add_common_model_args(p)
    p.set_defaults(func=_handler("demo", "run"))

    from cmdr_ros.cli import bag  # noqa: PLC0415 - its handlers import rclpy only when run
    p = sub.add_parser("bag", help="rosbag2 tools: dataset -> bag, play a bag without ros2, evaluate a bag offline")
    bag.add_arguments(p)

    from cmdr_ros.cli import audit  # noqa: PLC0415 - psycopg is imported only when a postgresql:// store is read
    p = sub.add_parser("audit", help="read the node's audit store: export the decisions (CSV/JSON), summarise them")
    audit.add_arguments(p)

    from cmdr_ros.cli import review  # noqa: PLC0415 - the web stack is imported only when a sub-verb runs
    p = sub.add_parser("review", help="the review station: a web page on the audit store (decisions, parts, labels, "
                                      "dashboard), its accounts, its database grants")
    review.add_arguments(p)

    from cmdr_ros.cli import dataset  # noqa: PLC0415 - its handler imports torch only when run
    p = sub.add_parser("dataset", help="data sets from what the cells recorded: `from-review`, a class folder from "
                                       "the parts reviewers labelled")
    dataset.add_arguments(p)

    from cmdr_ros.cli import promote  # noqa: PLC0415 - its handler imports torch, the store, rclpy only when run
    p = sub.add_parser("promote", help="judge a new model against the current one on the same labelled parts; refuse "
                                       "a worse one (exit 1), else put it in service (--node) and record it (--db)")
    promote.add_arguments(p)
    _add_common_model_args(p)
    p.set_defaults(func=promote.run)

    from cmdr_ros.cli import weights  # noqa: PLC0415 - its handlers import torch only when run
    p = sub.add_parser("weights", help="the paper's pretrained backbones: fetch them from the official URLs, "
                                       "check files")
    weights.add_arguments(p)

    from cmdr_ros.cli import export  # noqa: PLC0415 - its handler imports torch only when run
    p = sub.add_parser("export", help="a trained model's heads and scoring as ONNX, for --device onnx / the node")
    export.add_arguments(p)

    p = sub.add_parser("dds-profile", help="print the path of the Fast DDS profile cmdr processes use; for a camera "
                                           "driver: export FASTDDS_DEFAULT_PROFILES_FILE=$(cmdr dds-profile)")
    p.set_defaults(func=_print_dds_profile)

    from cmdr_ros.cli import bench  # noqa: PLC0415 - its handlers import torch and rclpy only when run
    p = sub.add_parser("bench", help="latency of the judge path per stage; `bench node`: the running node over DDS")
    bench.add_arguments(p)
    return parser


def split_ros_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``argv`` cut at the first ``--ros-args``: (what argparse reads, the ROS arguments). argparse cannot read ROS
    arguments itself (``--ros-args`` is no option of its, and ``--params-file`` after it is ROS's, not cmdr's)."""
    argv = list(argv)
    if "--ros-args" not in argv:
        return argv, []
    i = argv.index("--ros-args")
    return argv[:i], argv[i:]


def node_argv(args: argparse.Namespace) -> list[str]:
    """The node's argv: the shorthands as ROS arguments, then what followed ``--`` (``--`` and ``--ros-args``
    dropped: rclpy stops reading ROS arguments at a ``--``)."""
    ros = ["--ros-args"]
    if args.params_file:
        ros += ["--params-file", args.params_file]
    if args.checkpoint:
        ros += ["-p", f"checkpoint:={args.checkpoint}"]
    if args.mode:
        ros += ["-p", f"mode:={args.mode}"]
    if args.namespace:
        ros += ["-r", f"__ns:=/{args.namespace.lstrip('/')}"]
    extra = [a for a in args.ros_args if a not in ("--", "--ros-args")]
    return ["cmdr_node"] + ros + extra


def _print_dds_profile(_: argparse.Namespace) -> int:
    from cmdr_ros.ros.dds_profile import PROFILE  # noqa: PLC0415 - nothing of ROS is imported

    print(PROFILE)
    return 0


def _run_node(args: argparse.Namespace) -> int:
    from cmdr_ros.ros.node.inspection_node import main as node_main  # noqa: PLC0415 - rclpy only for this verb

    return node_main(node_argv(args))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv, ros_args = split_ros_args(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if ros_args:
        if args.verb != "node":
            parser.error(f"--ros-args: only `cmdr node` takes ROS arguments (not `cmdr {args.verb}`)")
        args.ros_args = [*args.ros_args, *ros_args]
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    single_threaded_blas()
    try:
        return int(args.func(args) or 0)
    except CmdrError as e:
        print(f"cmdr: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
        print(f"cmdr: error: {e.filename or ''}: {e.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cmdr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
