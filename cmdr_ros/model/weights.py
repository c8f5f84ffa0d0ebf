"""Pretrained weights of the frozen feature extractors, loaded from local files and verified.

A wrong or missing file must never fall back to random weights (the reference code loads Point-MAE with
``strict=False`` and no warning): every function here either loads every expected tensor with the
expected shape or raises ``CmdrError`` naming the file and the first problems found.

DINO loading note: timm's ``pretrained_cfg_overlay=dict(file=...)`` route runs its ViT checkpoint filter,
which silently resamples a checkpoint's patch and position embeddings to the model's patch size and grid
(a DINO ViT-B/16 file would "load" into a ViT-B/8), and it randomly initialises all 86 M weights first.
We read the file once with timm's reader, check it against the exact ViT-B/8 at 224 layout, and assign
the tensors to a model built on the meta device; timm's filter is applied only after that check, so it
can do nothing but resample the position embedding when another ``img_size`` is asked for.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
from timm.models import load_state_dict as timm_load_state_dict
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer import checkpoint_filter_fn as vit_checkpoint_filter_fn
from torch import nn

from cmdr_ros import CmdrError
from cmdr_ros.model.pointmae import PointMAEEncoder

POINTMAE_SHA256 = "27ded932bb0a2625d5a8eb006df199b2578598c774aee6d86b985300b6a5fd20"
POINTMAE_FILENAME = "pretrain.pth"
DINO_FILENAME = "dino_vitbase8_pretrain.pth"
DINO_TIMM_NAME = "vit_base_patch8_224.dino"
_DINO_HF_REPO = "timm/vit_base_patch8_224.dino"
_ENCODER_PREFIX = "MAE_encoder."
_SHOW = 5  # problems listed in an error message


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _state_dict_problems(expected: Mapping[str, torch.Tensor], got: Mapping[str, object],
                         optional: tuple[str, ...] = ()) -> list[str]:
    """Missing keys, unexpected keys, non-tensors and shape mismatches of ``got`` against ``expected``.

    Keys ending in one of ``optional`` may be absent."""
    problems = [f"missing {k}" for k in expected if k not in got and not k.endswith(optional)]
    problems += [f"unexpected {k}" for k in got if k not in expected]
    for k, v in got.items():
        if k not in expected:
            continue
        if not isinstance(v, torch.Tensor):
            problems.append(f"{k} is a {type(v).__name__}, not a tensor")
        elif v.shape != expected[k].shape:
            problems.append(f"{k} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")
    return problems


def _first(problems: list[str]) -> str:
    more = f" (and {len(problems) - _SHOW} more)" if len(problems) > _SHOW else ""
    return "; ".join(problems[:_SHOW]) + more


def load_pointmae_weights(model: PointMAEEncoder, path: str | Path,
                          expected_sha256: str | None = POINTMAE_SHA256) -> str:
    """Load the Point-MAE release checkpoint into ``model`` (set to eval mode); return the file's SHA-256.

    The file is ``{'base_model': {'MAE_encoder.<name>': tensor, ...}, ...}`` (a ``module.`` prefix is
    tolerated); keys outside ``MAE_encoder.`` (decoder, mask token) are ignored. A file holding only the
    encoder's own keys (no prefix) is accepted too. Every encoder tensor must be present with its exact
    shape (only BatchNorm ``num_batches_tracked`` counters may be absent) and no unknown encoder key may
    appear. ``expected_sha256=None`` skips the hash check (re-saved copies, tests), not the key check.
    """
    path = Path(path)
    if not path.is_file():
        raise CmdrError(f"Point-MAE weights not found at {path}: expected the official {POINTMAE_FILENAME} "
                        f"(Point-MAE release, SHA-256 {POINTMAE_SHA256})")
    sha = sha256_file(path)
    if expected_sha256 is not None and sha != expected_sha256.lower():
        raise CmdrError(f"{path} has SHA-256 {sha}, expected {expected_sha256} (the official Point-MAE "
                        f"{POINTMAE_FILENAME}); a re-saved copy needs the hash check disabled")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for non-checkpoint files
        raise CmdrError(f"{path} is not a readable PyTorch checkpoint: {str(e).splitlines()[0]}") from e
    sd = ckpt.get("base_model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict):
        raise CmdrError(f"{path} is not a Point-MAE checkpoint: it holds a {type(ckpt).__name__}, not a state dict")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if any(k.startswith(_ENCODER_PREFIX) for k in sd):
        sd = {k[len(_ENCODER_PREFIX):]: v for k, v in sd.items() if k.startswith(_ENCODER_PREFIX)}
    problems = _state_dict_problems(model.state_dict(), sd, optional=("num_batches_tracked",))
    if problems:
        raise CmdrError(f"{path} does not fit the Point-MAE encoder: {_first(problems)}")
    model.load_state_dict(sd, strict=False)  # strictness checked above (only counters may be absent)
    model.eval()
    return sha


def _cached_dino_file() -> str:
    """Path of timm's DINO ViT-B/8 weights in the local Hugging Face cache (never downloads)."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(_DINO_HF_REPO, filename)
        if isinstance(found, str):
            return found
    raise CmdrError(f"DINO ViT-B/8 weights are not in the local Hugging Face cache ({_DINO_HF_REPO}): pass the "
                    f"weights file {DINO_FILENAME} (DINO release) explicitly")


