"""The shared maths of the rules, in one place: sums, sorted column blocks, pairwise distances,
norms and cosines, Krum scores, clustering and sampling helpers. Rules import from here, never
from each other's modules.

Every kernel streams over the (n, d) matrix and never produces NaN/Inf from finite input: sums
that overflow float32 are redone in float64 (the result of a convex combination of finite float32
vectors always fits in float32), norms are rescaled where their squares would overflow.

Pairwise distances (:func:`pairwise_sq_distances`, shared by Krum, Multi-Krum, Bulyan, geomed,
NNM, and through cosines by FLAME, FoolsGold and SignGuard):

D_ij = ‖x_i − x_j‖² for the n rows of an (n, d) matrix, as an (n, n) float64 tensor.

The textbook Gram trick ‖x_i‖² + ‖x_j‖² − 2⟨x_i, x_j⟩ loses every significant digit in float32
when the rows share a large common component (Flower 1.42's built-in Krum on raw weights with an
offset of 1000: "squared distances" of ±3·10⁵ where the truth is 0.2). This kernel keeps the one
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

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import numpy as np
import torch

from fedshield.aggregators.base import AggregatorError, finite_rows, require_finite

# --- the device of the superlinear kernels --------------------------------------------------------
_DEVICE: ContextVar[torch.device | None] = ContextVar("fedshield_kernel_device", default=None)


@contextmanager
def kernel_device(device: torch.device | str | None) -> Iterator[None]:
    """Inside the block, the two kernels whose cost grows faster than the data — the sorts of
    :func:`coordinatewise` / :func:`weighted_coordinatewise` (n log n per coordinate) and the Gram
    products of :func:`pairwise_sq_distances` and the cosines (n² per coordinate) — send each
    column block to ``device``, compute there and bring back the small result (a sorted block, an
    (n, n) Gram matrix); ``None`` (the default) is the CPU path with numpy's sort.

    The updates stay in host memory (a server has far more of it than a GPU) and everything
    linear in the data — sums, norms, clipping — stays on the CPU, where it is memory-bound and
    a transfer would cost more than the computation. A sort is a permutation, so the sort-based
    rules give the same values on every device; the Gram products are float32 GEMMs accumulated
    in float64 per block, equal to float tolerance."""
    token = _DEVICE.set(None if device is None else torch.device(device))
    try:
        yield
    finally:
        _DEVICE.reset(token)


def to_kernel_device(block: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``block`` on the kernels' device (one transfer per column block); a float64 block stays
    on the CPU for MPS, which has no float64."""
    if device.type == "mps" and block.dtype == torch.float64:
        return block
    return block.to(device)


# Column block for the coordinate-wise kernels: c·n values ≈ 1 MiB of float32, so the block being
# sorted stays in L2 cache (measured fastest on the 2 MiB-L2 benchmark machine).
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


