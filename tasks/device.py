"""Where training, evaluation and the heavy part of aggregation run: the run key ``device``.

``"auto"`` is CUDA's first device when ``torch.cuda.is_available()``, else the CPU; ``"cpu"``,
``"cuda"``, ``"cuda:N"`` and ``"mps"`` name a device explicitly (an unavailable one is refused
with the reason). Models and the batches they see live on the device. The project's flat
parameter vectors and update matrices stay in host memory (``tasks.params.flatten`` returns a CPU
vector); the aggregation rules' superlinear kernels — the coordinate-wise sorts and the pairwise
Gram products — stream their column blocks to the device (:func:`aggregation_device`,
``aggregators.kernels.kernel_device``). On the CPU nothing moves and results are identical to a
run without the setting. Two components keep their own small models on the CPU whatever the
device: A3FL's trigger search and the indicator detector's planting.
"""

from __future__ import annotations

import torch

__all__ = ["CPU", "DEVICE_KINDS", "DeviceError", "aggregation_device", "check_device_spec",
           "resolve_device"]

DEVICE_KINDS = ("auto", "cpu", "cuda", "mps")
CPU = torch.device("cpu")


class DeviceError(ValueError):
    """An unknown or unavailable device (the message names it)."""


def check_device_spec(spec: object) -> str:
    """``spec`` if it names a device kind this project knows (availability is not checked)."""
    if not isinstance(spec, str):
        raise DeviceError(f"device must be a string such as 'auto', 'cpu' or 'cuda:0', got "
                          f"{spec!r}")
    kind, _, index = spec.partition(":")
    if kind not in DEVICE_KINDS or (index and (kind != "cuda" or not index.isdigit())):
        raise DeviceError(f"device must be one of auto, cpu, cuda, cuda:N, mps; got {spec!r}")
    return spec


def resolve_device(spec: str) -> torch.device:
    """The torch device ``spec`` means on this machine (see the module docstring)."""
    check_device_spec(spec)
    if spec == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {spec!r}: torch.cuda.is_available() is False on this "
                              "machine (use 'auto' to fall back to the CPU)")
        index = 0 if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device {spec!r}: this machine has {torch.cuda.device_count()} "
                              "CUDA devices")
        return torch.device("cuda", index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {spec!r}: torch.backends.mps.is_available() is False")
    return device


def aggregation_device(spec: str) -> torch.device | None:
    """Where the rules' sorts and Gram products run for ``spec``: the resolved device, or None
    for the CPU (numpy's sort, the fastest there)."""
    device = resolve_device(spec)
    return None if device.type == "cpu" else device
