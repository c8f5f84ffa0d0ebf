"""Loading the samples of an MVTec 3D-AD style folder as model inputs, with the disk cache of preprocessed clouds.

Used by ``cmdr train`` (train/validation splits), ``cmdr eval`` (test split) and ``cmdr calibrate``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
from tqdm import tqdm

from cmdr_ros import CmdrError
from cmdr_ros.config import ModelConfig
from cmdr_ros.data.background import remove_background
from cmdr_ros.data.model_input import ModelInput, prepare_input
from cmdr_ros.data.mvtec3d import MVTec3DClass, Sample, load_mask, load_rgb, load_xyz
from cmdr_ros.data.preprocess import PreprocessCache


@dataclass
class LoadedSample:
    sample: Sample
    rgb: np.ndarray | None  # uint8 HxWx3
    xyz: np.ndarray | None  # float32 HxWx3 after background removal (input geometry)
    mask: np.ndarray | None  # bool HxW ground truth (all False for good samples; None: a defect without gt/)
    inp: ModelInput


def iter_split(data: MVTec3DClass, split: str, config: ModelConfig, cache: PreprocessCache | None,
               progress: bool = True) -> Iterator[LoadedSample]:
    """Load, preprocess (cached) and prepare every sample of a split, one at a time."""
    samples = data.samples(split)
    if not samples:
        raise CmdrError(f"{data.root / split}: no samples found")
    for s in tqdm(samples, desc=f"{split}", disable=not progress, unit="sample", leave=False):
        yield load_one(s, config, cache)


def load_one(s: Sample, config: ModelConfig, cache: PreprocessCache | None) -> LoadedSample:
    """Load one sample; the background removal of its cloud comes from the cache when possible."""
    where = f"{s.split}/{s.defect}/{s.sample_id}"
    if config.uses_3d and s.xyz_path is None:
        raise CmdrError(f"{where}: mode '{config.mode}' needs an xyz TIFF, none found")
    if config.uses_2d and s.rgb_path is None:
        raise CmdrError(f"{where}: mode '{config.mode}' needs an RGB image, none found")
    rgb = load_rgb(s.rgb_path) if config.uses_2d else None
    xyz = None
    if s.xyz_path is not None:
        def compute() -> np.ndarray:
            return remove_background(load_xyz(s.xyz_path), config.preprocess)

        xyz = cache.get_or_compute(s.xyz_path, compute) if cache is not None else compute()
    try:
        inp = prepare_input(rgb, xyz, config, background_removed=True)
    except CmdrError as e:
        raise CmdrError(f"{s.xyz_path or s.rgb_path}: {e}") from None
    h, w = inp.frame.height, inp.frame.width
    if s.gt_path is not None:
        mask = load_mask(s.gt_path)
    else:  # a defective sample without a mask (e.g. a confirmed defect of `cmdr dataset from-review`): image level only
        mask = np.zeros((h, w), bool) if s.label == 0 else None
    if mask is not None and mask.shape != (h, w):
        raise CmdrError(f"{s.gt_path}: mask {mask.shape} does not match the image {h}x{w}")
    return LoadedSample(s, rgb, xyz, mask, inp)


def make_cache(config: ModelConfig, cache_dir: str | None, no_cache: bool) -> PreprocessCache | None:
    """The disk cache of background-removed clouds, or None when disabled or when nothing is removed."""
    pp = config.preprocess
    if no_cache or not (pp.remove_plane or pp.keep_largest_cluster):
        return None
    return PreprocessCache(cache_dir, cfg=pp)
