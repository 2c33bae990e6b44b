"""The one place where model parameters become a flat vector and back.

A :class:`ParamLayout` records, in ``state_dict`` order, each entry's key, shape and dtype. The flat
vector is the concatenation of the flattened entries, cast to float32:
``vec = cat([sd[k].reshape(-1).float() for k in layout.keys])``. ``unflatten`` cuts it back and
casts each piece to its recorded dtype, so the round trip is exact for float32 parameters (all
fedshield models) and for any dtype whose values float32 represents exactly (float16, bfloat16,
integers below 2**24 such as BatchNorm's ``num_batches_tracked``).

On the wire, parameters travel as a Flower ``ArrayRecord`` of one numpy ``Array`` per key.
``arrayrecord_to_vector`` calls ``Array.numpy()`` (an ``np.load`` of the bytes each time in
Flower 1.42) exactly once per array, never uses ``keep_input=False`` (which runs
``gc.collect()`` per call), and can write straight into a preallocated row of the server's (n, d)
update matrix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from torch import nn

__all__ = [
    "ParamLayout",
    "ParamsError",
    "arrayrecord_to_vector",
    "flatten",
    "load_vector",
    "to_arrayrecord",
    "unflatten",
]


class ParamsError(ValueError):
    """A vector, state_dict or ArrayRecord does not match the expected parameter layout."""


@dataclass(frozen=True)
class ParamLayout:
    """Keys, shapes and dtypes of a model's state, in ``state_dict`` order."""

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[torch.dtype, ...]

    @property
    def numel(self) -> int:
        """d, the length of the flat vector."""
        return sum(self.sizes)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    def offsets(self) -> list[tuple[str, int, int]]:
        """(key, start, stop) of each entry in the flat vector."""
        out, start = [], 0
        for key, size in zip(self.keys, self.sizes, strict=True):
            out.append((key, start, start + size))
            start += size
        return out

    @classmethod
    def of(cls, source: nn.Module | Mapping[str, torch.Tensor] | ArrayRecord) -> ParamLayout:
        """The layout of a model, a state_dict, or an ArrayRecord."""
        if isinstance(source, ArrayRecord):
            return cls(
                keys=tuple(source.keys()),
                shapes=tuple(tuple(int(s) for s in a.shape) for a in source.values()),
                dtypes=tuple(_torch_dtype(a.dtype) for a in source.values()),
            )
        state = _state(source)
        return cls(
            keys=tuple(state),
            shapes=tuple(tuple(t.shape) for t in state.values()),
            dtypes=tuple(t.dtype for t in state.values()),
        )

    def select(self, keys: Sequence[str]) -> ParamLayout:
        """The layout of ``keys`` (in this layout's order)."""
        wanted = set(keys)
        picked = [i for i, key in enumerate(self.keys) if key in wanted]
        return ParamLayout(tuple(self.keys[i] for i in picked),
                           tuple(self.shapes[i] for i in picked),
                           tuple(self.dtypes[i] for i in picked))

    def check_vector(self, vec: torch.Tensor, what: str = "vector") -> None:
        if not isinstance(vec, torch.Tensor) or vec.ndim != 1 or vec.numel() != self.numel:
            shape = tuple(vec.shape) if isinstance(vec, torch.Tensor) else type(vec).__name__
            raise ParamsError(f"{what} must be a 1-D tensor of length {self.numel}, got {shape}")


