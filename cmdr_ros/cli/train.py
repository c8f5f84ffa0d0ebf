"""``cmdr train``: fit the heads on DIR/train/good and calibrate the threshold on DIR/validation/good."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from cmdr_ros import CmdrError
from cmdr_ros.config import ModelConfig, preset
from cmdr_ros.model.training import train_model


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_config(args: argparse.Namespace) -> ModelConfig:
    """Preset, then the YAML overrides, then the command-line flags. The mode: ``--mode``, else the YAML's
    ``mode:``, else rgbd (the preset is built for it; 3d for the 3D-only presets)."""
    over: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        try:
            over = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise CmdrError(f"{path}: cannot read the config file: {e}") from None
        if not isinstance(over, dict):
            raise CmdrError(f"{path}: a config file must hold a mapping of config fields")
    mode = args.mode or over.get("mode") or ("3d" if args.preset in ("paper3d", "lite3d") else "rgbd")
    d = _merge(preset(args.preset, mode).to_dict(), over)
    if args.weights_2d:
        d["backbone_2d"]["weights"] = str(Path(args.weights_2d).expanduser())
    if args.weights_3d:
        d["backbone_3d"]["weights"] = str(Path(args.weights_3d).expanduser())
    for flag, key in (("epochs", "epochs"), ("batch_size", "batch_size"), ("seed", "seed")):
        if getattr(args, flag, None) is not None:
            d["train"][key] = getattr(args, flag)
    if getattr(args, "max_steps", None) is not None:
        d["train"]["max_steps"] = args.max_steps or None
    d["mode"] = mode
    return ModelConfig.from_dict(d)


def run(args: argparse.Namespace) -> int:
    config = build_config(args)
    s = train_model(args.data, config, args.out, args.device, args.cache_dir, args.no_cache, not args.quiet)
    losses = ", ".join(f"{k} {v:.4f}" for k, v in s["final_losses"].items() if k != "skipped")
    print(f"trained {s['mode']} model {s['model_id']} on {s['train_samples']} samples, {s['epochs']} epochs "
          f"({s['device']}, {s['total_s']:.1f} s: load {s['load_s']:.1f} s, fit {s['fit_s']:.1f} s)")
    print(f"final losses: {losses or 'n/a'}")
    st = s["score_stats"]
    print(f"threshold {s['threshold']:.4f} from {st['n']} {st['source']} samples "
          f"(mean {st['mean']:.4f}, std {st['std']:.4f}, max {st['max']:.4f})")
    print(f"checkpoint: {s['checkpoint']}")
    return 0
