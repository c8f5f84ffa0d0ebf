"""Fitting a ``CMDRDetector`` to good samples, kept apart from the model (as anomalib keeps the torch model apart
from its training): ``fit_detector`` extracts the backbone features once, fits the feature standardiser
(``fit_feature_stats``) and the memory bank (``fit_memory_bank``) when configured, then trains the heads, one
optimiser each, with the masked 1 - cosine loss (``masked_cosine_loss``). The detector then predicts with what was
fitted; ``cmdr_ros.model.training`` runs the whole training of a class folder (fit, calibrate, save)."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from cmdr_ros import CmdrError
from cmdr_ros.data.model_input import ModelInput
from cmdr_ros.model import memory_bank
from cmdr_ros.model.heads import HEAD_TARGET

if TYPE_CHECKING:
    from cmdr_ros.model.detector import CMDRDetector, Native

log = logging.getLogger(__name__)


def masked_cosine_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity per pixel, averaged over valid pixels (``[B, C, G, G]``, ``[B, G, G]``)."""
    cos = F.cosine_similarity(pred, target, dim=1)
    v = valid.to(cos.dtype)
    return ((1 - cos) * v).sum() / v.sum().clamp_min(1)


def _finite(feats: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(f).all()) for f in feats.values())


def fit_feature_stats(detector: CMDRDetector, natives: Sequence[Native], valids: Sequence[torch.Tensor]) -> None:
    """``detector.feature_stats``: per modality, the per-channel (mean, std) of the grid features over the valid
    pixels of the training samples (``config.standardize_features``)."""
    for m in detector.backbones:
        s = s2 = None
        n = 0
        for nat, v in zip(natives, valids):
            f = detector.grid_features([nat])[m][0]
            fv = f[:, v.to(detector.device)].double()
            s = fv.sum(1) if s is None else s + fv.sum(1)
            s2 = (fv**2).sum(1) if s2 is None else s2 + (fv**2).sum(1)
            n += fv.shape[1]
        mean = s / max(n, 1)
        std = (s2 / max(n, 1) - mean**2).clamp_min(0).sqrt().clamp_min(1e-6)
        detector.feature_stats[m] = torch.stack([mean, std]).float().cpu()


def fit_memory_bank(detector: CMDRDetector, natives: Sequence[Native], valids: Sequence[torch.Tensor],
                    grid_cache: Sequence[dict[str, torch.Tensor]] | None) -> dict[str, torch.Tensor]:
    """The memory bank of every banked modality (``config.banked_modalities``): a greedy coreset
    (``memory_bank.greedy_coreset``) of ``config.memory_bank`` standardised grid features drawn from the valid
    pixels of the training samples (at most ``memory_bank.POOL`` in all, the same share from each sample)."""
    config = detector.config
    gen = torch.Generator().manual_seed(config.train.seed)
    per_sample = -(-memory_bank.POOL // len(natives))
    pools: dict[str, list[torch.Tensor]] = {}
    for i, (nat, v) in enumerate(zip(natives, valids)):
        feats = grid_cache[i] if grid_cache is not None else detector.grid_features([nat])
        idx = torch.nonzero(v.reshape(-1).to(detector.device)).squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=gen)[:per_sample].to(idx.device)]
        for m in config.banked_modalities:
            pools.setdefault(m, []).append(feats[m][0].flatten(1)[:, idx].T.float().cpu())
    return {m: memory_bank.greedy_coreset(torch.cat(p), config.memory_bank, config.train.seed)
            for m, p in pools.items()}


