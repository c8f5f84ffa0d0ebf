"""Inference-time variants of one trained checkpoint, scored on two fixed halves of a class's test split.

For choosing settings without tuning on the figures reported: choose on half A, report half B (and all). Pixel
metrics at each image's own resolution, as ``cmdr eval --resolution full`` computes them (same scoring functions).
Halves: per defect folder, sample ids sorted then permuted by ``numpy.random.default_rng(SEED)``; A = the first
n // 2 of each folder, B = the rest. The backbone runs once per test part; every variant reuses its features.

    PYTHONPATH=$PWD python tools/eval_variants.py --data DIR --checkpoint CKPT --out OUT.json \\
        [--fit-bank N] [--seed 27] [--cache-dir DIR] VARIANT...

VARIANT = ``name:key=value,key=value`` with keys ``fusion_size`` (an int), ``banks`` (``none``, ``2d``, ``3d``,
``2d+3d``: which memory banks gate the fused map), ``scales`` (fusion sizes joined by ``+``, e.g. ``128+256``: the
fused maps at each, combined by ``combine``, ``mean`` (default), ``max`` or ``nmean``) and ``tta`` (transforms joined by
``+``, of ``hflip``, ``vflip``, ``rot180``: the maps of the identity and of each transformed input averaged; with
``tta_pixels=identity`` the image score is the averaged map's and the pixel scores the identity's); both are
described in ``tools/variant_maps.py``. ``--fit-bank N`` first fits a memory bank of N features per modality on
the training split, as ``cmdr train`` with ``memory_bank: N`` would (the heads are the checkpoint's).
``heads_fusion_ms``: heads and fusion per frame, every scale and transform included (the heads run once per scale);
``backbone_ms``: the backbones per frame for the transformed inputs (0 without ``tta``; the identity's features are
extracted once for all variants). The checkpoint's own ``score_tta`` is not applied: ``tta=`` states each variant's.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch

from cmdr_ros.data.mvtec3d import MVTec3DClass
from cmdr_ros.data.samples import iter_split, make_cache
from cmdr_ros.metrics import compute_metrics
from cmdr_ros.model import fusion
from cmdr_ros.model.checkpoint import load_checkpoint
from cmdr_ros.model.fitting import fit_memory_bank
from cmdr_ros.model.tta import map_back, transform_input
from variant_maps import fused_at_scales

KEYS = ("i_auroc", "p_auroc", "aupro@0.3")


def half_a(samples, seed: int) -> set[int]:
    """Indices of half A: per defect folder, the first n // 2 of the sorted ids permuted by ``seed``."""
    by: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by.setdefault(s.defect, []).append(i)
    rng = np.random.default_rng(seed)
    a: set[int] = set()
    for d in sorted(by):
        idx = sorted(by[d], key=lambda i: samples[i].sample_id)
        a.update(idx[j] for j in rng.permutation(len(idx))[:len(idx) // 2])
    return a


def metrics(sel, gts, pix, pro, labels, scores) -> dict[str, float]:
    m = compute_metrics([gts[i] for i in sel], [pix[i] for i in sel], [labels[i] for i in sel],
                        [scores[i] for i in sel], [pro[i] for i in sel], fpr_limits=(0.3,), paper_limits=())
    return {k: round(float(m[k]), 4) for k in KEYS}


def transformed(det, items, name: str) -> tuple[list, list, float]:
    """The inputs of ``items`` under the transform ``name``, their backbone features and the backbones' ms per item."""
    inputs = [transform_input(ls.inp, name) for ls in items]
    t0 = time.perf_counter()
    natives = det.extract_many(inputs, keep_on=torch.device("cpu"))
    return inputs, natives, (time.perf_counter() - t0) * 1e3 / len(items)


def score_variant(det, items, views, scales, combine, pixels) -> tuple[list, list, list, float]:
    """Image scores, full-resolution P-AUROC and AUPRO maps of every item; ms per item for heads and fusion.
    ``views``: per view (the identity, then each transform), its name, inputs and features; the image score is
    that of the views' mean map, the pixel scores too (``pixels`` "mean") or the identity's (``pixels``
    "identity")."""
    scores, pix, pro = [], [], []
    t0 = time.perf_counter()
    for k, ls in enumerate(items):
        maps = []
        for name, inputs, natives in views:
            feats = det.grid_features([natives[k]], inputs[k].valid[None])
            valid = feats.pop("valid")
            fused = fused_at_scales(det, feats, valid, scales, combine)
            maps.append(fused if name == "identity" else map_back(fused, name))
        fused = maps[0] if len(maps) == 1 else torch.stack(maps).mean(0)
        scores.append(float(fusion.image_score(fused)[0]))
        if pixels == "identity":
            fused = maps[0]
        for out, metric in ((pix, "p_auroc"), (pro, "aupro")):
            grid = fusion.normalized_scores(fused, det.config.pixel_norm, metric)[0].numpy()
            out.append(ls.inp.frame.to_input(grid).astype(np.float32))
    return scores, pix, pro, (time.perf_counter() - t0) * 1e3 / len(items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--fit-bank", type=int, default=0)
    ap.add_argument("--seed", type=int, default=27)
    ap.add_argument("--cache-dir")
    ap.add_argument("variants", nargs="*", default=["base:"])
    args = ap.parse_args()
    det = load_checkpoint(args.checkpoint, "cpu")
    data = MVTec3DClass(args.data)
    if args.fit_bank:
        det.config = dataclasses.replace(det.config, memory_bank=args.fit_bank)
        train = list(iter_split(data, "train", det.config, make_cache(det.config, args.cache_dir, False), False))
        natives = det.extract_many([ls.inp for ls in train], keep_on=torch.device("cpu"))
        det.memory_bank = fit_memory_bank(det, natives, [ls.inp.valid for ls in train], None)
    base_cfg, base_bank = det.config, dict(det.memory_bank)
    items = list(iter_split(data, "test", det.config, make_cache(det.config, args.cache_dir, False), False))
    natives = det.extract_many([ls.inp for ls in items], keep_on=torch.device("cpu"))
    samples = [ls.sample for ls in items]
    a = half_a(samples, args.seed)
    halves = {"A": sorted(a), "B": sorted(set(range(len(items))) - a), "all": list(range(len(items)))}
    gts, labels = [ls.mask for ls in items], [s.label for s in samples]
    views = {"identity": ([ls.inp for ls in items], natives, 0.0)}
    res = {"checkpoint": args.checkpoint, "seed": args.seed,
           "half_A": [f"{samples[i].defect}/{samples[i].sample_id}" for i in halves["A"]], "variants": {}}
    for v in args.variants:
        name, _, kv = v.partition(":")
        opts = dict(x.split("=") for x in kv.split(",") if x)
        det.config = (dataclasses.replace(base_cfg, fusion_size=int(opts["fusion_size"])) if "fusion_size" in opts
                      else base_cfg)
        banks = opts.get("banks", "+".join(sorted(base_bank)) or "none")
        det.memory_bank = {m: base_bank[m] for m in banks.split("+") if m in base_bank}
        tta = ["identity"] + [t for t in opts.get("tta", "").split("+") if t]
        for t in tta:
            if t not in views:
                views[t] = transformed(det, items, t)
        scales = [int(x) for x in opts["scales"].split("+")] if "scales" in opts else [None]
        scores, pix, pro, ms = score_variant(det, items, [(t, *views[t][:2]) for t in tta], scales,
                                             opts.get("combine", "mean"), opts.get("tta_pixels", "mean"))
        r: dict = {"heads_fusion_ms": round(ms, 1), "backbone_ms": round(sum(views[t][2] for t in tta), 1)}
        for part, sel in halves.items():
            thread = [i for i in sel if samples[i].defect in ("good", "thread")]
            r[part] = dict(metrics(sel, gts, pix, pro, labels, scores),
                           thread=metrics(thread, gts, pix, pro, labels, scores))
        res["variants"][name] = r
        print(name, json.dumps(r), flush=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
