"""One-file checkpoints: head weights, the full config, backbone identities, threshold and score statistics.

Saved with ``torch.save`` of plain containers and tensors, loaded with ``torch.load(weights_only=True)``
(no pickle code execution). Pretrained backbone weights are not copied into the checkpoint (they are
large and licensed separately): their SHA-256 is recorded and checked against the file given at load
time. Random-init backbones do travel inside the checkpoint.

Checkpoints fail closed. Format version 2 stores a ``checksum``: SHA-256 over a canonical serialization
of the whole content (config, threshold, score statistics, backbone identities as sorted JSON; every
tensor of the heads, feature statistics and stored backbone state by name, dtype, shape and raw bytes).
Loading recomputes it and refuses a file that does not match, holds a non-finite tensor or a non-positive
feature std, or (unless ``require_threshold=False``) has no finite calibrated threshold. The model id is
the first 12 hex digits of the recomputed checksum, never a value read from the file.

Migrations: ``load_checkpoint`` reads files of earlier versions under the current names (``migrate``): backbones
renamed since (``backbones.RENAMED``: ``tiny_vit`` -> ``random_vit``, ``tiny_pointmae`` -> ``random_pointmae``), and
the 2D decoder's reconstruction MLP saved before its Dropout was added (``rec2d.recon.2/3`` -> ``rec2d.recon.3/4``;
Dropout is inactive at inference, so such a model scores exactly as before). Config keys added since (``bn``,
``valid_mask``, ``pixel_norm``, ``memory_bank``) default to the behaviour from before they existed; a file without
the ``memory_bank`` tensor section has no bank (its checksum reads the same). Migration happens after
verification, on the loaded copy: the file, its checksum and its model id stay as saved.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from cmdr_ros import CmdrError, __version__
from cmdr_ros.config import ModelConfig
from cmdr_ros.model.backbones import RENAMED
from cmdr_ros.model.detector import CMDRDetector

FORMAT = "cmdr_ros.checkpoint"
FORMAT_VERSION = 2
# content covered by the checksum; "cmdr_ros_version", "created", "model_id" and "checksum" are not content
JSON_KEYS = ("format", "format_version", "config", "threshold", "score_stats", "backbones")
TENSOR_KEYS = ("heads", "feature_stats", "backbone_state", "memory_bank")
# tensor sections added after checkpoints existed: a file without one holds none (and its checksum is unchanged)
OPTIONAL_TENSOR_KEYS = ("memory_bank",)


def _tensors(ckpt: dict[str, Any]) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every tensor-section entry as (name path, value), in canonical (sorted) order."""
    for section in TENSOR_KEYS:
        d = ckpt.get(section, {} if section in OPTIONAL_TENSOR_KEYS else None)
        if not isinstance(d, dict):
            raise CmdrError(f"section '{section}' is missing or not a mapping")
        for k in sorted(d, key=str):
            if section == "backbone_state":
                if not isinstance(d[k], dict):
                    raise CmdrError(f"'{section}/{k}' is not a mapping of tensors")
                for k2 in sorted(d[k], key=str):
                    yield (section, str(k), str(k2)), d[k][k2]
            else:
                yield (section, str(k)), d[k]