def fit_detector(detector: CMDRDetector, inputs: Sequence[ModelInput], epochs: int | None = None,
                 progress: bool = True, grid_cache_bytes: int = 2 << 30) -> list[dict[str, float]]:
    """Fit ``detector`` to good samples (its standardiser, memory bank and heads); returns the mean loss of every
    head per epoch.

    Backbone features are extracted once and cached (CPU, native resolution); every epoch then costs
    only the heads. When the per-pixel grid features of all samples fit in ``grid_cache_bytes`` (small
    grids) they are kept on the device too, so epochs skip the upsampling as well. Each head has its
    own optimiser; a non-finite loss skips that head's step.
    """
    config, device = detector.config, detector.device
    cfg = config.train
    if not inputs:
        raise CmdrError("no training samples")
    if epochs is None:
        epochs = cfg.epochs_for(len(inputs))
        if epochs < cfg.epochs:
            log.info("%d epochs instead of %d: %d samples reach max_steps %d", epochs, cfg.epochs, len(inputs),
                     cfg.max_steps)
    natives = detector.extract_many(inputs, progress=progress, keep_on=torch.device("cpu"))
    valids = [detector.grid_features([n], inp.valid[None])["valid"][0].cpu() if config.valid_mask == "feature"
              else inp.valid for n, inp in zip(natives, inputs)]
    detector.feature_stats = {}
    if config.standardize_features:
        fit_feature_stats(detector, natives, valids)

    dims = sum(bb.out_dim for bb in detector.backbones.values())
    grid_cache = finite = None
    if 4 * dims * config.grid ** 2 * len(natives) <= grid_cache_bytes:
        grid_cache = [detector.grid_features([n]) for n in natives]
        finite = [_finite(g) for g in grid_cache]  # checked once, not every epoch
    detector.memory_bank = ({m: b.to(device) for m, b in fit_memory_bank(detector, natives, valids, grid_cache).items()}
                            if config.memory_bank else {})

    heads = detector.heads
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    names = heads.head_names()
    # fused: one kernel for all of a head's parameters (the same update, float rounding aside; 7 -> 2 ms a step)
    opts = {n: opt_cls(getattr(heads, n).parameters(), lr=cfg.lr, fused=True) for n in names}
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    history: list[dict[str, float]] = []
    heads.train()
    bar = tqdm(range(epochs), desc="train", disable=not progress, unit="epoch")
    stop = ""
    for epoch in bar:
        sums = dict.fromkeys(names, 0.0)
        counts = dict.fromkeys(names, 0)
        skipped = 0
        order = torch.randperm(len(natives), generator=gen).tolist()
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            if grid_cache is not None:
                feats = {m: torch.cat([grid_cache[j][m] for j in idx]) for m in grid_cache[0]}
                usable = all(finite[j] for j in idx)
            else:
                feats = detector.grid_features([natives[j] for j in idx])
                usable = _finite(feats)
            valid = torch.stack([valids[j] for j in idx]).to(device)
            if not usable:
                skipped += len(names)  # poisoned input: keep it out of BatchNorm statistics too
                continue
            preds = heads(feats.get("2d"), feats.get("3d"))
            total = None
            for n in names:
                loss = masked_cosine_loss(preds[n], feats[HEAD_TARGET[n]], valid)
                if not torch.isfinite(loss):
                    skipped += 1
                    stop = stop or (f"non-finite {n} loss in epoch {epoch + 1}" if cfg.stop_on_nonfinite else "")
                    continue
                sums[n] += float(loss.detach())
                counts[n] += 1
                total = loss if total is None else total + loss  # heads share no parameters
            if stop:  # the reference's 3D-only training ends at a non-finite loss, before its step
                break
            for o in opts.values():
                o.zero_grad(set_to_none=True)
            if total is not None:
                total.backward()
                for o in opts.values():  # a head whose loss was skipped has no grads: its step is a no-op
                    o.step()
        rec = {n: sums[n] / max(counts[n], 1) for n in names}
        rec["skipped"] = skipped
        history.append(rec)
        bar.set_postfix({n: f"{v:.4f}" for n, v in rec.items() if n != "skipped"})
        if stop:
            log.warning("training stopped: %s (train.stop_on_nonfinite)", stop)
            break
    heads.eval()
    return history
