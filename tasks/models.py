"""Models by name, built for a dataset's input shape and class count, with a seeded initialisation.

- ``logreg``: multinomial logistic regression, ``softmax(W·flatten(x) + b)`` (Fang et al. 2020
  use it for MNIST; FLTrust for HAR).
- ``mlp``: one hidden layer, ``W2·relu(W1·flatten(x) + b1) + b2``, ``hidden=64`` units by default.
- ``cnn``: the MNIST CNN of Fang et al. (USENIX Security 2020) and FLTrust (Cao et al., NDSS 2021),
  as in their official MXNet code (``get_cnn``): conv 30 → ReLU → maxpool 2 → conv 50 → ReLU →
  maxpool 2 → dense 100 → ReLU → dense C, with 3×3 kernels (``kernel_size=3``; 139 960 parameters on
  28×28×1). ``kernel_size=5`` gives the 5×5 variant (119 440 parameters). The convolutions are
  unpadded ("valid", as in the paper) when the input is large enough for both; on smaller inputs
  such as the 8×8 ``digits`` they are ``'same'``-padded (8×8 → 4×4 → 2×2), so the model works on
  every dataset here.

Initialisation is PyTorch's default (weights and biases ~ U(−1/√fan_in, 1/√fan_in), i.e.
``kaiming_uniform_(a=√5)``), drawn from a private ``torch.Generator`` seeded with ``seed``: the same
seed gives identical parameters, and the global torch RNG is neither read nor advanced (the modules
are created on the ``meta`` device and materialised empty before initialisation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

__all__ = ["CNN", "MLP", "LogReg", "ModelError", "available_models", "build_model"]


class ModelError(ValueError):
    """Unknown model name, bad option, or an input shape the model cannot take."""


class LogReg(nn.Module):
    """Multinomial logistic regression: logits = W·flatten(x) + b."""

    batched_training_wins: ClassVar[bool] = True

    def __init__(self, input_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(math.prod(input_shape), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class MLP(nn.Module):
    """One hidden ReLU layer: logits = W2·relu(W1·flatten(x) + b1) + b2."""

    batched_training_wins: ClassVar[bool] = True

    def __init__(self, input_shape: Sequence[int], num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ModelError(f"mlp: hidden must be an integer >= 1, got {hidden!r}")
        self.fc1 = nn.Linear(math.prod(input_shape), hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class CNN(nn.Module):
    """Fang et al. / FLTrust MNIST CNN: conv30-pool-conv50-pool-fc100-fcC (see module docstring).

    Under ``torch.func.vmap`` convolutions become slow grouped convolutions on CPU,
    so batched training falls back to a loop for this model. Its weights are kept channels-last
    (``fedshield bench simulation --cnn``: on this CPU max-pooling is about 5× faster on
    channels-last activations and a training step about 16 % faster); the flat parameter vector
    is unchanged (``flatten`` and ``load_vector`` follow the logical NCHW order).
    """

    batched_training_wins: ClassVar[bool] = False
    channels_last: ClassVar[bool] = True

    def __init__(self, input_shape: Sequence[int], num_classes: int, kernel_size: int = 3) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ModelError(f"cnn needs image inputs (C, H, W), got input_shape {input_shape}")
        if kernel_size not in (3, 5):
            raise ModelError(f"cnn: kernel_size must be 3 or 5, got {kernel_size!r}")
        channels, height, width = (int(s) for s in input_shape)
        valid = min(_valid_output(height, kernel_size), _valid_output(width, kernel_size)) >= 1
        padding = 0 if valid else kernel_size // 2
        self.padding = padding
        self.conv1 = nn.Conv2d(channels, 30, kernel_size, padding=padding)
        self.conv2 = nn.Conv2d(30, 50, kernel_size, padding=padding)
        out_h = _block_output(_block_output(height, kernel_size, padding), kernel_size, padding)
        out_w = _block_output(_block_output(width, kernel_size, padding), kernel_size, padding)
        if out_h < 1 or out_w < 1:
            raise ModelError(f"cnn: input {height}x{width} is too small (needs >= 4x4)")
        self.fc1 = nn.Linear(50 * out_h * out_w, 100)
        self.fc2 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # relu(maxpool(z)) = maxpool(relu(z)) exactly, gradients included (relu is monotone;
        # a window whose max is <= 0 passes no gradient either way): on 4x fewer values
        x = torch.relu(torch.max_pool2d(self.conv1(x), 2))
        x = torch.relu(torch.max_pool2d(self.conv2(x), 2))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def _block_output(size: int, kernel: int, padding: int) -> int:
    """Spatial size after conv(kernel, padding) then maxpool 2."""
    return (size + 2 * padding - kernel + 1) // 2


def _valid_output(size: int, kernel: int) -> int:
    return _block_output(_block_output(size, kernel, 0), kernel, 0)


_MODELS: dict[str, type[nn.Module]] = {"logreg": LogReg, "mlp": MLP, "cnn": CNN}
_OPTIONS = {"logreg": (), "mlp": ("hidden",), "cnn": ("kernel_size",)}


def available_models() -> dict[str, str]:
    """Model names mapped to a one-line description with their options."""
    return {
        "logreg": "multinomial logistic regression",
        "mlp": "one hidden ReLU layer (option hidden=64)",
        "cnn": "Fang/FLTrust MNIST CNN conv30-conv50-fc100 (option kernel_size=3|5)",
    }


def build_model(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    seed: int = 0,
    **options: Any,
) -> nn.Module:
    """Build model ``name`` for inputs of ``input_shape`` (without the batch dimension) and
    ``num_classes`` outputs, initialised from ``seed`` without touching the global RNG."""
    if name not in _MODELS:
        raise ModelError(f"unknown model {name!r}; available: {sorted(_MODELS)}")
    unknown = sorted(set(options) - set(_OPTIONS[name]))
    if unknown:
        raise ModelError(f"{name}: unknown option(s) {unknown}; allowed: {list(_OPTIONS[name])}")
    shape = tuple(input_shape)
    if not shape or any(not isinstance(s, int) or s < 1 for s in shape):
        raise ModelError(f"input_shape must be positive integers, got {input_shape!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ModelError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    with torch.device("meta"):
        model = _MODELS[name](shape, num_classes, **options)
    model = model.to_empty(device="cpu")
    init_parameters(model, seed)  # before the layout change: the random stream fills NCHW order
    if getattr(model, "channels_last", False):
        model = model.to(memory_format=torch.channels_last)
    return model


def init_parameters(model: nn.Module, seed: int) -> None:
    """PyTorch's default init, from a private generator: every weight and bias of each Linear /
    Conv layer ~ U(−1/√fan_in, 1/√fan_in), layers in registration order, weight before bias."""
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                fan_in = math.prod(module.weight.shape[1:])
                bound = 1.0 / math.sqrt(fan_in)
                module.weight.uniform_(-bound, bound, generator=generator)
                if module.bias is not None:
                    module.bias.uniform_(-bound, bound, generator=generator)
            elif any(True for _ in module.parameters(recurse=False)):
                raise ModelError(f"no seeded initialisation for layer {type(module).__name__}")