def _state(source: nn.Module | Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    if isinstance(source, nn.Module):
        return source.state_dict()
    if isinstance(source, Mapping):
        return source
    raise ParamsError(f"expected an nn.Module, a state_dict or an ArrayRecord, got {type(source)}")


def _torch_dtype(name: str) -> torch.dtype:
    try:
        return torch.from_numpy(np.empty(0, dtype=np.dtype(name))).dtype
    except TypeError:
        raise ParamsError(f"unsupported array dtype {name!r} in ArrayRecord") from None


def flatten(state: nn.Module | Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(d,) float32 on the CPU, a new tensor: the state's entries flattened and concatenated in
    order (a model on another device is copied back: flat vectors and aggregation live on the
    CPU, see ``tasks.device``)."""
    tensors = [t.detach().reshape(-1).to(torch.float32) for t in _state(state).values()]
    if not tensors:
        raise ParamsError("cannot flatten an empty state_dict")
    return torch.cat(tensors).cpu()


def unflatten(vec: torch.Tensor, layout: ParamLayout) -> dict[str, torch.Tensor]:
    """A state_dict (new tensors, not views of ``vec``) with the layout's keys, shapes, dtypes.

    Integer entries (BatchNorm's ``num_batches_tracked``) are rounded and saturate at their
    dtype's range: a float far beyond it never wraps around (2⁶³ − 1 + 1 would become −2⁶³)."""
    layout.check_vector(vec)
    pieces = torch.split(vec.detach(), layout.sizes)
    return {
        key: _cast(piece.reshape(shape), dtype)
        for key, shape, dtype, piece in zip(
            layout.keys, layout.shapes, layout.dtypes, pieces, strict=True
        )
    }


def _cast(piece: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype.is_floating_point or dtype == torch.bool or piece.dtype == dtype:
        return piece.to(dtype, copy=True)
    info = torch.iinfo(dtype)
    wide = piece.double().round()
    # the largest float64 below 2^63 is 2^63 − 1024: clamp there, then saturate exactly
    top = float(min(info.max, 2**63 - 1024))
    out = wide.clamp(float(info.min), top).to(dtype)
    out[wide > top] = info.max
    return out


def load_vector(model: nn.Module, vec: torch.Tensor) -> None:
    """Copy the flat ``vec`` into ``model``'s parameters and buffers, in place."""
    state = model.state_dict()
    layout = ParamLayout.of(state)
    layout.check_vector(vec)
    with torch.no_grad():
        for key, start, stop in layout.offsets():
            target = state[key]
            target.copy_(vec[start:stop].view(target.shape))


def to_arrayrecord(vec: torch.Tensor, layout: ParamLayout) -> ArrayRecord:
    """A Flower ArrayRecord with one numpy Array per layout key (shape and dtype preserved)."""
    state = unflatten(vec, layout)
    return ArrayRecord({k: Array(t.numpy()) for k, t in state.items()})


def arrayrecord_to_vector(
    record: ArrayRecord, layout: ParamLayout, *, out: torch.Tensor | None = None,
    subset: bool = False,
) -> torch.Tensor:
    """The (d,) float32 vector of ``record``, checked against ``layout`` (keys, order, shapes).

    With ``out`` (a contiguous float32 (d,) tensor, e.g. ``updates[i]`` of the server's (n, d)
    matrix) the values are written straight into it and ``out`` is returned. ``subset``: the
    layout's keys are some of the record's (the trainable part of a model with buffers).
    """
    if not isinstance(record, ArrayRecord):
        raise ParamsError(f"expected an ArrayRecord, got {type(record).__name__}")
    wanted = set(layout.keys)
    present = tuple(k for k in record if k in wanted) if subset else tuple(record.keys())
    if present != layout.keys:
        missing = [k for k in layout.keys if k not in record]
        extra = [k for k in record if k not in layout.keys]
        raise ParamsError(
            f"ArrayRecord keys do not match the model: missing {missing}, unexpected {extra}"
            + ("" if missing or extra else " (same keys, different order)")
        )
    if out is None:
        out = torch.empty(layout.numel, dtype=torch.float32)
    elif out.dtype != torch.float32 or out.shape != (layout.numel,) or not out.is_contiguous():
        raise ParamsError(
            f"out must be a contiguous float32 tensor of shape ({layout.numel},), got "
            f"{out.dtype} {tuple(out.shape)}"
        )
    target = out.numpy()
    for (key, start, stop), shape in zip(layout.offsets(), layout.shapes, strict=True):
        declared = _check_payload(key, record[key], shape)
        array = record[key].numpy()  # deserialises: call once
        if tuple(array.shape) != shape:
            raise ParamsError(f"ArrayRecord[{key!r}] has shape {array.shape}, expected {shape}")
        if array.dtype != declared:
            raise ParamsError(f"ArrayRecord[{key!r}] bytes hold {array.dtype}, declared {declared}")
        if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
            raise ParamsError(f"ArrayRecord[{key!r}] has non-real dtype {array.dtype}")
        target[start:stop] = array.reshape(-1)
    return out


# An npy header is padded to a multiple of 64 bytes and, for an array of a few dimensions, far
# smaller than this; a payload beyond data + this is not what the declared shape serialises to.
_NPY_HEADER_MAX = 4096


def _check_payload(key: str, arr: Array, shape: tuple[int, ...]) -> np.dtype:
    """Before deserialising: the byte length must fit the declared dtype and shape, so a huge
    payload declared as a tiny shape is refused without being decoded."""
    try:
        declared = np.dtype(arr.dtype)
    except TypeError:
        raise ParamsError(f"ArrayRecord[{key!r}] declares an unknown dtype {arr.dtype!r}") from None
    expected = int(np.prod(shape, dtype=np.int64)) * declared.itemsize
    size = len(arr.data)
    if not expected <= size <= expected + _NPY_HEADER_MAX:
        raise ParamsError(f"ArrayRecord[{key!r}] carries {size} bytes; {shape} {declared} is "
                          f"{expected} bytes (+ a header of at most {_NPY_HEADER_MAX})")
    return declared
