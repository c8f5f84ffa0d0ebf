"""Image-score functions of one checkpoint's fused maps, I-AUROC on the halves of ``eval_variants.py``.

An experiment of issue #27 (docs/quality.md, "3D-only: other image scores, and the cloud's normals as the image"):
how the part's score is read off its fused map ``F`` (the preset's max / sqrt(mean of non-zero F) and others), with
nothing retrained. The checkpoint's own ``score_tta`` is not applied: every score is of the frame's own ``F``.

    PYTHONPATH=$PWD python tools/image_scores.py --data DIR --checkpoint CKPT [--seed 27] [--cache-dir DIR]
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from cmdr_ros.data.mvtec3d import MVTec3DClass
from cmdr_ros.data.samples import iter_split, make_cache
from cmdr_ros.model import fusion
from cmdr_ros.model.checkpoint import load_checkpoint
from eval_variants import half_a


def eroded(valid: torch.Tensor, cells: int) -> torch.Tensor:
    """``valid`` without its outer ``cells`` pixels (a square structuring element)."""
    return -F.max_pool2d(-valid.float()[None, None], 2 * cells + 1, 1, cells)[0, 0] > 0.5


def top_mean(f: torch.Tensor, valid: torch.Tensor, k: int) -> float:
    x = f[valid]
    return float(x.topk(min(k, x.numel())).values.mean())


def sqrt_nonzero_mean(f: torch.Tensor) -> torch.Tensor:
    return f[f != 0].mean().sqrt()


SCORES = {
    "max_normalized (preset)": lambda f, v: float(fusion.image_score(f)),
    "max": lambda f, v: float(f.max()),
    "max / mean of non-zero": lambda f, v: float(f.max() / f[f != 0].mean()),
    "mean of top 10": lambda f, v: top_mean(f, v, 10),
    "mean of top 50": lambda f, v: top_mean(f, v, 50),
    "mean of top 200": lambda f, v: top_mean(f, v, 200),
    "99th percentile": lambda f, v: float(f[v].quantile(0.99)),
    "mean (image_score: mean)": lambda f, v: float(f[v].mean()),
    "max_normalized, valid eroded by 2": lambda f, v: float((f * eroded(v, 2)).max() / sqrt_nonzero_mean(f)),
    "max_normalized, valid eroded by 4": lambda f, v: float((f * eroded(v, 4)).max() / sqrt_nonzero_mean(f)),
    "valid fraction": lambda f, v: float(v.float().mean()),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--seed", type=int, default=27)
    ap.add_argument("--cache-dir")
    args = ap.parse_args()
    det = load_checkpoint(args.checkpoint, "cpu")
    items = list(iter_split(MVTec3DClass(args.data), "test", det.config, make_cache(det.config, args.cache_dir, False),
                            False))
    maps = []
    for ls in items:
        feats = det.grid_features([det.extract(ls.inp)], ls.inp.valid[None])
        d = det.anomaly_maps(feats, feats.pop("valid"))
        maps.append((d["fused"][0], d["valid"][0]))
    samples = [ls.sample for ls in items]
    labels = np.array([s.label for s in samples])
    a = half_a(samples, args.seed)
    halves = {"A": sorted(a), "B": sorted(set(range(len(items))) - a), "all": list(range(len(items)))}
    for name, fn in SCORES.items():
        s = np.array([fn(f, v) for f, v in maps])
        print(json.dumps({"score": name, **{h: round(roc_auc_score(labels[i], s[i]), 3) for h, i in halves.items()}}))


if __name__ == "__main__":
    main()
