"""Frozen feature extractors behind one small registry.

Each backbone works in two steps so that training can cache features at the backbone's native
resolution (28x28 tokens, 1024 point-group centres) and upsample on the fly:

* ``extract(...) -> dict[str, Tensor]``: native features (cacheable, small);
* ``to_grid(native, grid) -> Tensor[C, grid, grid]``: the per-pixel feature map the heads consume.

The detector relies on exactly this interface, declared by the abstract ``Backbone2D.extract(rgb)`` (an RGB
tensor ``[3, S, S]`` in [0, 1]) and ``Backbone3D.extract(xyz, valid)`` (the organized xyz map ``[R, R, 3]``, R the
config's ``xyz_size`` or the grid, and its valid mask ``[R, R]``; 3D backbones only ever see valid points and keep
R in their native features as ``side``).

Registry: ``dino_vitb8`` and ``pointmae`` (the paper's, pretrained weights from local files),
``color_texture`` and ``fpfh`` (weights-free), ``random_vit`` and ``random_pointmae`` (random-init ViT
(patch 8) and Point-MAE of configurable size: small by default for tests, the paper's layouts for size and
speed checks; their weights are stored in the checkpoint so a reload is the same network). ``build_backbone``
passes each backbone only the arguments its ``__init__`` declares (``weights``, ``rgb_size``, its options).
"""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cmdr_ros import CmdrError
from cmdr_ros.config import BN_MODES
from cmdr_ros.data.preprocess import normalize_imagenet
from cmdr_ros.model.handcrafted import ColorTextureFeatures, fpfh_extras_width, fpfh_features
from cmdr_ros.model.pointmae import PointMAEEncoder, interpolate_to_points
from cmdr_ros.model.weights import (create_dino_vitb8, create_random_vit, dino_patch_tokens,
                                    load_pointmae_weights, sha256_file)


class Backbone(nn.Module, ABC):
    """Common part of every backbone; concrete ones derive from ``Backbone2D`` or ``Backbone3D``, set ``name``
    (the registry key, stored in checkpoints) and ``out_dim`` (feature channels)."""

    name: ClassVar[str] = ""
    modality: ClassVar[str] = ""  # '2d' | '3d', set by Backbone2D / Backbone3D
    #: random-init networks must travel inside the checkpoint (their weights are not reproducible elsewhere)
    stores_weights: ClassVar[bool] = False
    out_dim: int = 0
    #: the test-time transforms (``cmdr_ros.model.tta``) ``grid_under`` computes from a frame's own grid features
    grid_transforms: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        super().__init__()
        self.weights_sha256: str | None = None

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "out_dim": self.out_dim, "weights_sha256": self.weights_sha256}

    @abstractmethod
    def to_grid(self, native: dict[str, torch.Tensor], grid: int) -> torch.Tensor:
        """The per-pixel feature map ``[out_dim, grid, grid]`` of ``extract``'s native features."""

    def grid_under(self, grid_feats: torch.Tensor, transform: str) -> torch.Tensor:
        """The grid features ``[B, C, G, G]`` the frames would have under the test-time ``transform`` (one of
        ``grid_transforms``: where this backbone is equivariant to it), computed from the frames' own. Under any
        other transform (a network's features of a turned image are not its turned features) the transformed frame
        must go through the backbone."""
        raise CmdrError(f"backbone '{self.name}' cannot compute features under '{transform}' from the frame's own")