def _update(h: Any, data: bytes) -> None:
    """Feed one length-prefixed field (no two contents serialize alike)."""
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def content_checksum(ckpt: dict[str, Any]) -> str:
    """SHA-256 (hex) of the checkpoint content, independent of how ``torch.save`` laid out the file."""
    h = hashlib.sha256()
    try:
        meta = json.dumps({k: ckpt.get(k) for k in JSON_KEYS}, sort_keys=True, allow_nan=True,
                          separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise CmdrError(f"content is not plain data: {e}") from None
    _update(h, meta.encode())
    for name, t in _tensors(ckpt):
        if not isinstance(t, torch.Tensor):
            raise CmdrError(f"'{'/'.join(name)}' is not a tensor")
        try:
            flat = t.detach().cpu().contiguous().reshape(-1)
            raw = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
        except (RuntimeError, TypeError) as e:
            raise CmdrError(f"tensor '{'/'.join(name)}' cannot be serialized: {str(e).splitlines()[0]}") from None
        _update(h, json.dumps([list(name), str(t.dtype), list(t.shape)]).encode())
        _update(h, raw)
    return h.hexdigest()


def model_id(ckpt: dict[str, Any]) -> str:
    """Short content hash naming a trained model in logs and results (first 12 hex of the checksum)."""
    return content_checksum(ckpt)[:12]


def _content_problem(ckpt: dict[str, Any]) -> str | None:
    """Why the content cannot be trusted to judge parts (ignoring the threshold), or None."""
    for name, t in _tensors(ckpt):
        if not isinstance(t, torch.Tensor):
            return f"'{'/'.join(name)}' is not a tensor"
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            return f"tensor '{'/'.join(name)}' holds non-finite values (NaN/inf)"
    for m, fs in ckpt["feature_stats"].items():
        if fs.ndim != 2 or fs.shape[0] != 2 or fs.shape[1] == 0:
            return f"feature statistics of '{m}' have shape {tuple(fs.shape)}, expected (2, channels)"
        std = fs[1]
        if not bool((std > 0).all()):
            return f"feature std of '{m}' has {int((~(std > 0)).sum())} zero, negative or non-finite channel(s)"
    thr = ckpt.get("threshold")
    if thr is not None and (isinstance(thr, bool) or not isinstance(thr, (int, float))):
        return f"threshold is a {type(thr).__name__}, not a number"
    for key in ("config", "score_stats", "backbones"):
        if not isinstance(ckpt.get(key), dict):
            return f"section '{key}' is missing or not a mapping"
    return None


def _threshold_problem(thr: Any) -> str | None:
    if thr is None:
        return "has no calibrated threshold: run `cmdr calibrate`"
    if not math.isfinite(thr):
        return f"has a non-finite threshold ({thr}): run `cmdr calibrate`"
    return None


def save_checkpoint(detector: CMDRDetector, path: str | os.PathLike) -> Path:
    """Write the detector (format version 2, with its content checksum); sets ``detector.model_id``.

    Refuses content that ``load_checkpoint`` would refuse (non-finite tensors or threshold, bad feature std);
    an uncalibrated model (threshold None) may be saved, for ``cmdr calibrate`` to finish.
    """
    path = Path(path)
    backbones: dict[str, Any] = {}
    backbone_state: dict[str, Any] = {}
    for m, bb in detector.backbones.items():
        backbones[m] = bb.identity()
        if bb.stores_weights:
            backbone_state[m] = {k: v.detach().cpu() for k, v in bb.state_dict().items()}
    thr = detector.threshold
    if thr is not None:
        if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not math.isfinite(thr):
            raise CmdrError(f"refusing to save {path}: the threshold {thr!r} is not a finite number")
        thr = float(thr)
    ckpt = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "cmdr_ros_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": detector.config.to_dict(),
        "heads": {k: v.detach().cpu() for k, v in detector.heads.state_dict().items()},
        "feature_stats": {k: v.detach().cpu() for k, v in detector.feature_stats.items()},
        "memory_bank": {k: v.detach().cpu() for k, v in detector.memory_bank.items()},
        "backbones": backbones,
        "backbone_state": backbone_state,
        "threshold": thr,
        "score_stats": dict(detector.score_stats),
    }
    try:
        problem = _content_problem(ckpt)
        checksum = content_checksum(ckpt)
    except CmdrError as e:
        problem = str(e)
    if problem:
        raise CmdrError(f"refusing to save {path}: {problem}")
    ckpt["checksum"] = checksum
    ckpt["model_id"] = checksum[:12]  # informational; loading recomputes it
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)
    detector.model_id = checksum[:12]
    return path


