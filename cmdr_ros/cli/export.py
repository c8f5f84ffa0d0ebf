"""``cmdr export CHECKPOINT --format onnx``: a trained model's heads and scoring as an ONNX graph, and a ViT 2D
backbone as a second one beside it (``cmdr_ros.model.export``), checked against PyTorch before they are kept; ``--device onnx`` (CLI) and the node's
``device: onnx`` then run it with onnxruntime."""
from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a trained model (cmdr train)")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="onnx (the only format)")
    p.add_argument("--out", default=None, help="file to write (default: the checkpoint's path with .onnx, where "
                                               "device onnx looks for it)")
    p.add_argument("--weights-2d", default=None)
    p.add_argument("--weights-3d", default=None)
    p.add_argument("--json", action="store_true", help="print what was written as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cmdr_ros.model.checkpoint import load_checkpoint  # noqa: PLC0415 - torch only when run
    from cmdr_ros.model.export import export_onnx, onnx_path_for

    detector = load_checkpoint(args.checkpoint, "cpu", args.weights_2d, args.weights_3d, require_threshold=False)
    info = export_onnx(detector, args.out or onnx_path_for(args.checkpoint))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"wrote {info['path']} ({info['bytes'] / 1e6:.1f} MB): model {info['cmdr_ros.model_id']}, mode "
              f"{info['cmdr_ros.mode']}, inputs {', '.join(info['inputs'])}; onnxruntime vs PyTorch: max relative "
              f"difference {info['max_rel_diff']:.1e}")
        if "backbone_2d" in info:
            b = info["backbone_2d"]
            print(f"wrote {b['path']} ({b['bytes'] / 1e6:.1f} MB): the {b['cmdr_ros.backbone']} 2D backbone; "
                  f"max relative difference {b['max_rel_diff']:.1e}")
    return 0