class Backbone2D(Backbone):
    """A frozen image feature extractor."""

    modality = "2d"

    @abstractmethod
    def extract(self, rgb: torch.Tensor) -> dict[str, torch.Tensor]:
        """Native features of an RGB tensor ``[3, S, S]`` in [0, 1] (S = the config's ``rgb_size``)."""

    def extract_batch(self, rgb: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """``extract`` of images ``[B, 3, S, S]``, one dict each; a backbone that runs them in one pass overrides it."""
        return [self.extract(image) for image in rgb]


class Backbone3D(Backbone):
    """A frozen point-cloud feature extractor."""

    modality = "3d"

    @abstractmethod
    def extract(self, xyz: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """Native features of the organized xyz map ``[R, R, 3]``, using only the points where ``valid [R, R]``."""


def points_to_grid(point_feats: torch.Tensor, native: dict[str, torch.Tensor], grid: int) -> torch.Tensor:
    """A 3D backbone's per-point features ``[N, C]`` at the flat pixel indices ``native["pix"]`` of the xyz map they
    came from -> ``[C, grid, grid]``. From the grid's own map (the paper's layout): ``scatter_points_to_grid``. From a
    finer map (``ModelConfig.xyz_size``; ``native["side"]`` > grid): each grid cell the mean feature of its points
    (``cell_mean_to_grid``), so that the finer map's extra points average out their noise instead of being diluted
    by its empty pixels."""
    side = _native_side(native)
    if side not in (None, grid):
        return cell_mean_to_grid(point_feats, native["pix"], grid, side)
    return scatter_points_to_grid(point_feats, native["pix"], grid)


def scatter_points_to_grid(point_feats: torch.Tensor, pix: torch.Tensor, grid: int) -> torch.Tensor:
    """Place per-point features ``[N, C]`` at flat pixel indices of the grid x grid xyz map and smooth them as the
    reference does: 3x3 average pool (stride 1, no padding) and adaptive average pool back to the grid."""
    c = point_feats.shape[1]
    out = point_feats.new_zeros(grid * grid, c)
    out[pix] = point_feats  # rows: contiguous copies
    # channels-last: both pools run along contiguous channels, 3-4x faster than on [C, G, G] for 1152 channels,
    # with bit-identical results (tested)
    out = F.avg_pool2d(out.view(1, grid, grid, c).permute(0, 3, 1, 2), 3, stride=1)
    return F.adaptive_avg_pool2d(out, grid)[0].contiguous()


def cell_mean_to_grid(point_feats: torch.Tensor, pix: torch.Tensor, grid: int, side: int) -> torch.Tensor:
    """Per-point features ``[N, C]`` at flat pixel indices of a side x side map -> ``[C, grid, grid]``, each cell the
    mean of the points in it (its share of the side x side map, adaptive pooling's windows), zero where none is."""
    c = point_feats.shape[1]
    out = point_feats.new_zeros(side * side, c + 1)
    out[pix, :c] = point_feats
    out[pix, c] = 1.0
    pooled = F.adaptive_avg_pool2d(out.view(1, side, side, c + 1).permute(0, 3, 1, 2), grid)[0]
    count = pooled[c:]
    return (pooled[:c] / count.clamp_min(1e-12) * (count > 0)).contiguous()


def scatter_points_to_grid_reference(point_feats: torch.Tensor, pix: torch.Tensor, grid: int) -> torch.Tensor:
    """``scatter_points_to_grid`` in the reference's layout: features scattered into ``[C, G*G]`` columns, pooled on
    ``[1, C, G, G]`` (what ``cmdr bench --compare`` times it against, and what the tests hold it equal to)."""
    c = point_feats.shape[1]
    out = point_feats.new_zeros(c, grid * grid)
    out[:, pix] = point_feats.T
    out = F.avg_pool2d(out.view(1, c, grid, grid), 3, stride=1)
    return F.adaptive_avg_pool2d(out, grid)[0]


class ViTBackbone(Backbone2D):
    """A timm ViT's patch tokens (DINO ViT-B/8, random_vit); the one 2D backbone ``cmdr export`` writes as a graph."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.out_dim = int(model.embed_dim)
        self.onnx: Any = None  # device onnx: the exported graph of this ViT (export.OnnxBackbone), run instead

    def extract(self, rgb: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.extract_batch(rgb[None])[0]

    @torch.inference_mode()
    def extract_batch(self, rgb: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """One forward pass for the whole batch (each image's tokens as alone, float rounding aside: tested)."""
        x = normalize_imagenet(rgb)
        tokens = self.onnx.run(x).to(rgb.device) if self.onnx is not None else dino_patch_tokens(self.model, x)
        return [{"tokens": t} for t in tokens]

    def to_grid(self, native: dict[str, torch.Tensor], grid: int) -> torch.Tensor:
        return F.interpolate(native["tokens"][None].float(), size=(grid, grid), mode="bilinear",
                             align_corners=False)[0]


class DinoViTB8(ViTBackbone):
    """DINO ViT-B/8 patch tokens after the final norm (28x28x768 at 224), bilinearly upsampled."""

    name = "dino_vitb8"

    def __init__(self, weights: str | None = None, rgb_size: int = 224) -> None:
        if rgb_size != 224:
            raise CmdrError(f"dino_vitb8 takes 224x224 images, the config asks for rgb_size {rgb_size}")
        super().__init__(create_dino_vitb8(weights))
        self.weights_sha256 = sha256_file(weights) if weights else None


class RandomViT(ViTBackbone):
    """A random-init ViT (patch 8) of configurable size: same code path as DINO, no pretrained weights. Small by
    default (tests); ``rgb_size=224, embed_dim=768, depth=12, num_heads=12`` is the ViT-B/8 layout."""

    name = "random_vit"
    stores_weights = True

    def __init__(self, rgb_size: int = 64, embed_dim: int = 32, depth: int = 2, num_heads: int = 2,
                 seed: int = 0) -> None:
        super().__init__(create_random_vit(img_size=rgb_size, patch_size=8, embed_dim=embed_dim, depth=depth,
                                           num_heads=num_heads, seed=seed))


class ColorTexture(Backbone2D):
    """Weights-free colour/texture statistics (see ``handcrafted``), area-pooled to the grid."""

    name = "color_texture"

    def __init__(self) -> None:
        super().__init__()
        self.features = ColorTextureFeatures()
        self.out_dim = ColorTextureFeatures.out_dim

    @torch.inference_mode()
    def extract(self, rgb: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"maps": self.features(rgb[None].float())[0]}

    def to_grid(self, native: dict[str, torch.Tensor], grid: int) -> torch.Tensor:
        maps = native["maps"][None].float()
        if maps.shape[-1] >= grid:
            return F.adaptive_avg_pool2d(maps, grid)[0]
        return F.interpolate(maps, size=(grid, grid), mode="bilinear", align_corners=False)[0]

    #: ``rot180``: every statistic is symmetric under a half turn of the image (its filters are symmetric, or odd
    #: with only their magnitude kept: Sobel, the Gabor pairs' energy; reflect padding and the pooling windows turn
    #: with it). Not the flips: a mirror swaps the diagonal Gabor orientations.
    grid_transforms = ("rot180",)

    def grid_under(self, grid_feats: torch.Tensor, transform: str) -> torch.Tensor:
        if transform not in self.grid_transforms:
            return super().grid_under(grid_feats, transform)
        return torch.flip(grid_feats, (-2, -1))


def _side(xyz: torch.Tensor) -> torch.Tensor:
    """The side of the xyz map a 3D backbone's ``pix`` indices refer to, kept in its native features."""
    return torch.tensor(xyz.shape[0])  # on the host: reading it costs no device sync


def _native_side(native: dict[str, torch.Tensor]) -> int | None:
    return int(native["side"]) if "side" in native else None


def _valid_points(xyz: torch.Tensor, valid: torch.Tensor, min_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    pix = valid.reshape(-1).nonzero().squeeze(1)
    if pix.numel() < min_points:
        raise CmdrError(f"the point cloud has {pix.numel()} valid points, the 3D backbone needs at least {min_points}")
    return xyz.reshape(-1, 3)[pix].float(), pix


class _PointMAEBackbone(Backbone3D):
    """A Point-MAE encoder's features, interpolated back to every valid point and placed on the grid.

    ``bn`` (``config.BN_MODES``): "running" runs the encoder in eval mode (ShapeNet running statistics); "frame"
    normalises the group encoder's BatchNorm with the frame's own group statistics, as the reference does (it never
    calls ``.eval()`` on Point-MAE), without updating the running statistics and without the reference's DropPath
    (features stay deterministic, so training can cache them)."""

    def __init__(self, encoder: PointMAEEncoder, bn: str = "running") -> None:
        super().__init__()
        if bn not in BN_MODES:
            raise CmdrError(f"unknown bn mode {bn!r}: expected one of {', '.join(BN_MODES)}")
        self.encoder = encoder.eval().requires_grad_(False)
        self.bn = bn
        self.encoder.encoder.frame_stats = bn == "frame"
        self.out_dim = self.encoder.out_dim

    @torch.inference_mode()
    def extract(self, xyz: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        pts, pix = _valid_points(xyz, valid, min_points=self.encoder.group_size)
        centers, feats = self.encoder(pts[None])
        idx, w = interpolate_to_points(pts, centers[0])
        return {"center_feats": feats[0], "idx": idx, "w": w, "pix": pix, "side": _side(xyz)}

    def to_grid(self, native: dict[str, torch.Tensor], grid: int) -> torch.Tensor:
        cf = native["center_feats"].float()
        point_feats = (cf[native["idx"]] * native["w"][..., None].float()).sum(1)
        return points_to_grid(point_feats, native, grid)


class PointMAE(_PointMAEBackbone):
    """Point-MAE transformer with the release weights: 1024 FPS centres, kNN groups of 128, features of blocks
    4/8/12 (1152-d), interpolated back to every valid point (inverse distance over 3 centres) and placed on the
    grid. ``expected_sha256``: True checks the official release hash, None skips it, a string checks that one."""

    name = "pointmae"

    def __init__(self, weights: str | None = None, expected_sha256: str | None | bool = True, bn: str = "running",
                 **encoder_kw: Any) -> None:
        encoder = PointMAEEncoder(**encoder_kw)
        if not weights:
            raise CmdrError("pointmae needs its pretrained weights: pass the Point-MAE release file pretrain.pth "
                            "(--weights-3d FILE or backbone_3d.weights)")
        kw = {} if expected_sha256 is True else {"expected_sha256": expected_sha256}
        sha = load_pointmae_weights(encoder, weights, **kw)
        super().__init__(encoder, bn)
        self.weights_sha256 = sha


class RandomPointMAE(_PointMAEBackbone):
    """A random-init Point-MAE of configurable size (``PointMAEEncoder`` arguments). Small by default (tests: 64
    groups of 16 points, width 48, depth 3); the paper's layout is ``trans_dim=384, depth=12, num_heads=6,
    num_group=1024, group_size=128, encoder_dims=384, fetch_idx=(3, 7, 11)``."""

    name = "random_pointmae"
    stores_weights = True

    def __init__(self, seed: int = 0, bn: str = "running", **encoder_kw: Any) -> None:
        cfg = dict(trans_dim=48, depth=3, num_heads=3, num_group=64, group_size=16, encoder_dims=48,
                   fetch_idx=(0, 1, 2))
        cfg.update(encoder_kw)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            enc = PointMAEEncoder(**cfg)
        super().__init__(enc, bn)


class FPFH(Backbone3D):
    """Weights-free multi-scale FPFH per valid point (see ``handcrafted``), placed on the grid."""

    name = "fpfh"

    def __init__(self, radii: tuple[float, ...] = (4.0, 8.0), normal_radius: float = 3.0,
                 viewpoint: tuple[float, float, float] = (0.0, 0.0, 0.0), extras: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.radii, self.normal_radius, self.viewpoint = tuple(radii), normal_radius, tuple(viewpoint)
        self.extras = tuple(extras)
        self.out_dim = 33 * len(self.radii) + fpfh_extras_width(self.extras)

    def extract(self, xyz: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        pts, pix = _valid_points(xyz, valid, min_points=8)
        feats = fpfh_features(pts.cpu().numpy(), self.radii, self.normal_radius, viewpoint=self.viewpoint,
                              extras=self.extras)
        return {"point_feats": torch.from_numpy(feats).to(xyz.device), "pix": pix, "side": _side(xyz)}

    def to_grid(self, native: dict[str, torch.Tensor], grid: int) -> torch.Tensor:
        return points_to_grid(native["point_feats"].float(), native, grid)

    #: ``rot180`` (a rigid motion about the sensor's axis, which keeps the viewpoint the normals face): the
    #: histograms unchanged, moved with their pixels, the ``normal`` extra's x and y negated. Not the flips: mirror
    #: images, whose FPFH angles change sign.
    grid_transforms = ("rot180",)

    def grid_under(self, grid_feats: torch.Tensor, transform: str) -> torch.Tensor:
        if transform not in self.grid_transforms:
            return super().grid_under(grid_feats, transform)
        out = torch.flip(grid_feats, (-2, -1))
        if "normal" in self.extras:  # fpfh_features appends the normal first among the extras
            first = 33 * len(self.radii)
            out[:, first:first + 2] = -out[:, first:first + 2]
        return out


BACKBONES: dict[str, type[Backbone]] = {
    cls.name: cls for cls in (DinoViTB8, RandomViT, ColorTexture, PointMAE, RandomPointMAE, FPFH)
}
#: registry names of earlier versions -> current names (checkpoints store the name: ``checkpoint`` migrates them)
RENAMED: dict[str, str] = {"tiny_vit": "random_vit", "tiny_pointmae": "random_pointmae"}


def _declared(cls: type[Backbone]) -> tuple[set[str], bool]:
    """The keyword arguments ``cls.__init__`` declares by name, and whether it also takes ``**kwargs``."""
    params = inspect.signature(cls).parameters.values()
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def build_backbone(name: str, modality: str, weights: str | None = None, rgb_size: int | None = None,
                   options: dict[str, Any] | None = None, bn: str = "running") -> Backbone:
    """Build a registered backbone; ``modality`` guards against a 3D backbone configured as 2D and vice versa.

    Like timm's model factory, a backbone is passed only the arguments it declares: ``weights`` (a weights file)
    and ``rgb_size`` (the 2D input size) go to the backbones whose ``__init__`` has them (a weights-free backbone
    ignores a weights file, as before), ``options`` (the config's) must all be declared, overriding ``rgb_size``.
    ``bn`` (the config's ``bn``) goes to the backbones with a BatchNorm mode (Point-MAE); "frame" for any other
    backbone is an error.
    """
    cls = BACKBONES.get(name)
    if cls is None:
        if name in RENAMED:
            raise CmdrError(f"backbone '{name}' has been renamed '{RENAMED[name]}': use the new name")
        raise CmdrError(f"unknown backbone '{name}': expected one of {', '.join(sorted(BACKBONES))}")
    if cls.modality != modality:
        raise CmdrError(f"backbone '{name}' is a {cls.modality.upper()} backbone, configured as {modality.upper()}")
    named, any_kw = _declared(cls)
    opts: dict[str, Any] = dict(options or {})
    if "weights" in opts:
        raise CmdrError(f"bad options for backbone '{name}': give the weights file as the backbone's `weights`, "
                        "not as an option")
    unknown = sorted(set(opts) - named)
    if unknown and not any_kw:
        takes = ", ".join(sorted(named - {"weights"})) or "no options"
        raise CmdrError(f"bad options for backbone '{name}': unknown option(s) {', '.join(unknown)} "
                        f"(it takes: {takes})")
    # what the caller knows for every backbone; each class is given those its __init__ declares
    if "bn" in opts:
        raise CmdrError(f"bad options for backbone '{name}': give the BatchNorm mode as the backbone's `bn`, "
                        "not as an option")
    if bn != "running" and "bn" not in named:
        raise CmdrError(f"backbone '{name}' has no BatchNorm mode: bn '{bn}' is for pointmae and random_pointmae")
    context = {"weights": weights, "rgb_size": rgb_size if modality == "2d" else None, "bn": bn}
    kw = {k: v for k, v in context.items() if v is not None and k in named}
    kw.update(opts)
    try:
        return cls(**kw)
    except (TypeError, ValueError) as e:
        raise CmdrError(f"bad options for backbone '{name}': {e}") from None