def read_checkpoint(path: str | os.PathLike, require_threshold: bool = True) -> dict[str, Any]:
    """Read and verify a checkpoint file without building the model.

    Refuses (``CmdrError`` naming the file) an unreadable or truncated file, another format version, a
    content checksum mismatch, non-finite tensors, a non-positive feature std, and, with
    ``require_threshold``, a missing or non-finite threshold. The returned dict's ``model_id`` is recomputed.
    """
    path = Path(path)
    if not path.is_file():
        raise CmdrError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not our checkpoint"
        msg = " ".join(str(e).split())[:200]
        raise CmdrError(f"{path} is not a readable cmdr_ros checkpoint (truncated or corrupted?): "
                        f"{type(e).__name__}: {msg}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CmdrError(f"{path} is not a cmdr_ros checkpoint (no '{FORMAT}' header)")
    ver = ckpt.get("format_version")
    if ver == 1:
        raise CmdrError(f"{path} has checkpoint format version 1, which predates content checksums: "
                        f"retrain it with `cmdr train` (this cmdr_ros reads version {FORMAT_VERSION})")
    if ver != FORMAT_VERSION:
        raise CmdrError(f"{path} has checkpoint format version {ver}; this cmdr_ros reads version {FORMAT_VERSION}")
    stored = ckpt.get("checksum")
    try:
        actual = content_checksum(ckpt)
    except CmdrError as e:
        raise CmdrError(f"{path} is a malformed checkpoint: {e}") from None
    if not isinstance(stored, str) or stored != actual:
        raise CmdrError(f"{path} fails its content checksum (corrupted or modified after saving): refusing to load")
    if ckpt.get("model_id") not in (None, actual[:12]):
        raise CmdrError(f"{path} names model id {ckpt.get('model_id')!r} but its content is {actual[:12]}: "
                        f"refusing to load")
    problem = _content_problem(ckpt)
    if problem:
        raise CmdrError(f"{path}: {problem}: refusing to load")
    if require_threshold:
        problem = _threshold_problem(ckpt.get("threshold"))
        if problem:
            raise CmdrError(f"{path} {problem}")
    ckpt["model_id"] = actual[:12]
    return ckpt


def migrate(ckpt: dict[str, Any]) -> dict[str, Any]:
    """A verified checkpoint's content under the current names (a copy; ``ckpt`` is left as read): backbone
    names of earlier versions (``RENAMED``) in the config and in the saved backbone identities."""
    out = dict(ckpt)
    out["config"] = config = copy.deepcopy(ckpt["config"])
    out["backbones"] = backbones = copy.deepcopy(ckpt["backbones"])
    for entry in [config.get("backbone_2d"), config.get("backbone_3d"), *backbones.values()]:
        if isinstance(entry, dict) and entry.get("name") in RENAMED:
            entry["name"] = RENAMED[entry["name"]]
    heads = ckpt["heads"]
    if "rec2d.recon.2.weight" in heads and "rec2d.recon.4.weight" not in heads:  # recon without its Dropout
        out["heads"] = {_OLD_RECON.get(k.rsplit(".", 1)[0], k.rsplit(".", 1)[0]) + "." + k.rsplit(".", 1)[1]: v
                        for k, v in heads.items()}
    return out


#: 2D reconstruction MLP: Linear(0), GELU, Linear(2), LayerNorm(3) before the reference's Dropout was inserted at 2
_OLD_RECON = {"rec2d.recon.2": "rec2d.recon.3", "rec2d.recon.3": "rec2d.recon.4"}


def load_checkpoint(path: str | os.PathLike, device: str = "auto", weights_2d: str | None = None,
                    weights_3d: str | None = None, expected_mode: str | None = None,
                    require_threshold: bool = True) -> CMDRDetector:
    """Rebuild a verified trained detector (see ``read_checkpoint``). ``weights_2d``/``weights_3d`` override
    the pretrained weight files recorded in the checkpoint; their SHA-256 must match the one the model was
    trained with. Only ``cmdr calibrate``, which derives the threshold, passes ``require_threshold=False``.
    ``device="onnx"``: the heads and scoring from the checkpoint's exported graph (``cmdr export``,
    ``export.onnx_path_for``) in onnxruntime, a ViT 2D backbone from its graph beside it when exported
    (``export.attach_onnx``), the other backbones on the CPU; a missing or other model's graph is an error."""
    ckpt = migrate(read_checkpoint(path, require_threshold=require_threshold))
    try:
        config = ModelConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError) as e:
        raise CmdrError(f"{path}: invalid model config: {e}") from None
    if expected_mode not in (None, "auto") and expected_mode != config.mode:
        raise CmdrError(f"{path} was trained for mode '{config.mode}', cannot serve mode '{expected_mode}'")
    for m, override in (("2d", weights_2d), ("3d", weights_3d)):
        bcfg = config.backbone_2d if m == "2d" else config.backbone_3d
        if override:
            bcfg.weights = str(override)
        saved = ckpt["backbones"].get(m)
        if saved and saved.get("name") != bcfg.name:
            raise CmdrError(f"{path}: {m.upper()} backbone mismatch (config '{bcfg.name}', saved '{saved.get('name')}')")
    detector = CMDRDetector(config, device="cpu" if str(device) == "onnx" else device)
    banks = ckpt.get("memory_bank") or {}
    for m, bb in detector.backbones.items():
        saved = ckpt["backbones"].get(m, {})
        if bb.stores_weights:
            state = ckpt["backbone_state"].get(m)
            if state is None:
                raise CmdrError(f"{path}: random-init backbone '{bb.name}' has no stored weights")
            try:
                bb.load_state_dict(state)
            except RuntimeError as e:
                raise CmdrError(f"{path}: stored {bb.name} weights do not fit: {str(e).splitlines()[0]}") from None
        expected = saved.get("weights_sha256")
        if expected and bb.weights_sha256 and expected != bb.weights_sha256:
            raise CmdrError(f"{path} was trained with {bb.name} weights SHA-256 {expected}, "
                            f"but the weights file given has {bb.weights_sha256}")
        if saved.get("out_dim") not in (None, bb.out_dim):
            raise CmdrError(f"{path}: {bb.name} gives {bb.out_dim}-d features, the model expects {saved['out_dim']}")
        fs = ckpt["feature_stats"].get(m)
        if fs is None and config.standardize_features:
            raise CmdrError(f"{path}: the model standardizes features but has no {m} feature statistics")
        if fs is not None and fs.shape[1] != bb.out_dim:
            raise CmdrError(f"{path}: {m} feature statistics have {fs.shape[1]} channels, {bb.name} gives {bb.out_dim}")
        bank = banks.get(m)
        if (m in config.banked_modalities) != (bank is not None):
            raise CmdrError(f"{path}: config memory_bank {config.memory_bank} for {list(config.banked_modalities)} but "
                            f"the file {'holds' if bank is not None else 'holds no'} {m} memory bank")
        if bank is not None and (bank.ndim != 2 or bank.shape[1] != bb.out_dim or not len(bank)):
            raise CmdrError(f"{path}: the {m} memory bank has shape {tuple(bank.shape)}, expected (N, {bb.out_dim})")
    unused = (set(ckpt["feature_stats"]) | set(banks)) - set(detector.backbones)
    if unused:
        raise CmdrError(f"{path}: feature statistics or memory banks for modalities the model does not use: "
                        f"{sorted(unused)}")
    try:
        detector.heads.load_state_dict(ckpt["heads"])
    except RuntimeError as e:
        raise CmdrError(f"{path}: head weights do not fit the configured model: {str(e).splitlines()[0]}") from None
    detector.feature_stats = {k: v.float() for k, v in ckpt["feature_stats"].items()}
    detector.memory_bank = {k: v.float().to(detector.device) for k, v in banks.items()}
    thr = ckpt.get("threshold")
    detector.threshold = None if thr is None else float(thr)
    detector.score_stats = dict(ckpt.get("score_stats") or {})
    detector.model_id = ckpt["model_id"]  # recomputed by read_checkpoint, never taken from the file
    if str(device) == "onnx":
        from cmdr_ros.model.export import attach_onnx, onnx_path_for

        attach_onnx(detector, onnx_path_for(path))
    return detector
