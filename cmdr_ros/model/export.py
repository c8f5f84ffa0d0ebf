"""ONNX export of a trained model's scoring graph, and running it with onnxruntime (``device: onnx``).

The scoring graph is everything after the backbones: the CMDR heads on the standardised grid features, the
distance maps (and the memory bank's, when the model has one), the fusion and the model's valid mask on the map grid
(``CMDRDetector.anomaly_maps``). Its inputs are the grid features of the modalities the mode uses (``f2d``
``[B, C2, G, G]``, ``f3d`` ``[B, C3, G, G]``) and the valid mask ``[B, G, G]``; its outputs ``fused`` ``[B, S, S]``
and ``valid_map`` ``[B, S, S]``. A ViT 2D backbone (DINO ViT-B/8, ``random_vit``) is exported too, as a second graph
beside it (``backbone_path_for``: ImageNet-normalised ``image`` ``[B, 3, H, W]`` -> patch ``tokens``
``[B, C, H/8, W/8]``); the other backbones stay in PyTorch (FPFH runs in Open3D; Point-MAE's grouping is
data-dependent). Each file carries the checkpoint's model id; a file of another model is refused at load (fail
closed), so a re-trained checkpoint never runs a stale export.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from cmdr_ros import CmdrError

if TYPE_CHECKING:
    from cmdr_ros.model.detector import CMDRDetector

OPSET = 17
# relative to the largest fused value of the check input: onnxruntime fuses and reorders float32 sums
TOLERANCE = 1e-4


def onnx_path_for(checkpoint: str | Path) -> Path:
    """Where ``cmdr export`` writes a checkpoint's graph, and where ``device: onnx`` looks for it."""
    return Path(checkpoint).with_suffix(".onnx")


def backbone_path_for(graph: str | Path) -> Path:
    """Where the 2D backbone's graph lies beside a scoring graph: ``model.onnx`` -> ``model.backbone_2d.onnx``."""
    graph = Path(graph)
    return graph.with_name(graph.stem + ".backbone_2d.onnx")


def exports_backbone(detector: CMDRDetector) -> bool:
    """Whether the detector's 2D backbone is a ViT, which exports (module docstring)."""
    from cmdr_ros.model.backbones import ViTBackbone

    return isinstance(detector.backbone_2d, ViTBackbone)


class ViTGraph(nn.Module):
    """A ViT backbone's patch tokens (``weights.dino_patch_tokens``) as a traceable module."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        from cmdr_ros.model.weights import dino_patch_tokens

        return dino_patch_tokens(self.model, image)


class ScoringGraph(nn.Module):
    """The detector's heads and scoring as one traceable module (module docstring)."""

    def __init__(self, detector: CMDRDetector) -> None:
        super().__init__()
        self.detector = detector
        self.heads = detector.heads  # registered: its weights become the graph's initialisers
        self.modalities = list(detector.backbones)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        *feats, valid = inputs
        maps = self.detector.anomaly_maps(dict(zip(self.modalities, feats)), valid > 0.5)
        return maps["fused"], maps["valid"].to(torch.uint8)


def _example(detector: CMDRDetector, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Random standardised grid features and a valid mask with holes, for tracing and the equality check."""
    g = torch.Generator().manual_seed(seed)
    grid = detector.config.grid
    feats = [torch.randn(1, bb.out_dim, grid, grid, generator=g)
             for bb in (detector.backbone_2d, detector.backbone_3d) if bb is not None]
    valid = (torch.rand(1, grid, grid, generator=g) > 0.2).float()
    return feats, valid


def export_onnx(detector: CMDRDetector, path: str | Path) -> dict[str, Any]:
    """Write the scoring graph of ``detector`` (a loaded checkpoint: its model id is stored) as ONNX and check it
    against PyTorch on a random input with onnxruntime; CmdrError when it differs by more than ``TOLERANCE``
    (relative); a ViT 2D backbone is written and checked beside it (``backbone_path_for``). Returns what was written
    and the differences found."""
    if detector.model_id is None:
        raise CmdrError("export a saved model (a checkpoint): the file must name the model it belongs to")
    graph = ScoringGraph(detector).eval().cpu()
    feats, valid = _example(detector)
    names = [f"f{m}" for m in graph.modalities] + ["valid"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"cmdr_ros.model_id": detector.model_id, "cmdr_ros.mode": detector.config.mode,
            "cmdr_ros.grid": str(detector.config.grid), "cmdr_ros.map_size": str(detector.config.map_size)}
    device = detector.device
    detector.heads.cpu()
    try:
        _write(graph, (*feats, valid), path, names, ["fused", "valid_map"], meta)
    finally:
        detector.heads.to(device)
    check = OnnxScoring(path, detector.model_id)
    with torch.inference_mode():
        want = graph(*feats, valid)[0]
    diff = _relative_diff(check.run(dict(zip(graph.modalities, feats)), valid)[0], want, path)
    info = {"path": str(path), "bytes": path.stat().st_size, "inputs": names, "max_rel_diff": diff, **meta}
    if exports_backbone(detector):
        info["backbone_2d"] = _export_backbone(detector, backbone_path_for(path))
    return info


def _export_backbone(detector: CMDRDetector, path: Path) -> dict[str, Any]:
    """Write and check the ViT 2D backbone's graph (module docstring)."""
    bb = detector.backbone_2d
    graph = ViTGraph(bb.model).eval()
    size = detector.config.rgb_size
    image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    meta = {"cmdr_ros.model_id": detector.model_id, "cmdr_ros.backbone": bb.name}
    bb.cpu()
    try:
        _write(graph, (image,), path, ["image"], ["tokens"], meta)
        with torch.inference_mode():
            want = graph(image)
    finally:
        bb.to(detector.device)
    diff = _relative_diff(OnnxBackbone(path, detector.model_id).run(image), want, path)
    return {"path": str(path), "bytes": path.stat().st_size, "max_rel_diff": diff, **meta}


def _write(graph: nn.Module, args: tuple[torch.Tensor, ...], path: Path, inputs: list[str], outputs: list[str],
           meta: dict[str, str]) -> None:
    """``graph`` traced to an ONNX file with a batch axis on its first input and output, ``meta`` in its metadata."""
    import onnx

    # the TorchScript-based exporter: the graphs are plain tensor maths without data-dependent control flow, and it
    # needs no onnxscript; shape checks inside become constants (grid and image size are fixed per model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(graph, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes={n: {0: "batch"} for n in [*inputs, outputs[0]]}, opset_version=OPSET,
                          dynamo=False)
    model = onnx.load(str(path))
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))


