"""FLDetector — Zhang, Cao, Jia, Gong, "FLDetector: Defending Federated Learning Against Model
Poisoning Attacks via Detecting Malicious Clients", KDD 2022 (arXiv:2207.09209).

A benign client's update is predictable from its previous one and the global model's movement;
a poisoned one is not. With G_t the aggregate the server applied in round t (so the global model
moved by w_{t+1} − w_t ∝ G_t) and g_i^t client i's delta:

1. **Hessian.** The last N pairs s_k = G_{k−1} (the model's move), y_k = G_k − G_{k−1} (the change
   of the global update it caused) give the L-BFGS approximation B of the (update-space) Hessian
   in its compact form (Byrd, Nocedal, Schnabel 1994), σ = y_mᵀs_m / s_mᵀs_m:

       B v = σ v − [σS  Y] M⁻¹ [σSᵀv; Yᵀv],   M = [[σSᵀS, L], [Lᵀ, −D]],

   L the strictly lower triangle of SᵀY, D its diagonal.
2. **Prediction.** ĝ_i^t = g_i^{τ(i)} + B G_{t−1}, g_i^{τ(i)} the client's last update (the
   previous round under full participation).
3. **Suspicion.** d_i^t = ‖ĝ_i^t − g_i^t‖, normalised over the round, d^t / Σ_j d_j^t;
   s_i = the mean of client i's last N normalised distances.
4. **Gap statistics** (Tibshirani, Walther, Hastie 2001) on the scores scaled to [0, 1]: k̂ = the
   smallest k ≤ K with gap(k) ≥ gap(k+1) − s_{k+1}, from B uniform reference sets; k̂ > 1 means an
   attack is under way.
5. **2-means** on the scores; under attack, the cluster with the larger mean is flagged.

1-D k-means is solved exactly here (dynamic programming over the sorted scores, O(k n²)), so
the detector is deterministic; the reference sets come from a generator seeded with ``seed``.

State (checkpointed with the rule, plain data): each client's last update and last N normalised
distances, keyed by the authenticated ``client_ids`` (row positions without them); the N
(s, y) pairs (two (N, d) ring buffers) and the last aggregate. Nothing is flagged before
``warmup`` rounds have been observed, nor for a client seen for the first time (score 0). The
paper removes the detected clients for good and restarts training; here detection is per round
(as FLPoison does), and a composing rule decides what to do with the flags. Memory: one
d-vector per client ever seen, plus 2N + 1 float64 d-vectors.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, ClassVar

import numpy as np
import torch

from fedshield.aggregators.base import AggregatorError, Context, Param
from fedshield.aggregators.detection import Detection, Detector, register_detector
from fedshield.aggregators.validation import non_negative_int, positive_int


def lbfgs_product(S: torch.Tensor, Y: torch.Tensor, v: torch.Tensor,
                  order: list[int] | None = None, *, ss_all: torch.Tensor | None = None,
                  sy_all: torch.Tensor | None = None) -> torch.Tensor:
    """B v for the compact L-BFGS approximation B of the pairs (s_k, y_k) (module docstring):
    ``S``, ``Y`` (m, d) hold the pairs as rows, ``order`` their rows oldest first (default: as
    stored; the detector keeps them in a ring buffer); ``ss_all`` = S Sᵀ and ``sy_all`` = S Yᵀ
    when already known (the detector updates them one pair at a time). 0 when there is no usable
    pair (none, σ not finite and positive, or M singular). No (d, m) copy is made."""
    order = list(range(S.shape[0])) if order is None else order
    if not order:
        return torch.zeros_like(v, dtype=torch.float64)
    v = v.double()
    rows = torch.tensor(order)
    ss_all = S @ S.T if ss_all is None else ss_all  # (m, m) in storage order
    sy_all = S @ Y.T if sy_all is None else sy_all
    ss, sy = ss_all[rows][:, rows], sy_all[rows][:, rows]  # chronological
    newest = order[-1]
    ss_last = float(ss_all[newest, newest])
    sigma = float(sy_all[newest, newest]) / ss_last if ss_last > 0 else float("nan")
    if not (np.isfinite(sigma) and sigma > 0):
        return torch.zeros_like(v)
    lower = torch.tril(sy, diagonal=-1)
    middle = torch.cat([torch.cat([sigma * ss, lower], dim=1),
                        torch.cat([lower.T, -torch.diag(torch.diagonal(sy))], dim=1)], dim=0)
    rhs = torch.cat([sigma * (S @ v)[rows], (Y @ v)[rows]])
    try:
        p = torch.linalg.solve(middle, rhs)
    except RuntimeError:  # singular M: collinear pairs
        return torch.zeros_like(v)
    m = len(order)
    coef_s = torch.zeros(S.shape[0], dtype=torch.float64)
    coef_y = torch.zeros(S.shape[0], dtype=torch.float64)
    coef_s[rows], coef_y[rows] = sigma * p[:m], p[m:]
    product = sigma * v - coef_s @ S - coef_y @ Y
    return product if bool(torch.isfinite(product).all()) else torch.zeros_like(v)


def kmeans_1d(values: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    """Exact k-means of 1-D ``values``: (within-cluster sum of squares, labels ordered by value).

    Optimal clusters of sorted 1-D data are contiguous runs: cost[j][i] = min over the last run
    start of cost[j−1][start−1] + SSE(start..i), from prefix sums."""
    order = np.argsort(values, kind="stable")
    x = values[order].astype(np.float64)
    n = x.size
    k = min(k, n)
    c1 = np.concatenate([[0.0], np.cumsum(x)])
    c2 = np.concatenate([[0.0], np.cumsum(x * x)])
    start = np.arange(n)[:, None]  # run x[a..b], a = start, b = end
    end = np.arange(n)[None, :]
    count = np.where(end >= start, end - start + 1, 1)
    total = c1[end + 1] - c1[start]
    sse = np.where(end >= start, c2[end + 1] - c2[start] - total * total / count, np.inf)
    sse = np.maximum(sse, 0.0)
    cost = sse[0].copy()  # one run x[0..b]
    splits = []
    for _ in range(1, k):
        prev = np.concatenate([[np.inf], cost[:-1]])  # cost of x[0..a−1] with one run fewer
        candidates = prev[:, None] + sse  # [a, b]
        best = np.argmin(candidates, axis=0)
        cost = candidates[best, np.arange(n)]
        splits.append(best)
    labels_sorted = np.zeros(n, dtype=np.int64)
    b = n - 1
    for j in range(k - 1, 0, -1):
        a = int(splits[j - 1][b])
        labels_sorted[a:b + 1] = j
        b = a - 1
    labels = np.empty(n, dtype=np.int64)
    labels[order] = labels_sorted
    return float(cost[n - 1]), labels


def gap_clusters(scores: np.ndarray, max_k: int, references: int,
                 rng: np.random.Generator) -> int:
    """k̂ of the gap statistic (Tibshirani et al. 2001) for 1-D ``scores`` scaled to [0, 1]."""
    n = scores.size
    spread = float(np.ptp(scores)) if n else 0.0
    if n < 3 or spread <= 1e-12:
        return 1
    data = (scores - scores.min()) / spread
    ks = range(1, min(max_k, n - 1) + 1)
    reference = rng.uniform(0.0, 1.0, size=(references, n))
    gap, err = [], []
    for k in ks:
        own = np.log(max(kmeans_1d(data, k)[0], 1e-300))
        ref = np.log(np.maximum([kmeans_1d(r, k)[0] for r in reference], 1e-300))
        gap.append(ref.mean() - own)
        err.append(ref.std() * np.sqrt(1.0 + 1.0 / references))
    for i in range(len(gap) - 1):
        if gap[i] >= gap[i + 1] - err[i + 1]:
            return i + 1
    return len(gap)


@register_detector
class FLDetector(Detector):
    """FLDetector (Zhang et al., KDD 2022): flag the clients whose updates its L-BFGS model of
    the training dynamics cannot predict (module docstring).

    Parameters
    ----------
    window : int ≥ 1
        N: the (s, y) pairs kept and the distances averaged per client (paper: 10).
    warmup : int ≥ 0
        Rounds observed before anything is flagged.
    max_clusters : int ≥ 2
        K of the gap statistic.
    references : int ≥ 1
        B, the uniform reference sets of the gap statistic.
    seed : int
    """

    name: ClassVar[str] = "fldetector"
    stateful: ClassVar[bool] = True
    parameters: ClassVar[dict[str, Param]] = {
        "window": Param(10, positive_int),
        "warmup": Param(10, non_negative_int),
        "max_clusters": Param(4, positive_int),
        "references": Param(20, positive_int),
        "seed": Param(0, non_negative_int),
    }
    examples: ClassVar[tuple[dict[str, Any], ...]] = ({}, {"window": 3, "warmup": 0})

    def setup(self) -> None:
        if self.max_clusters < 2:
            raise AggregatorError(f"fldetector: max_clusters must be >= 2, got "
                                  f"{self.max_clusters!r}")

    def reset(self) -> None:
        self._last: dict[Hashable, torch.Tensor] = {}
        self._distances: dict[Hashable, list[float]] = {}
        self._s: torch.Tensor | None = None  # (window, d) ring buffers of the pairs
        self._y: torch.Tensor | None = None
        self._order: list[int] = []  # their rows, oldest first
        self._ss: torch.Tensor | None = None  # (window, window) S Sᵀ and S Yᵀ of the buffers
        self._sy: torch.Tensor | None = None
        self._aggregate: torch.Tensor | None = None
        self._rounds = 0

    def _check_dimension(self, d: int) -> None:
        kept = self._aggregate if self._aggregate is not None else next(
            iter(self._last.values()), None)
        if kept is not None and kept.shape[0] != d:
            raise AggregatorError(f"fldetector: updates have d = {d} but the kept history has "
                                  f"d = {kept.shape[0]}; call reset() when the model changes")

    def detect(self, x: torch.Tensor, ctx: Context) -> Detection:
        n, d = x.shape
        self._check_dimension(d)
        ids = list(ctx.client_ids) if ctx.client_ids is not None else list(range(n))
        if len(set(ids)) != n:
            raise AggregatorError("fldetector: client_ids must be distinct within a round")
        move = None
        if self._aggregate is not None:
            move = (lbfgs_product(self._s, self._y, self._aggregate, self._order,
                                  ss_all=self._ss, sy_all=self._sy)
                    if self._s is not None else torch.zeros_like(self._aggregate))
        known = [i for i, cid in enumerate(ids) if cid in self._last and move is not None]
        if known:
            current = x if len(known) == n else x[known]
            gaps = prediction_errors([self._last[ids[i]] for i in known], current, move)
            total = float(gaps.sum())
            normalised = (gaps / total if total > 0 else torch.zeros_like(gaps)).tolist()
            for i, value in zip(known, normalised, strict=True):
                history = self._distances.setdefault(ids[i], [])
                history.append(float(value))
                del history[:-self.window]
        for i, cid in enumerate(ids):
            self._last[cid] = x[i].detach().clone()
        self._rounds += 1
        scores = torch.tensor([float(np.mean(self._distances[c])) if self._distances.get(c)
                               else 0.0 for c in ids], dtype=torch.float64)
        flags = torch.zeros(n, dtype=torch.bool)
        clusters = 1
        if self._rounds > self.warmup and known:
            values = scores.numpy()
            rng = np.random.default_rng([self.seed, self._rounds])
            clusters = gap_clusters(values, self.max_clusters, self.references, rng)
            if clusters > 1:
                _, labels = kmeans_1d(values, 2)
                flags = torch.from_numpy(labels == 1)
        return Detection(flags=flags, scores=scores, diagnostics={
            "gap_clusters": clusters, "predicted": len(known), "pairs": len(self._order)})

    def observe(self, aggregate: torch.Tensor) -> None:
        current = aggregate.detach().double().clone()
        if self._aggregate is not None:
            if self._s is None:
                self._s = torch.zeros(self.window, current.shape[0], dtype=torch.float64)
                self._y = torch.zeros_like(self._s)
                self._ss = torch.zeros(self.window, self.window, dtype=torch.float64)
                self._sy = torch.zeros_like(self._ss)
            row = (len(self._order) if len(self._order) < self.window
                   else self._order.pop(0))  # the oldest pair's row is reused
            self._s[row] = self._aggregate
            torch.sub(current, self._aggregate, out=self._y[row])
            self._order.append(row)
            s_dots = self._s @ self._s[row]  # the new pair's products with every stored pair
            self._ss[row], self._ss[:, row] = s_dots, s_dots
            self._sy[row] = self._y @ self._s[row]
            self._sy[:, row] = self._s @ self._y[row]
        self._aggregate = current


def prediction_errors(previous: list[torch.Tensor], current: torch.Tensor,
                      move: torch.Tensor) -> torch.Tensor:
    """(k,) float64 ‖g_prev + move − g_now‖ per row: one in-place pass in the updates' dtype;
    rows whose result overflows it are redone in float64, scaled by their largest entry."""
    diff = torch.stack(previous).to(current.dtype)
    diff.sub_(current).add_(move.to(current.dtype))
    gaps = torch.linalg.vector_norm(diff, dim=1).double()
    for row in torch.nonzero(~torch.isfinite(gaps)).flatten().tolist():
        exact = previous[row].double() + move - current[row].double()
        peak = float(exact.abs().max())
        gaps[row] = peak * float(torch.linalg.vector_norm(exact / peak)) if peak > 0 else 0.0
    return gaps