def mean_rows(mixing: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
    """(k, d) = ``mixing`` (k, n) @ ``updates`` (n, d) for a row-stochastic ``mixing`` (each row
    a convex combination, so every result fits the updates' dtype): one GEMM in that dtype,
    redone in float64 where finite values near the dtype's maximum overflowed. (The check reads
    row sums, ``base.finite_rows``: ``torch.isfinite`` on the (k, d) result would allocate 1.75×
    its size in temporaries.)"""
    out = mixing.to(updates.dtype) @ updates
    if not bool(finite_rows(out).all()):
        out = (mixing.double() @ updates.double()).to(updates.dtype)
    return out


def sort_block_columns(n: int) -> int:
    """Columns per block of :func:`coordinatewise` for n rows (a (c, n) block fits in L2)."""
    return max(256, _SORT_BLOCK_VALUES // n)


# Sort blocks per column block of a coordinate-wise rule streamed by a pre-aggregator (≈ 16 MiB
# of float32): whole sort blocks, so the rule's blocks and sums are those of one call on the matrix.
_SORT_BLOCKS_PER_STREAM_BLOCK = 16


def inner_on_columns(inner: Any, x: torch.Tensor,
                     transform: Callable[[torch.Tensor], torch.Tensor] | None,
                     context: dict[str, Any]) -> Any:
    """``inner(transform(x), **context)`` for a ``transform`` that maps each column block of x on
    its own — ARC's row scaling, bucketing's and NNM's row mixing — without building
    ``transform(x)`` whole when the inner rule is coordinate-wise (``Rule.coordinatewise``): the
    rule then runs on one transformed (k, c) block at a time, and the peak extra memory is one
    block instead of a (k, d) matrix. ``transform=None`` is the identity (no copy at all)."""
    if transform is None:
        return inner(x, **context)
    if not inner.coordinatewise or inner.stateful:  # state must see one call per round
        return inner(transform(x), **context)
    d = x.shape[1]
    k = transform(x[:, :1]).shape[0]  # the inner rule's row count fixes the block width
    c = _SORT_BLOCKS_PER_STREAM_BLOCK * sort_block_columns(k)
    update = torch.empty(d, dtype=x.dtype)
    for s in range(0, d, c):
        result = inner(transform(x[:, s:s + c]), **context)
        update[s:s + c] = result.update
    result.update = update
    return result


def coordinatewise(updates: torch.Tensor, reduce: Callable[[np.ndarray], np.ndarray], *,
                   rule: str = "aggregation", rows: Sequence[int] | None = None) -> torch.Tensor:
    """Apply ``reduce`` to every coordinate's n values, sorted ascending; return (d,).

    ``rows`` restricts the computation to those rows (no copy of the matrix is made). Non-finite
    input raises AggregatorError: numpy sorts NaN last and ±Inf to the ends, so checking the
    first and last column of each sorted block finds every one of them without a separate pass.

    The matrix is processed in column blocks: each block (n, c) is transposed into a contiguous
    (c, n) buffer, sorted in place along its rows with numpy's SIMD sort, and ``reduce`` maps the
    sorted (c, n) block to (c,). numpy's sort on contiguous float32 rows beats every torch variant
    on CPU by 5-10x, and the block fits in L2.
    """
    x = updates.numpy()
    device = _DEVICE.get()
    index = np.asarray(sorted(rows), dtype=np.intp) if rows is not None else None
    n = len(index) if index is not None else x.shape[0]
    d = x.shape[1]
    c = sort_block_columns(n)
    buf = np.empty((min(c, d), n), dtype=x.dtype)
    out = np.empty(d, dtype=x.dtype)
    for s in range(0, d, c):
        e = min(d, s + c)
        block = buf[: e - s]
        block[...] = (x[:, s:e] if index is None else x[index, s:e]).T
        if device is None:
            block.sort(axis=1)
        else:
            ranked = to_kernel_device(torch.from_numpy(block), device).sort(dim=1)
            block[...] = ranked.values.cpu().numpy()
        if not (np.isfinite(block[:, 0]).all() and np.isfinite(block[:, -1]).all()):
            require_finite(rule, "updates", updates)
        out[s:e] = reduce(block)
    return torch.from_numpy(out)


def weighted_coordinatewise(updates: torch.Tensor, shares: torch.Tensor,
                            reduce: Callable[[np.ndarray, np.ndarray], np.ndarray], *,
                            rule: str = "aggregation") -> torch.Tensor:
    """Like :func:`coordinatewise`, for rules that weigh the clients: ``reduce(values, cum)``
    gets each column block's sorted (c, n) values and the cumulative ``shares`` (n,) of that
    sorted order (last column 1), and returns (c,). Ties keep the client order (stable sort)."""
    x = updates.numpy()
    w = shares.double().numpy()
    device = _DEVICE.get()
    n, d = x.shape
    c = sort_block_columns(n)
    out = np.empty(d, dtype=x.dtype)
    for s in range(0, d, c):
        e = min(d, s + c)
        block = np.ascontiguousarray(x[:, s:e].T)
        if device is None:
            order = np.argsort(block, axis=1, kind="stable")
            values = np.take_along_axis(block, order, axis=1)
        else:
            ranked = to_kernel_device(torch.from_numpy(block), device).sort(dim=1, stable=True)
            values, order = ranked.values.cpu().numpy(), ranked.indices.cpu().numpy()
        if not (np.isfinite(values[:, 0]).all() and np.isfinite(values[:, -1]).all()):
            require_finite(rule, "updates", updates)
        cum = np.cumsum(w[order], axis=1)
        cum /= cum[:, -1:]
        out[s:e] = reduce(values, cum)
    return torch.from_numpy(out)


def krum_scores(dist: torch.Tensor, f: int, members: torch.Tensor | None = None) -> torch.Tensor:
    """Krum scores on a float64 distance matrix, optionally restricted to ``members`` (bool (n,)).

        score(i) = Σ_{j ∈ N_i} ‖x_i − x_j‖²,  N_i = the k = max(1, r − f − 2) nearest other members

    with r the number of members (r = n without ``members``). Non-members get score +inf.
    The clamp k >= 1 only matters inside Bulyan's recursion, where the shrinking set may hold
    fewer than f + 3 members (it is also what Flower's legacy Bulyan does).
    """
    n = dist.shape[0]
    if members is None:
        members = torch.ones(n, dtype=torch.bool)
    r = int(members.sum())
    if r == 1:
        return torch.where(members, 0.0, torch.inf).double()
    k = max(1, r - f - 2)
    masked = dist.clone()
    masked[:, ~members] = torch.inf
    masked.fill_diagonal_(torch.inf)
    nearest = torch.topk(masked, k, dim=1, largest=False, sorted=False).values
    scores = nearest.sum(dim=1)
    return torch.where(members, scores, torch.inf)


def lowest(scores: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of the m lowest scores; ties go to the lower index (stable)."""
    return torch.sort(scores, stable=True).indices[:m]


# |cos| above 1 − PARALLEL_TOL is float32 rounding of parallel rows (unit rows in float32, GEMM in
# float32: errors of a few 1e-7); FoolsGold's α / max α would otherwise blow that noise up.
PARALLEL_TOL = 1e-6


def _scaled_norms(rows: torch.Tensor) -> torch.Tensor:
    """(k,) float64 norms of rows whose plain sum of squares over- or underflows: rows / peak."""
    peak = rows.abs().amax(dim=1)
    scaled = rows / torch.where(peak > 0, peak, 1.0)[:, None]
    return peak.double() * torch.linalg.vector_norm(scaled, dim=1).double()


def row_norms(updates: torch.Tensor) -> torch.Tensor:
    """(n,) float64 Euclidean norms of the rows.

    One pass in the updates' dtype; the rare rows whose sum of squares overflowed (entries above
    ~1e19 in float32) or may have underflowed (a norm below 100·sqrt(smallest normal), 1e-17 in
    float32) are redone scaled by their largest |entry|.
    """
    norms = torch.linalg.vector_norm(updates, dim=1)
    tiny = 100.0 * torch.finfo(updates.dtype).tiny ** 0.5
    bad = ~torch.isfinite(norms) | (norms < tiny)
    norms = norms.double()
    if bool(bad.any()):
        norms[bad] = _scaled_norms(updates[bad])
    return norms


class UnitRows:
    """The rows of ``updates`` scaled to unit norm, column block by column block, without an
    (n, d) copy; zero rows stay zero.

    A division by the norm (never a multiplication by its reciprocal, so a row with one non-zero
    entry becomes exactly ±e_k); the rare rows whose norm is outside the dtype's normal range are
    first divided by their largest |entry| (those rows alone are kept whole)."""

    def __init__(self, updates: torch.Tensor, norms: torch.Tensor) -> None:
        info = torch.finfo(updates.dtype)
        self.updates = updates
        self.nonzero = norms > 0
        divisor = torch.where(self.nonzero, norms, 1.0)
        self.divisor = divisor.to(updates.dtype)[:, None]
        extreme = (divisor > info.max / 4) | (divisor < info.tiny)
        self.extreme = torch.nonzero(extreme).flatten()
        self.extreme_rows = None
        if self.extreme.numel():
            rows = updates[self.extreme]
            rows = rows / rows.abs().amax(dim=1, keepdim=True)
            self.extreme_rows = rows / torch.linalg.vector_norm(rows, dim=1, keepdim=True)

    @property
    def shape(self) -> torch.Size:
        return self.updates.shape

    def columns(self, start: int, stop: int) -> torch.Tensor:
        """(n, stop − start) the unit rows' columns [start, stop), a new contiguous tensor."""
        block = self.updates[:, start:stop] / self.divisor
        if self.extreme_rows is not None:
            block[self.extreme] = self.extreme_rows[:, start:stop]
        return block

    def row(self, i: int) -> torch.Tensor:
        """(d,) unit row i."""
        hit = torch.nonzero(self.extreme == i).flatten()
        if self.extreme_rows is not None and hit.numel():
            return self.extreme_rows[int(hit[0])]
        return self.updates[i] / self.divisor[i]


def cosine_similarity(updates: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
    """(n, n) float64 cos(Δ_i, Δ_j), through the shared kernel: cos = 1 − ‖u_i − u_j‖² / 2.

    u_i = Δ_i / ‖Δ_i‖ are unit rows (``norms`` = :func:`row_norms` if already computed). Any pair
    involving a zero row has cosine 0 (diagonal included, as scikit-learn's ``cosine_similarity``
    does); the result is clamped to [−1, 1], and values within ``PARALLEL_TOL`` of ±1 are set to
    ±1: parallel rows are exactly parallel whatever the float32 rounding of the kernel's GEMM
    (and whatever their scale).
    """
    _check_gram_input(updates)
    unit = UnitRows(updates, row_norms(updates) if norms is None else norms)
    distances = distances_from_gram(_centred_gram(unit))  # unit rows: finite, no overflow
    nonzero = unit.nonzero
    cos = (1.0 - distances / 2.0).clamp(-1.0, 1.0)
    cos = torch.where(cos.abs() > 1.0 - PARALLEL_TOL, cos.sign(), cos)
    both = nonzero[:, None] & nonzero[None, :]
    return torch.where(both, cos, torch.zeros_like(cos))


def cosine_distances(updates: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
    """(n, n) 1 − cos(x_i, x_j) in [0, 2], rounded to 10⁻⁶ (float32 rounding must not split
    ties), zero diagonal."""
    distances = (1.0 - cosine_similarity(updates, norms)).clamp(0.0, 2.0)
    distances = torch.round(distances, decimals=6)
    distances.fill_diagonal_(0.0)
    return distances


def median_norm(norms: torch.Tensor) -> float:
    """Median of the norms; an even count averages the two middle values."""
    return float(np.median(norms.cpu().numpy()))


def clipped_mean(updates: torch.Tensor, norms: torch.Tensor, keep: torch.Tensor,
                 bound: float) -> torch.Tensor:
    """(d,) mean over the rows in ``keep`` of Δ_i · min(1, bound / ‖Δ_i‖) (zero if none kept).

    One weighted sum (``kernels.weighted_sum``) in the updates' dtype: no copy of the (n, d) matrix.
    """
    count = int(keep.sum())
    scale = torch.where(norms > bound, bound / norms.clamp_min(1e-300), 1.0)
    coef = torch.where(keep, scale / max(count, 1), 0.0)
    return weighted_sum(coef, updates)


def majority_cluster(distances: np.ndarray, min_cluster_size: int) -> np.ndarray:
    """(n,) bool: members of HDBSCAN's largest cluster on a precomputed distance matrix."""
    from sklearn.cluster import HDBSCAN  # lazy: scikit-learn costs ~1 s to import

    n = distances.shape[0]
    if n < 2:
        return np.ones(n, dtype=bool)
    size = min(min_cluster_size, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labels = HDBSCAN(
            min_cluster_size=max(size, 2),
            min_samples=1,
            allow_single_cluster=True,
            metric="precomputed",
            copy=True,
        ).fit_predict(distances)
    clustered = labels[labels >= 0]
    if clustered.size == 0:
        return np.zeros(n, dtype=bool)
    return labels == np.bincount(clustered).argmax()


def random_column_indices(d: int, size: int, generator: torch.Generator) -> torch.Tensor | None:
    """``size`` distinct random column indices of d, sorted (a streaming gather); None when
    ``size >= d`` (every column, no draw)."""
    if size >= d:
        return None
    return torch.randperm(d, generator=generator)[:size].sort().values


def random_columns(updates: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """(n, size) copy of ``size`` distinct random columns (sorted: a streaming gather)."""
    cols = random_column_indices(updates.shape[1], size, generator)
    return updates if cols is None else updates.index_select(1, cols)


# Column block: c·n values ≈ 2 MiB of float32 at most (the centred block stays in L2 while the
# GEMM reads it). Measured on the 2-core benchmark machine; see simulations/bench/aggregators.py.
_BLOCK_VALUES = 1 << 19


def pairwise_sq_distances(updates: torch.Tensor) -> torch.Tensor:
    """(n, n) float64 squared Euclidean distances between the rows of ``updates`` (n, d).

    D_ij = G_ii + G_jj − 2 G_ij from the centred Gram matrix (:func:`centred_gram`). Exact zero
    diagonal, symmetric, every entry >= 0 and finite. Raises AggregatorError for a non-2-D,
    non-float, empty or non-finite input.
    """
    return distances_from_gram(centred_gram(updates))


def distances_from_gram(gram: torch.Tensor) -> torch.Tensor:
    """D_ij = G_ii + G_jj − 2 G_ij, sanitised (:func:`sanitize_distances`)."""
    sq = gram.diagonal()
    return sanitize_distances(sq[:, None] + sq[None, :] - 2.0 * gram)


def centred_gram(updates: torch.Tensor) -> torch.Tensor:
    """(n, n) float64 G_ij = ⟨x_i − x_r, x_j − x_r⟩, the Gram matrix of the rows centred on a
    reference row r (the row whose norm over the first 4096 coordinates is the median: an honest
    one while fewer than half the rows are outliers).

    Quantities of convex combinations v = Σ α_i x_i come out of G without cancellation even when
    one row is orders of magnitude larger than the rest: ‖v − x_j‖² = αᵀGα − 2(Gα)_j + G_jj has
    no term of the size ‖x_k − x_j‖² that the same formula on distances (Σ α_i D_ij − ½αᵀDα)
    must cancel (geomed's hijack by one row at 1e20).
    """
    _check_gram_input(updates)
    x = updates.detach().contiguous()
    gram = _centred_gram(Rows(x))
    if not bool(torch.isfinite(gram).all()):
        require_finite("pairwise_sq_distances", "updates", x)
        gram = _centred_gram(Rows(x.double()))  # finite rows whose float32 Gram overflowed
    return gram


def _check_gram_input(updates: Any) -> None:
    if not isinstance(updates, torch.Tensor) or updates.ndim != 2:
        raise AggregatorError("pairwise_sq_distances: updates must be a 2-D torch.Tensor (n, d)")
    if not updates.is_floating_point():
        raise AggregatorError(f"pairwise_sq_distances: updates must be float, got {updates.dtype}")
    n, d = updates.shape
    if n == 0 or d == 0:
        raise AggregatorError(f"pairwise_sq_distances: empty updates of shape {(n, d)}")


class Rows:
    """A matrix read column block by column block (the interface :class:`UnitRows` shares)."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    @property
    def shape(self) -> torch.Size:
        return self.x.shape

    def columns(self, start: int, stop: int) -> torch.Tensor:
        return self.x[:, start:stop]

    def row(self, i: int) -> torch.Tensor:
        return self.x[i]


def _centred_gram(rows: Rows | UnitRows) -> torch.Tensor:
    n, d = rows.shape
    head = torch.linalg.vector_norm(rows.columns(0, min(d, 4096)).double(), dim=1).nan_to_num(0.0)
    ref = int(torch.argsort(head, stable=True)[(n - 1) // 2])
    return _centred_blocks(rows, ref)


def _block(n: int, d: int) -> int:
    # n·c float32 ≈ 0.6-2 MiB, so the centred block is written to and read back from L2; at most
    # 8192 columns, because float32 GEMM accumulation error grows with the block length
    # (measured max relative error 1e-5 at 349k columns, 9e-8 at 16k, 1e-8 at 4k; n = 3).
    return min(d, 8192, max(1024, _BLOCK_VALUES // n))


def _centred_blocks(rows: Rows | UnitRows, ref: int) -> torch.Tensor:
    n, d = rows.shape
    c = _block(n, d)
    r = rows.row(ref)
    gram = torch.zeros((n, n), dtype=torch.float64)  # Σ over blocks of the centred Gram
    # One reused (n, c) buffer, itself (never a view of it) the operand: torch's `A @ A.T` takes
    # its symmetric fast path only for a tensor that is not a view (measured 2 ms vs 10 ms at
    # 50 x 2e4), and reuse avoids the page faults of a fresh allocation per block.
    buf = torch.empty((n, c), dtype=r.dtype)
    device = _DEVICE.get()
    for s in range(0, d, c):
        e = min(d, s + c)
        block = torch.sub(rows.columns(s, e), r[s:e], out=buf) if e - s == c else \
            torch.sub(rows.columns(s, e), r[s:e])
        if device is None:
            gram.add_(block @ block.T)  # float32 block product, float64 accumulation
        else:  # accumulated on the host: MPS has no float64
            on_device = to_kernel_device(block, device)
            gram.add_((on_device @ on_device.T).cpu())
    return gram


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