def _relative_diff(got: torch.Tensor, want: torch.Tensor, path: Path) -> float:
    """max |got - want| / max |want|; CmdrError above ``TOLERANCE``."""
    got, want = got.float().numpy(), want.float().numpy()
    diff = float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))
    if not diff <= TOLERANCE:
        raise CmdrError(f"{path}: the exported graph differs from PyTorch by {diff:.2e} (relative), more than "
                        f"{TOLERANCE:g}: not usable")
    return diff


def attach_onnx(detector: CMDRDetector, graph: str | Path) -> None:
    """Serve ``detector`` with its exported graphs (``device: onnx``): the scoring graph at ``graph`` (required),
    and its ViT 2D backbone's beside it (``backbone_path_for``) when that file exists; without it (an export from
    before backbones were exported) the ViT runs in PyTorch, as ``detector.runtime`` then says."""
    detector.scoring = OnnxScoring(graph, detector.model_id)
    if exports_backbone(detector):
        path = backbone_path_for(graph)
        detector.backbone_2d.onnx = OnnxBackbone(path, detector.model_id) if path.is_file() else None


def _session(path: Path, model_id: str | None) -> Any:
    """An onnxruntime session of a file written by ``export_onnx`` for model ``model_id`` (CmdrError otherwise)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise CmdrError("device onnx needs onnxruntime (pip install onnxruntime)") from None
    if not path.is_file():
        raise CmdrError(f"{path}: no exported graph; write it with `cmdr export CHECKPOINT --format onnx`")
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    opts = ort.SessionOptions()
    # torch runs right before and after: as many threads as torch, and none left spinning after a run (spinning
    # threads took the cores from the next frame's backbones: 2x slower on 2 cores)
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for a broken file
        raise CmdrError(f"{path}: not a usable ONNX graph: {str(e).strip().splitlines()[0]}") from None
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get("cmdr_ros.model_id") != model_id:
        raise CmdrError(f"{path} was exported from model {meta.get('cmdr_ros.model_id')}, the checkpoint is "
                        f"model {model_id}: export it again (`cmdr export`)")
    return session


class OnnxBackbone:
    """A checkpoint's exported ViT 2D backbone in an onnxruntime session (``ViTGraph``)."""

    def __init__(self, path: str | Path, model_id: str | None) -> None:
        self.path = Path(path)
        self.session = _session(self.path, model_id)
        self.provider = self.session.get_providers()[0]

    def run(self, image: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``[B, C, H/8, W/8]`` of an ImageNet-normalised ``image`` ``[B, 3, H, W]`` (on the CPU)."""
        (tokens,) = self.session.run(["tokens"], {"image": image.float().detach().cpu().numpy()})
        return torch.from_numpy(tokens)


class OnnxScoring:
    """A checkpoint's exported scoring graph in an onnxruntime session (CPU; CUDA when onnxruntime has it)."""

    def __init__(self, path: str | Path, model_id: str | None) -> None:
        self.path = Path(path)
        self.session = _session(self.path, model_id)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.provider = self.session.get_providers()[0]

    def run(self, feats: dict[str, torch.Tensor], valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``fused`` and the model's ``valid`` mask (bool) on the map grid, as ``CMDRDetector.anomaly_maps``."""
        feed = {n: (valid.float() if n == "valid" else feats[n[1:]].float()).detach().cpu().numpy()
                for n in self.inputs}
        fused, ok = self.session.run(["fused", "valid_map"], feed)
        return torch.from_numpy(fused), torch.from_numpy(ok).bool()
