"""One-file checkpoints: head weights, the full config, backbone identities, threshold and score statistics.

Saved with ``torch.save`` of plain containers and tensors, loaded with ``torch.load(weights_only=True)``
(no pickle code execution). Pretrained backbone weights are not copied into the checkpoint (they are
large and licensed separately): their SHA-256 is recorded and checked against the file given at load
time. Random-init test backbones do travel inside the checkpoint.
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import torch

from cmdr_ros import CmdrError, __version__
from cmdr_ros.config import ModelConfig
from cmdr_ros.model.detector import CMDRDetector

FORMAT = "cmdr_ros.checkpoint"
FORMAT_VERSION = 1


def model_id(detector: CMDRDetector) -> str:
    """Short content hash of the head weights: names a trained model in logs and results."""
    h = hashlib.sha256()
    for k, v in sorted(detector.heads.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def save_checkpoint(detector: CMDRDetector, path: str | os.PathLike) -> Path:
    path = Path(path)
    backbones: dict[str, Any] = {}
    backbone_state: dict[str, Any] = {}
    for m, bb in (("2d", detector.backbone_2d), ("3d", detector.backbone_3d)):
        if bb is None:
            continue
        backbones[m] = bb.identity()
        if bb.stores_weights:
            backbone_state[m] = {k: v.detach().cpu() for k, v in bb.state_dict().items()}
    detector.model_id = model_id(detector)
    ckpt = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "cmdr_ros_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model_id": detector.model_id,
        "config": detector.config.to_dict(),
        "heads": {k: v.detach().cpu() for k, v in detector.heads.state_dict().items()},
        "feature_stats": dict(detector.feature_stats),
        "backbones": backbones,
        "backbone_state": backbone_state,
        "threshold": detector.threshold,
        "score_stats": dict(detector.score_stats),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a checkpoint file without building the model."""
    path = Path(path)
    if not path.is_file():
        raise CmdrError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not our checkpoint"
        raise CmdrError(f"{path} is not a readable cmdr_ros checkpoint: {type(e).__name__}: {str(e)[:200]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CmdrError(f"{path} is not a cmdr_ros checkpoint (no '{FORMAT}' header)")
    ver = ckpt.get("format_version")
    if ver != FORMAT_VERSION:
        raise CmdrError(f"{path} has checkpoint format version {ver}; this cmdr_ros reads version {FORMAT_VERSION}")
    return ckpt


def load_checkpoint(path: str | os.PathLike, device: str = "auto", weights_2d: str | None = None,
                    weights_3d: str | None = None, expected_mode: str | None = None) -> CMDRDetector:
    """Rebuild a trained detector. ``weights_2d``/``weights_3d`` override the pretrained weight files recorded
    in the checkpoint; their SHA-256 must match the one the model was trained with."""
    ckpt = read_checkpoint(path)
    config = ModelConfig.from_dict(ckpt["config"])
    if expected_mode not in (None, "auto") and expected_mode != config.mode:
        raise CmdrError(f"{path} was trained for mode '{config.mode}', cannot serve mode '{expected_mode}'")
    for m, override in (("2d", weights_2d), ("3d", weights_3d)):
        bcfg = config.backbone_2d if m == "2d" else config.backbone_3d
        if override:
            bcfg.weights = str(override)
        saved = ckpt["backbones"].get(m)
        if saved and saved.get("name") != bcfg.name:
            raise CmdrError(f"{path}: {m.upper()} backbone mismatch (config '{bcfg.name}', saved '{saved.get('name')}')")
    detector = CMDRDetector(config, device=device)
    for m, bb in (("2d", detector.backbone_2d), ("3d", detector.backbone_3d)):
        if bb is None:
            continue
        saved = ckpt["backbones"].get(m, {})
        if bb.stores_weights:
            state = ckpt["backbone_state"].get(m)
            if state is None:
                raise CmdrError(f"{path}: random-init backbone '{bb.name}' has no stored weights")
            bb.load_state_dict(state)
        expected = saved.get("weights_sha256")
        if expected and bb.weights_sha256 and expected != bb.weights_sha256:
            raise CmdrError(f"{path} was trained with {bb.name} weights SHA-256 {expected}, "
                            f"but the weights file given has {bb.weights_sha256}")
        if saved.get("out_dim") not in (None, bb.out_dim):
            raise CmdrError(f"{path}: {bb.name} gives {bb.out_dim}-d features, the model expects {saved['out_dim']}")
    try:
        detector.heads.load_state_dict(ckpt["heads"])
    except RuntimeError as e:
        raise CmdrError(f"{path}: head weights do not fit the configured model: {str(e).splitlines()[0]}") from None
    detector.feature_stats = {k: v.float() for k, v in ckpt.get("feature_stats", {}).items()}
    detector.threshold = ckpt.get("threshold")
    detector.score_stats = dict(ckpt.get("score_stats") or {})
    detector.model_id = ckpt.get("model_id", model_id(detector))
    return detector
