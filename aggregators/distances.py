"""The one pairwise-distance kernel of the package (Krum, Multi-Krum, Bulyan, geomed share it).

D_ij = ‖x_i − x_j‖² for the n rows of an (n, d) matrix, as an (n, n) float64 tensor.

The textbook Gram trick ‖x_i‖² + ‖x_j‖² − 2⟨x_i, x_j⟩ loses every significant digit in float32
when the rows share a large common component (Flower's built-in Krum on raw weights: negative
"distances" of −3·10⁵ where the truth is 0.2, research/FLOWER.md §2.3). This kernel keeps the one
fast float32 GEMM but makes it safe:

1. it works on a *centred* copy: every column block is translated by a reference row r (the row
   whose norm over the first 4096 coordinates is the median — an honest-looking row as long as
   fewer than half are outliers), which leaves all distances unchanged but makes the operands
   of the Gram product small, so the cancellation error scales with the spread of the clients
   instead of their common offset;
2. the matrix is processed in column blocks (<= 8192 columns) that stay in cache (the
   subtraction is then nearly free); each block's Gram product runs in the input dtype and its
   distance contribution is accumulated in float64, so rounding does not grow with d (relative
   error ~1e-7, float32's own resolution);
3. the result is symmetrised, clamped at 0 and given an exact zero diagonal; if float32 overflowed
   (rows of norm > 1e19) the computation is redone in float64. NaN/Inf input propagates into the
   result, so the finiteness check of the input costs nothing on the normal path.

Cost: one GEMM (n²d flops, done block by block) plus the in-cache subtraction of the reference
row: measured 1.3-1.5x one plain (imprecise) ``X @ X.T`` at d = 1e6, more at small d where the
per-block call overhead shows (``fedshield bench aggregators``).
"""

from __future__ import annotations

import torch

from fedshield.aggregators.base import AggregatorError
from fedshield.aggregators.validation import require_finite

# Column block: c·n values ≈ 2 MiB of float32 at most (the centred block stays in L2 while the
# GEMM reads it). Measured on the 2-core benchmark machine; see simulations/bench/aggregators.py.
_BLOCK_VALUES = 1 << 19


def pairwise_sq_distances(updates: torch.Tensor) -> torch.Tensor:
    """(n, n) float64 squared Euclidean distances between the rows of ``updates`` (n, d).

    Exact zero diagonal, symmetric, every entry >= 0 and finite. Raises AggregatorError for a
    non-2-D, non-float, empty or non-finite input.
    """
    if not isinstance(updates, torch.Tensor) or updates.ndim != 2:
        raise AggregatorError("pairwise_sq_distances: updates must be a 2-D torch.Tensor (n, d)")
    if not updates.is_floating_point():
        raise AggregatorError(f"pairwise_sq_distances: updates must be float, got {updates.dtype}")
    n, d = updates.shape
    if n == 0 or d == 0:
        raise AggregatorError(f"pairwise_sq_distances: empty updates of shape {(n, d)}")
    x = updates.detach().contiguous()
    head = torch.linalg.vector_norm(x[:, : min(d, 4096)], dim=1).nan_to_num(0.0)
    ref = int(torch.argsort(head, stable=True)[(n - 1) // 2])
    dist = _centred_blocks(x, ref)
    if not bool(torch.isfinite(dist).all()):
        require_finite("pairwise_sq_distances", "updates", x)
        dist = _centred_blocks(x.double(), ref)  # finite rows whose float32 Gram overflowed
    return sanitize_distances(dist)


def _block(n: int, d: int) -> int:
    # n·c float32 ≈ 0.6-2 MiB, so the centred block is written to and read back from L2; at most
    # 8192 columns, because float32 GEMM accumulation error grows with the block length
    # (measured max relative error 1e-5 at 349k columns, 9e-8 at 16k, 1e-8 at 4k; n = 3).
    return min(d, 8192, max(1024, _BLOCK_VALUES // n))


def _centred_blocks(x: torch.Tensor, ref: int) -> torch.Tensor:
    n, d = x.shape
    c = _block(n, d)
    r = x[ref]
    gram = torch.zeros((n, n), dtype=torch.float64)  # Σ over blocks of the centred Gram
    # One reused (n, c) buffer, itself (never a view of it) the operand: torch's `A @ A.T` takes
    # its symmetric fast path only for a tensor that is not a view (measured 2 ms vs 10 ms at
    # 50 x 2e4), and reuse avoids the page faults of a fresh allocation per block.
    buf = torch.empty((n, c), dtype=x.dtype)
    for s in range(0, d, c):
        e = min(d, s + c)
        block = torch.sub(x[:, s:e], r[s:e], out=buf) if e - s == c else \
            torch.sub(x[:, s:e], r[s:e])
        gram.add_(block @ block.T)  # float32 block product, float64 accumulation
    sq = gram.diagonal()
    return sq[:, None] + sq[None, :] - 2.0 * gram


def sanitize_distances(dist: torch.Tensor) -> torch.Tensor:
    """Symmetrise, clamp at 0 and zero the diagonal of a float64 distance matrix (in place)."""
    dist = 0.5 * (dist + dist.T)
    dist.clamp_(min=0.0)
    dist.fill_diagonal_(0.0)
    return dist


def resolve_distances(rule: str, updates: torch.Tensor,
                      gram: torch.Tensor | None) -> torch.Tensor:
    """The round's distance matrix: the ``gram`` context if given (validated), else computed."""
    if gram is None:
        return pairwise_sq_distances(updates)
    scale = float(gram.abs().max()) if gram.numel() else 0.0
    tol = 1e-9 * scale + 1e-30
    if bool((gram < -max(tol, 1e-6 * scale)).any()):
        raise AggregatorError(f"{rule}: context 'gram' must hold squared distances (>= 0)")
    if float((gram - gram.T).abs().max()) > 1e-6 * scale + 1e-30:
        raise AggregatorError(f"{rule}: context 'gram' must be symmetric")
    return sanitize_distances(gram.double().clone())
