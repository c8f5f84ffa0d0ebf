"""The CMDR-IAD model: backbones (registry), heads, fusion (pure functions), detector, its fitting and checkpoints.

Names are imported lazily so that ``import cmdr_ros.model.fusion`` stays light (no timm/Open3D). The model's
input (``ModelInput``, ``prepare_input``) is data preparation: it lives in ``cmdr_ros.data.model_input``.
"""
from importlib import import_module

_EXPORTS = {
    "CMDRDetector": "detector", "Prediction": "detector", "resolve_device": "detector", "fit_detector": "fitting",
    "load_checkpoint": "checkpoint", "read_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"cmdr_ros.model.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'cmdr_ros.model' has no attribute {name!r}")