def create_dino_vitb8(weights_path: str | Path | None, *, img_size: int = 224) -> nn.Module:
    """timm ``vit_base_patch8_224.dino`` (no head) with verified pretrained weights, in eval mode.

    ``weights_path``: the DINO release backbone file ``dino_vitbase8_pretrain.pth`` (a plain state dict
    with timm's key names) or any file of the same layout; ``None`` uses timm's copy in the local Hugging
    Face cache only (never downloads). The file must hold exactly the ViT-B/8 at 224 tensors; for another
    ``img_size`` the position embedding is then resampled by timm's filter.
    """
    if weights_path is None:
        source = _cached_dino_file()
    else:
        source = str(weights_path)
        if not Path(source).is_file():
            raise CmdrError(f"DINO ViT-B/8 weights not found at {source}: expected {DINO_FILENAME} "
                            f"(DINO release, ViT-B/8 backbone)")
    try:
        sd = timm_load_state_dict(source, weights_only=True)
    except Exception as e:  # torch/safetensors raise several types for non-checkpoint files
        raise CmdrError(f"{source} is not a readable PyTorch checkpoint: {str(e).splitlines()[0]}") from e
    with torch.device("meta"):  # layouts only: no memory, no random init (seconds saved at every start)
        reference = timm.create_model(DINO_TIMM_NAME, pretrained=False, num_classes=0)
        model = timm.create_model(DINO_TIMM_NAME, pretrained=False, num_classes=0, img_size=img_size)
    problems = _state_dict_problems(reference.state_dict(), sd)
    if problems:
        raise CmdrError(f"{source} is not a DINO ViT-B/8 checkpoint: {_first(problems)}")
    sd = vit_checkpoint_filter_fn({k: v.float() for k, v in sd.items()}, model)  # pos_embed for img_size
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()


def create_random_vit(img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int,
                      seed: int) -> VisionTransformer:
    """A small timm ViT (no head) with seeded *random* weights, in eval mode.

    For tests and weights-free tiny backbones only: it is never a stand-in for a pretrained model. The
    global RNG state is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VisionTransformer(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                                  num_heads=num_heads, num_classes=0)
    return model.eval()


def dino_patch_tokens(model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """Patch tokens after the final norm, prefix (CLS/register) tokens dropped, as a grid:
    ``x [B, 3, H, W]`` -> ``[B, C, H / patch, W / patch]`` (``[B, 768, 28, 28]`` for ViT-B/8 at 224)."""
    tokens = model.forward_features(x)[:, model.num_prefix_tokens:]
    ph, pw = model.patch_embed.patch_size
    b, _, c = tokens.shape
    return tokens.transpose(1, 2).reshape(b, c, x.shape[-2] // ph, x.shape[-1] // pw)
