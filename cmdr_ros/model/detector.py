"""The CMDR-IAD detector: frozen backbones + learned heads + fusion, the model that predicts (fitted to good parts
by ``cmdr_ros.model.fitting.fit_detector``).

One frame: ``prepare_input`` (in ``cmdr_ros.data.model_input``: background removal, square padding,
resizing) -> ``extract`` (frozen backbones, native resolution) -> ``grid_features`` (per-pixel maps) ->
``heads`` -> ``anomaly_maps`` (fusion) -> ``Prediction`` at the input resolution.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cmdr_ros import CmdrError
from cmdr_ros.config import ModelConfig, cross_modal
from cmdr_ros.data.model_input import ModelInput, prepare_input
from cmdr_ros.model import fusion, memory_bank, tta
from cmdr_ros.model.backbones import Backbone2D, Backbone3D, build_backbone
from cmdr_ros.model.heads import CMDRHeads
from cmdr_ros.model.scan import ScanPrediction, predict_scan

if TYPE_CHECKING:
    from cmdr_ros.model.export import OnnxScoring


Native = dict[str, dict[str, torch.Tensor]]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is a clear error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device) == "onnx":
        raise CmdrError("device 'onnx' serves a trained checkpoint's exported graph (predict, eval, calibrate, the "
                        "node: load_checkpoint); training runs on cpu or cuda")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise CmdrError(f"unknown device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CmdrError("device 'cuda' requested but CUDA is not available on this machine (use --device auto or cpu)")
    return dev


@dataclass
class Prediction:
    score: float  # image-level anomaly score
    anomaly_map: np.ndarray  # [H, W] float32 pixel scores (pixel_map's) brought to the input resolution
    valid_mask: np.ndarray  # [H, W] bool
    grid_map: np.ndarray  # [S, S] raw fused map F on the square map grid (S = config.map_size)
    grid_valid: np.ndarray  # [S, S] bool (the model's valid mask: config.valid_mask)
    latency_ms: float = 0.0
    pixel_norm: str = "split"  # config.pixel_norm: how pixel_map / pro_map normalise grid_map

    @property
    def valid_ratio(self) -> float:
        return float(self.valid_mask.mean()) if self.valid_mask.size else 0.0

    def pro_map(self) -> np.ndarray:
        """Grid-resolution scores normalised for AUPRO (``split``: F / mean of non-zero F)."""
        return fusion.normalized_scores(torch.from_numpy(self.grid_map), self.pixel_norm, "aupro").numpy()

    def pixel_map(self) -> np.ndarray:
        """Grid-resolution scores normalised for P-AUROC (``split``: F / sqrt(mean F))."""
        return fusion.normalized_scores(torch.from_numpy(self.grid_map), self.pixel_norm, "p_auroc").numpy()


def _to(native: Native, device: torch.device) -> Native:
    """Native features on ``device``; scalars (a 3D backbone's ``side``) stay on the host, read without a sync."""
    return {m: {k: t.to(device, non_blocking=True) if t.dim() else t for k, t in d.items()}
            for m, d in native.items()}


class CMDRDetector:
    """Unsupervised 2D+3D anomaly detector (CMDR-IAD). Fitted to good parts by ``fitting.fit_detector``;
    ``predict`` a frame."""

    def __init__(self, config: ModelConfig, device: str | torch.device = "auto",
                 backbone_2d: Backbone2D | None = None, backbone_3d: Backbone3D | None = None):
        config.validate()
        self.config = config
        self.device = resolve_device(device)
        self.backbone_2d = self.backbone_3d = None
        if config.uses_2d:
            self.backbone_2d = backbone_2d or build_backbone(
                config.backbone_2d.name, "2d", config.backbone_2d.weights, config.rgb_size, config.backbone_2d.options,
                config.backbone_2d.bn)
            self.backbone_2d.to(self.device)
        if config.uses_3d:
            self.backbone_3d = backbone_3d or build_backbone(
                config.backbone_3d.name, "3d", config.backbone_3d.weights, None, config.backbone_3d.options,
                config.backbone_3d.bn)
            self.backbone_3d.to(self.device)
        dim2d = self.backbone_2d.out_dim if self.backbone_2d else None
        dim3d = self.backbone_3d.out_dim if self.backbone_3d else None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.train.seed)
            self.heads = CMDRHeads(config.mode, dim2d, dim3d, config.grid, window=config.window,
                                   num_heads=config.num_heads, dropout=config.dropout)
        self.heads.to(self.device).eval()
        # per-channel (mean, std) of the training features, when config.standardize_features
        self.feature_stats: dict[str, torch.Tensor] = {}
        # per modality, the good grid features of the memory-bank branch ([N, C], standardised like the heads' input;
        # on the detector's device, so that no frame copies it there)
        self.memory_bank: dict[str, torch.Tensor] = {}
        self.threshold: float | None = None
        self.score_stats: dict[str, float] = {}
        self.model_id: str | None = None  # content hash of the heads, set when saved or loaded
        self.scoring: OnnxScoring | None = None  # device onnx: the exported heads and scoring in onnxruntime

    @property
    def backbones(self) -> dict[str, Backbone2D | Backbone3D]:
        """The backbones the mode uses, by modality ("2d", "3d")."""
        return {m: bb for m, bb in (("2d", self.backbone_2d), ("3d", self.backbone_3d)) if bb is not None}

    @property
    def runtime(self) -> str:
        """Where the model runs, in words: the torch device, or onnxruntime's provider for the scoring graph."""
        if self.scoring is not None:
            in_onnx = getattr(self.backbone_2d, "onnx", None) is not None
            if not in_onnx:
                return f"onnx ({self.scoring.provider}; backbones on {self.device})"
            rest = f", 3D backbone on {self.device}" if self.backbone_3d is not None else ""
            return f"onnx ({self.scoring.provider}; 2D backbone in onnx{rest})"
        return str(self.device)

    # ------------------------------------------------------------------ features
    def prepare(self, rgb: np.ndarray | None, xyz: np.ndarray | None, background_removed: bool = False) -> ModelInput:
        return prepare_input(rgb, xyz, self.config, background_removed)

    def extract(self, inp: ModelInput) -> Native:
        """Native-resolution features of the frozen backbones (on the detector's device)."""
        return self.extract_many([inp], batch_size=1)[0]

    def extract_many(self, inputs: Sequence[ModelInput], batch_size: int | None = None, progress: bool = False,
                     keep_on: torch.device | None = None) -> list[Native]:
        """``extract`` of many inputs: the 2D backbone ``batch_size`` images at a time (a ViT in one forward pass), the
        3D backbone one input at a time (Point-MAE's per-frame BatchNorm keeps each input's own statistics; FPFH is per
        cloud). Default batch: 8 on CUDA, 1 on the CPU (2 cores: ViT-B/8 no faster batched). ``keep_on``: where
        each batch's features are kept (training keeps them on the CPU)."""
        batch_size = batch_size or (8 if self.device.type == "cuda" else 1)
        out: list[Native] = []
        with tqdm(total=len(inputs), desc="features", disable=not progress, unit="sample") as bar:
            for i in range(0, len(inputs), batch_size):
                batch = inputs[i:i + batch_size]
                natives: list[Native] = [{} for _ in batch]
                if self.backbone_2d is not None:
                    rgb = torch.stack([inp.rgb for inp in batch]).to(self.device)
                    for native, f2d in zip(natives, self.backbone_2d.extract_batch(rgb)):
                        native["2d"] = f2d
                if self.backbone_3d is not None:
                    for native, inp in zip(natives, batch):
                        native["3d"] = self.backbone_3d.extract(inp.xyz.to(self.device),
                                                                inp.points_valid.to(self.device))
                out += natives if keep_on is None else [_to(n, keep_on) for n in natives]
                bar.update(len(batch))
        return out

    def grid_features(self, natives: Sequence[Native], strict_valid: torch.Tensor | None = None,
                      transform: str | None = None) -> dict[str, torch.Tensor]:
        """Batch of per-pixel feature maps ``{'2d': [B, C2, G, G], '3d': [B, C3, G, G]}`` (standardised if configured).

        With ``strict_valid`` (``[B, G, G]``, the inputs' xyz masks) the result also holds ``'valid'``, the model's
        valid mask (``model_valid``). With ``transform`` (every backbone ``equivariant_to`` it): the features and
        mask of the frames under that test-time transform, from the frames' own native features."""
        g = self.config.grid
        out = {}
        if transform is not None and strict_valid is not None:
            strict_valid = tta.transform_maps(strict_valid, transform)
        for m, bb in self.backbones.items():
            f = torch.stack([bb.to_grid(_to(n, self.device)[m], g) for n in natives])
            if transform is not None:
                f = bb.grid_under(f, transform)
            if m == "3d" and strict_valid is not None:
                out["valid"] = self.model_valid(strict_valid.to(self.device), f)
            if m in self.feature_stats:
                mean, std = self.feature_stats[m].to(self.device)
                f = (f - mean[:, None, None]) / std[:, None, None]
            out[m] = f
        if strict_valid is not None and "valid" not in out:
            out["valid"] = self.model_valid(strict_valid.to(self.device), None)
        return out

    def model_valid(self, strict_valid: torch.Tensor, f3d_raw: torch.Tensor | None) -> torch.Tensor:
        """The pixels the losses and anomaly maps count (``[B, G, G]`` bool), by ``config.valid_mask``.

        ``strict``: where the resized xyz is valid (``strict_valid``). ``feature``: the reference's mask (train.py,
        inference.py: ``xyz_patch.sum(-1) == 0`` marks the invalid pixels), where the 3D backbone's grid features
        ``f3d_raw`` (before standardisation) are non-zero after their interpolation and pooling: the points widened
        by the pooling (a ring at boundaries, small dropout holes filled). Read here as "any channel non-zero", which
        the reference's channel sum stands for (a sum of real features is zero only by cancellation). It applies to
        every scatter-and-pool 3D backbone (pointmae, random_pointmae, fpfh); without 3D features (mode 2d) the
        strict mask is used."""
        if self.config.valid_mask == "feature" and f3d_raw is not None:
            return (f3d_raw != 0).any(dim=1)
        return strict_valid.bool()

    # ------------------------------------------------------------------ inference
    @torch.inference_mode()
    def anomaly_maps(self, feats: dict[str, torch.Tensor], valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """Distances of every head and the fused map ``F`` (``[B, S, S]`` each, S = ``config.map_size``).

        The distances are computed on the grid; when the grid is smaller than the map size (lite preset) they
        are bilinearly upsampled first, so that the paper's box-filter sizes keep their meaning relative to the
        part (they were chosen for 224x224 maps). Invalid pixels are zero in every distance map. With a memory bank
        (``config.memory_bank``) the maps also hold ``bank2d``/``bank3d``, each pixel's distance to the nearest good
        feature, and ``F`` is gated by them (``fusion.memory_bank_gate``).
        """
        self.heads.eval()
        f2d, f3d = feats.get("2d"), feats.get("3d")
        preds = self.heads(f2d, f3d)
        size = self.config.map_size
        if size != valid.shape[-1]:
            valid = F.interpolate(valid[:, None].float(), size=(size, size), mode="nearest")[:, 0] > 0.5

        def dist(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
            d = a if b is None else fusion.feature_distance(a, b)  # a: a distance map already
            if d.shape[-1] != size:
                d = F.interpolate(d[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
            return d * valid.to(d.dtype)

        d = {"valid": valid}
        if "rec2d" in preds:
            d["rec2d"] = dist(preds["rec2d"], f2d)
        if "rec3d" in preds:
            d["rec3d"] = dist(preds["rec3d"], f3d)
        if cross_modal(self.config.mode):
            d["map2d"] = dist(preds["map3to2"], f2d)
            d["map3d"] = dist(preds["map2to3"], f3d)
            d["fused"] = fusion.fuse_rgbd(d["map2d"], d["map3d"], d["rec2d"], d["rec3d"], valid, self.config.beta)
        elif "rec3d" in d:
            d["fused"] = fusion.anomaly_map_3d(d["rec3d"], valid)
        else:
            d["fused"] = fusion.anomaly_map_2d(d["rec2d"], valid)
        banks = []
        for m, f in (("2d", f2d), ("3d", f3d)):
            if m in self.memory_bank:
                d[f"bank{m}"] = dist(memory_bank.nearest_distance(f, self.memory_bank[m].to(f.device, f.dtype)))
                banks.append(d[f"bank{m}"])
        if banks:
            d["fused"] = fusion.memory_bank_gate(d["fused"], banks, valid)
        return d

    def predict_input(self, inp: ModelInput) -> Prediction:
        return self.predict_inputs([inp])[0]

    @torch.inference_mode()
    def predict_inputs(self, inputs: Sequence[ModelInput], batch_size: int | None = None) -> list[Prediction]:
        """Score inputs of one kind (a scan's chunks), ``batch_size`` at a time through the heads and scoring; each
        backbone runs per input (Point-MAE's per-frame BatchNorm keeps each input's own statistics), and every map
        and score is per input, so a batch gives each input's own prediction. ``latency_ms``: the batch's time per
        input. Default batch: 8 on CUDA, 1 on the CPU (measured on 2 cores, paper3d: no faster batched, and a
        batch of 6 chunks took 1 GB more memory)."""
        batch_size = batch_size or (8 if self.device.type == "cuda" else 1)
        out: list[Prediction] = []
        for i in range(0, len(inputs), batch_size):
            out += self._predict_batch(inputs[i:i + batch_size])
        return out

    def equivariant_to(self, transform: str) -> bool:
        """Whether every backbone gives the grid features of a frame under ``transform`` from the frame's own
        (``Backbone.grid_under``): then ``score_tta`` runs only the heads and fusion once more, not the backbones."""
        return all(transform in bb.grid_transforms for bb in self.backbones.values())

    def _fused(self, batch: Sequence[ModelInput], natives: Sequence[Native] | None = None,
               transform: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The fused maps ``F`` of a batch and the model's valid masks on the map grid (``[B, S, S]`` each); from
        the batch's ``natives`` when given, under ``transform`` (``grid_features``) when given."""
        if natives is None:
            natives = self.extract_many(batch, batch_size=len(batch))
        feats = self.grid_features(natives, torch.stack([inp.valid for inp in batch]), transform)
        valid = feats.pop("valid")
        if self.scoring is not None:  # the exported graph of the same heads and scoring (cmdr_ros.model.export)
            return self.scoring.run(feats, valid)
        maps = self.anomaly_maps(feats, valid)
        return maps["fused"], maps["valid"]

    def _score_maps(self, batch: Sequence[ModelInput], natives: Sequence[Native], fused: torch.Tensor
                    ) -> torch.Tensor:
        """The maps the image scores are taken from: ``fused``, averaged with the fused maps of the batch under each
        transform of ``config.score_tta``, brought back onto the frames' pixels (``cmdr_ros.model.tta``). A
        transform every backbone is equivariant to reuses the batch's ``natives``; any other runs the backbones on
        the transformed frames."""
        maps = [fused]
        for name in self.config.score_tta:
            if self.equivariant_to(name):
                turned = self._fused(batch, natives, name)[0]
            else:
                turned = self._fused([tta.transform_input(inp, name) for inp in batch])[0]
            maps.append(tta.map_back(turned, name))
        return maps[0] if len(maps) == 1 else torch.stack(maps).mean(0)

    def _predict_batch(self, batch: Sequence[ModelInput]) -> list[Prediction]:
        t0 = time.perf_counter()
        natives = self.extract_many(batch, batch_size=len(batch))
        fused, valid_map = self._fused(batch, natives)
        score_maps = self._score_maps(batch, natives, fused)
        scores = fusion.image_score(score_maps).float().cpu().numpy()
        grid_maps = fused.float().cpu().numpy()
        norm = self.config.pixel_norm
        pixs = fusion.normalized_scores(fused, norm, "p_auroc").float().cpu().numpy()
        valids = valid_map.cpu().numpy()
        score_grids = grid_maps if score_maps is fused else score_maps.float().cpu().numpy()
        preds = []
        for inp, score, grid_map, score_grid, pix, grid_valid in zip(batch, scores, grid_maps, score_grids, pixs,
                                                                      valids):
            score = float(score)
            if self.config.judges_scans:  # ModelConfig.chunk_score
                score = float(pix.max()) if self.config.chunk_score == "max_normalized" else float(grid_map.mean())
            elif self.config.image_score == "mean":  # ModelConfig.image_score
                score = float(score_grid[grid_valid].mean()) if grid_valid.any() else float("nan")
            # the model's map brought back to the input resolution as it is: pixels the sensor did not measure keep
            # the score the map's smoothing gives them (the holes and cuts where material is missing are defect
            # pixels; zeroing them lowered full-resolution P-AUROC 0.963 -> 0.934 on the cable_gland dev subset)
            anomaly_map = inp.frame.to_input(pix).astype(np.float32)
            preds.append(Prediction(score, anomaly_map, inp.valid_input, grid_map, grid_valid, pixel_norm=norm))
        latency_ms = (time.perf_counter() - t0) * 1e3 / len(batch)
        for p in preds:
            p.latency_ms = latency_ms
        return preds

    def predict(self, rgb: np.ndarray | None = None, xyz: np.ndarray | None = None) -> Prediction:
        """Score one frame: RGB uint8 HxWx3 and/or xyz float HxWx3 (pixel-aligned, metres, invalid = 0)."""
        if self.config.judges_scans:
            raise CmdrError("this model judges unorganized scans (pipeline 'chunks'): give it the scan's Nx3 points "
                            "(predict_scan), not an organized frame")
        t0 = time.perf_counter()
        pred = self.predict_input(self.prepare(rgb, xyz))
        pred.latency_ms = (time.perf_counter() - t0) * 1e3
        return pred

    def predict_scan(self, points: np.ndarray) -> ScanPrediction:
        """Score an unorganized scan, Nx3 in the sensor's order (pipeline "chunks"; ``cmdr_ros.model.scan``)."""
        return predict_scan(self, points)
