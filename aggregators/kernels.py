"""Numerical kernels shared by the rules: a safe weighted sum and sorted column blocks.

Both stream over the (n, d) matrix once and never produce NaN/Inf from finite input: sums that
overflow float32 are redone in float64 (the result of a convex combination of finite float32
vectors always fits in float32).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from fedshield.aggregators.validation import require_finite

# Column block for the coordinate-wise kernels: c·n values ≈ 1 MiB of float32, so the block being
# sorted stays in L2 cache (measured fastest on the 2 MiB-L2 benchmark machine; ANCHORS §4.4).
_SORT_BLOCK_VALUES = 1 << 18


def weighted_sum(weights: torch.Tensor, updates: torch.Tensor, *,
                 rule: str = "aggregation") -> torch.Tensor:
    """Σ_i w_i x_i as a (d,) tensor in the dtype of ``updates`` (one GEMV, one pass).

    ``weights`` (n,) may be float64; the product runs in the updates' dtype. NaN/Inf in the input
    always reach the output (0·Inf is NaN too), so a finite result proves a finite input and the
    caller need not scan the input first: a non-finite result raises AggregatorError if the input
    is bad, and is redone in float64 if finite values merely overflowed float32.
    """
    w = weights.to(updates.dtype)
    out = w @ updates
    if not bool(torch.isfinite(out).all()):
        require_finite(rule, "updates", updates)
        out = (weights.double() @ updates.double()).to(updates.dtype)
        if not bool(torch.isfinite(out).all()):  # a true weighted *sum* beyond float32 range
            out = torch.nan_to_num(out)
    return out


def coordinatewise(updates: torch.Tensor, reduce: Callable[[np.ndarray], np.ndarray], *,
                   rule: str = "aggregation", rows: Sequence[int] | None = None) -> torch.Tensor:
    """Apply ``reduce`` to every coordinate's n values, sorted ascending; return (d,).

    ``rows`` restricts the computation to those rows (no copy of the matrix is made). Non-finite
    input raises AggregatorError: numpy sorts NaN last and ±Inf to the ends, so checking the
    first and last column of each sorted block finds every one of them without a separate pass.

    The matrix is processed in column blocks: each block (n, c) is transposed into a contiguous
    (c, n) buffer, sorted in place along its rows with numpy's SIMD sort, and ``reduce`` maps the
    sorted (c, n) block to (c,). numpy's sort on contiguous float32 rows beats every torch variant
    on CPU by 5-10x (ANCHORS §4.2), and the block fits in L2.
    """
    x = updates.numpy()
    index = np.asarray(sorted(rows), dtype=np.intp) if rows is not None else None
    n = len(index) if index is not None else x.shape[0]
    d = x.shape[1]
    c = max(256, _SORT_BLOCK_VALUES // n)
    buf = np.empty((min(c, d), n), dtype=x.dtype)
    out = np.empty(d, dtype=x.dtype)
    for s in range(0, d, c):
        e = min(d, s + c)
        block = buf[: e - s]
        block[...] = (x[:, s:e] if index is None else x[index, s:e]).T
        block.sort(axis=1)
        if not (np.isfinite(block[:, 0]).all() and np.isfinite(block[:, -1]).all()):
            require_finite(rule, "updates", updates)
        out[s:e] = reduce(block)
    return torch.from_numpy(out)
