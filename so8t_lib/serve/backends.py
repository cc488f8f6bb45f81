"""The one decision path: a checkpoint folder or a GGUF file becomes a *decider*.

Evaluation, the quantization ladder, the stakeholder app and the runtime all decide through
``load_decider``, so a number measured by ``so8t evaluate`` is a number of the served gate.
Model files are verified on the way in (a checkpoint against its manifest, a GGUF file against its
sha256 sidecar); files that cannot be verified are refused unless the operator set
``SO8T_ALLOW_UNVERIFIED_MODEL=1``, and then the decider's ``model_version`` ends in ``+unverified``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..core.checkpoint import UNVERIFIED_MARK, has_manifest, resolve_checkpoint
from .config import DEVICES

if TYPE_CHECKING:  # torch is imported by the backends themselves; the runtime starts without it
    import torch


@runtime_checkable
class Decider(Protocol):
    """What every backend offers: probabilities over ALLOW / REFUSE / ESCALATE, answers, a version."""

    model_version: str

    def decide(self, requests: list[str], contexts: list[str | None] | None = None, batch_size: int = 32,
               progress: bool = False) -> torch.Tensor: ...

    def generate(self, request: str, context: str | None = None, max_tokens: int = 128,
                 temperature: float = 0.0) -> str: ...


def is_gguf_path(path: str | Path) -> bool:
    return str(path).endswith(".gguf")


REBUILD_LLAMA_CUDA = ('CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-deps --no-cache-dir '
                      '"llama-cpp-python>=0.3.16"')


def _gguf_gpu_layers(device: str, gpu_layers: int) -> int:
    """llama.cpp's n_gpu_layers for a device: 0 on the CPU; on CUDA all (-1) or ``gpu_layers``, refused when this
    llama-cpp-python has no GPU backend (it would otherwise run on the CPU without a word)."""
    if device == "cpu":
        return 0
    import llama_cpp

    if llama_cpp.llama_supports_gpu_offload():
        return gpu_layers
    if device == "auto":
        return 0
    from ..export.gguf_meta import GGUFError

    raise GGUFError("inference.device is cuda but this llama-cpp-python was built without a GPU backend; rebuild "
                    f"it with CUDA ({REBUILD_LLAMA_CUDA}) or set inference.device: cpu")


def _torch_device(device: str) -> str:
    import torch

    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return "cpu"
    if not torch.cuda.is_available():
        raise RuntimeError("inference.device is cuda but torch sees no CUDA device (a CPU build of torch, or no "
                           "driver); install a CUDA build of torch or set inference.device: cpu")
    return "cuda"


def load_decider(path: str | Path, device: str = "auto", gpu_layers: int = -1) -> Decider:
    """An SO8TModel for a checkpoint or run folder, a GGUFBackend for a ``.gguf`` file, on ``device`` (cpu, cuda
    or auto: cuda when this build can use it); ``gpu_layers`` is how many layers a GGUF file offloads (-1: all)."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if is_gguf_path(path):
        from .gguf_backend import GGUFBackend

        return GGUFBackend(path, n_gpu_layers=_gguf_gpu_layers(device, gpu_layers))
    from ..model.so8t import SO8TModel

    target = _torch_device(device)
    folder = resolve_checkpoint(path)
    verified = has_manifest(folder)
    model = SO8TModel.load(path)  # refuses a folder without a manifest unless the override is set
    if not verified and not str(model.model_version).endswith(UNVERIFIED_MARK):
        model.model_version = f"{model.model_version}{UNVERIFIED_MARK}"
    placed = next(model.parameters()).device.type
    if placed == "cuda" and target == "cpu":  # a 4-bit base is loaded onto the GPU by bitsandbytes
        raise RuntimeError(f"{path}: its base is loaded in 4 bits on the GPU (bitsandbytes), which cannot run on the "
                           "CPU; set inference.device: cuda or auto")
    if placed != target:
        model.to(target)
    return model
