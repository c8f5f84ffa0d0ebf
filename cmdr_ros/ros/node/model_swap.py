"""A model change between two parts: load, verify and warm up a new checkpoint beside the running model, then put it
in service between two parts (docs/model_swap.md). No rclpy here: the node (``model_change.py``) wires it to
``ros2 param set ... checkpoint`` and the ``~/reload_model`` service.

``ModelSwap.load`` runs on the caller's thread (a service callback), never on the inference thread: parts keep being
judged by the running model meanwhile. It refuses, with the reason, a second swap while one loads, a device without
room for a second model (``room``), a file that fails verification (``checkpoint.load_checkpoint``: checksums,
format, threshold), another mode and a model that reads its inputs differently (a "chunks" model judges each cloud
as a scan, a frame model as an organized frame). ``install`` is one reference assignment under the engine's
``judging`` lock: a part is judged by exactly one model and its decision names that model.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from cmdr_ros import CmdrError
from cmdr_ros.pipelines import pipeline_for
from cmdr_ros.ros.node.frame_judge import warm_up

if TYPE_CHECKING:
    from cmdr_ros.model.detector import CMDRDetector

MARGIN_BYTES = 256 * 2 ** 20  # besides the new model's tensors: its warm-up's activations and the file being read
INSTALL_WAIT_S = 10.0  # at most this long for the part in inference to be decided before the swap gives up


@dataclass
class Loaded:
    """A verified, warmed-up model ready to go into service."""

    detector: CMDRDetector
    checkpoint: str
    load_s: float
    warmup_s: float
    need_bytes: int


def model_bytes(detector: Any) -> int:
    """Bytes of a loaded model's tensors: parameters and buffers of its backbones and heads, its feature statistics
    and memory bank (what a second model of the same kind holds while both are loaded)."""
    import torch

    seen: set[int] = set()
    total = 0
    modules = [getattr(detector, "heads", None), *getattr(detector, "backbones", {}).values()]
    tensors: list[Any] = []
    for m in modules:
        if isinstance(m, torch.nn.Module):
            tensors += [*m.parameters(), *m.buffers()]
    for d in (getattr(detector, "feature_stats", None) or {}, getattr(detector, "memory_bank", None) or {}):
        tensors += list(d.values())
    for t in tensors:
        if isinstance(t, torch.Tensor) and id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def available_bytes(device: Any) -> tuple[int, str]:
    """Free memory where a new model would be loaded, and where the figure comes from: CUDA's free device memory
    (``torch.cuda.mem_get_info``) or, on the CPU, the kernel's MemAvailable (/proc/meminfo; os.sysconf where there is
    none)."""
    dev = str(device)
    if dev.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(dev))
        return int(free), f"free memory on {dev} (torch.cuda.mem_get_info)"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "MemAvailable of /proc/meminfo"
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free physical pages (sysconf)"


def swap_need(running: Any, path: str | os.PathLike) -> int:
    """Bytes a swap needs on top of the running model: a second model as large as the running one or as the file,
    whichever is larger (pretrained backbones are not in the file), plus ``MARGIN_BYTES``."""
    try:
        file_bytes = Path(path).stat().st_size
    except OSError:
        file_bytes = 0
    return max(model_bytes(running), file_bytes) + MARGIN_BYTES


def room_problem(need: int, available: int, where: str) -> str | None:
    """Why a swap needing ``need`` bytes does not fit in ``available`` (None when it does)."""
    if need <= available:
        return None
    return (f"not enough memory for a second model beside the running one: the swap needs {need / 2 ** 20:.0f} MiB, "
            f"{available / 2 ** 20:.0f} MiB available ({where})")


def same_inputs_problem(running: Any, new: Any, path: str) -> str | None:
    """Why ``new`` cannot judge what ``running`` is subscribed to (None when it can): another mode, or a model that
    judges a cloud as a scan where the other judges organized frames (or the reverse)."""
    old_mode, new_mode = running.config.mode, new.config.mode
    if old_mode != new_mode:
        return f"{path} was trained for mode '{new_mode}', the running model serves mode '{old_mode}'"
    old_kind, new_kind = pipeline_for(running), pipeline_for(new)
    if old_kind is not new_kind:
        return f"{path} judges {new_kind.parts}, the running model judges {old_kind.parts}"
    return None


class ModelSwap:
    """One node's model changes: ``load`` a new checkpoint beside the running model (one at a time), ``install`` it.

    ``device``, ``weights_2d``, ``weights_3d``: as the node was configured (a new model runs where the running one
    does, whatever those parameters say now)."""

    def __init__(self, device: str, weights_2d: str | None = None, weights_3d: str | None = None,
                 available: Callable[[Any], tuple[int, str]] = available_bytes) -> None:
        self.device, self.weights_2d, self.weights_3d = str(device), weights_2d or None, weights_3d or None
        self.available = available
        self._loading = threading.Lock()

    @property
    def busy(self) -> bool:
        return self._loading.locked()

    def load(self, path: str, running: Any, *, require_threshold: bool, warmup: bool = True,
             log: Callable[[str], None] = lambda _: None) -> Loaded:
        """Load, verify and warm up ``path`` for a node running ``running``; CmdrError with the reason when refused."""
        if not self._loading.acquire(blocking=False):
            raise CmdrError("another model is being loaded: wait for its answer, then try again")
        try:
            return self._load(str(path), running, require_threshold, warmup, log)
        finally:
            self._loading.release()

    def _load(self, path: str, running: Any, require_threshold: bool, warmup: bool,
              log: Callable[[str], None]) -> Loaded:
        from cmdr_ros.model.checkpoint import load_checkpoint  # torch

        if not path:
            raise CmdrError("no checkpoint given")
        need = swap_need(running, path)
        device = "cpu" if self.device == "onnx" else str(getattr(running, "device", self.device))
        available, where = self.available(device)
        if (problem := room_problem(need, available, where)) is not None:
            raise CmdrError(problem)
        t0 = time.perf_counter()
        try:
            new = load_checkpoint(path, self.device if self.device == "onnx" else device, self.weights_2d,
                                  self.weights_3d, expected_mode=running.config.mode,
                                  require_threshold=require_threshold)
        except CmdrError:
            raise
        except Exception as e:  # noqa: BLE001 - e.g. CUDA out of memory: refused with the cause, the node serves on
            raise CmdrError(f"{path} could not be loaded: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
        load_s = time.perf_counter() - t0
        if (problem := same_inputs_problem(running, new, path)) is not None:
            raise CmdrError(problem)
        t1 = time.perf_counter()
        if warmup:
            try:
                warm_up(new)
            except CmdrError as e:
                log(f"warm-up of the new model skipped: {e}")
            except Exception as e:  # noqa: BLE001 - a model that cannot run one frame must not go into service
                raise CmdrError(f"{path} failed its warm-up: {type(e).__name__}: {str(e).splitlines()[0][:200]}") \
                    from None
        return Loaded(new, path, load_s, time.perf_counter() - t1, need)

    @staticmethod
    def install(engine: Any, put: Callable[[], None], timeout: float = INSTALL_WAIT_S) -> None:
        """Run ``put`` (one reference assignment) between two parts of ``engine`` (``DecisionEngine``): once the part
        in inference, if any, is decided (its ``judging`` lock), before the next one starts (its ``turnstile``: a
        queue that never empties cannot starve the swap), under the decision lock (``cv``); CmdrError when that takes
        more than ``timeout`` s (a stuck inference)."""
        refused = f"the part in inference was not decided within {timeout:g} s: the running model stays"
        if not engine.turnstile.acquire(timeout=timeout):
            raise CmdrError(refused)
        try:
            if not engine.judging.acquire(timeout=timeout):
                raise CmdrError(refused)
            try:
                with engine.cv:  # the decision lock: a fail-safe decision is numbered wholly before or after it
                    put()
            finally:
                engine.judging.release()
        finally:
            engine.turnstile.release()
