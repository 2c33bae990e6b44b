"""FoolsGold — Fung, Yoon, Beschastnikh, "The Limitations of Federated Learning in Sybil
Settings", RAID 2020 (arXiv:1808.04866).

Sybils pushing the same poisoning objective send similar updates round after round; FoolsGold
down-weights clients whose *histories* look alike. With H_i = Σ_t Δ_{i,t} (this round included):

    cs_ij = cos(H_i, H_j) for i ≠ j, cs_ii = 0,   v_i = max_j cs_ij
    pardoning: if v_i < v_j then cs_ij ← cs_ij · v_i / v_j
    α_i = 1 − max_j cs_ij, clipped to [0, 1];  α ← α / max_j α_j;  α_i = 1 → 0.99
    α_i ← κ · (ln(α_i / (1 − α_i)) + 0.5), clipped to [0, 1]
    update = Σ_i α_i Δ_i / Σ_i α_i      (``normalize=True``; the reference code's Σ_i α_i Δ_i
                                          when ``normalize=False``)

Identical (sybil) updates have cs = 1, hence α = 0: they get no weight (cosines within 10⁻⁶ of 1,
float32 rounding, count as 1: ``flame.cosine_similarity``). When every α is 0 (all
clients alike), the update is zero: nothing is trusted.

State: one history per client id (``client_ids`` in the call's context), kept across rounds for
every client ever seen — a client that skips rounds keeps its history and resumes it when it
returns; only the clients present in a round are compared. Without ``client_ids`` the row positions
0..n−1 are the ids. ``reset()`` forgets every history. The paper's optional restriction to the
"indicative" output-layer features is not implemented (all coordinates are used).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, ClassVar

import torch

from fedshield.aggregators.base import Aggregation, AggregatorError, Context, Param, Rule, register
from fedshield.aggregators.kernels import cosine_similarity, weighted_sum
from fedshield.aggregators.validation import boolean, positive


def foolsgold_weights(histories: torch.Tensor, kappa: float) -> torch.Tensor:
    """(n,) float64 FoolsGold weights α of the rows of ``histories`` (formula in the module doc)."""
    n = histories.shape[0]
    if n == 1:
        return torch.ones(1, dtype=torch.float64)
    cs = cosine_similarity(histories)
    cs.fill_diagonal_(0.0)  # the reference code's cs − I: maxima are taken with a floor of 0
    v = cs.max(dim=1).values
    pardon = v[:, None] < v[None, :]
    cs = torch.where(pardon, cs * v[:, None] / torch.where(pardon, v[None, :], 1.0), cs)
    alpha = (1.0 - cs.max(dim=1).values).clamp(0.0, 1.0)
    top = alpha.max()
    if top <= 0:
        return torch.zeros(n, dtype=torch.float64)
    alpha = (alpha / top).clamp(max=0.99)
    logit = kappa * (torch.log(alpha) - torch.log1p(-alpha) + 0.5)
    return torch.nan_to_num(logit, nan=0.0, neginf=0.0, posinf=1.0).clamp(0.0, 1.0)


@register
class FoolsGold(Rule):
    """FoolsGold (Fung et al., RAID 2020): per-client history similarity → logit weights.

    Parameters
    ----------
    kappa : float > 0
        Confidence κ of the logit (the paper's and reference code's 1).
    normalize : bool
        Divide the weighted sum by Σα (a weighted mean; default) or return Σ α_i Δ_i.
    use_history : bool
        Compare accumulated histories (the paper) or only this round's updates.
    """

    name: ClassVar[str] = "foolsgold"
    stateful: ClassVar[bool] = True
    robust: ClassVar[bool] = False  # against sybils only: one lone outlier keeps its full weight
    parameters: ClassVar[dict[str, Param]] = {
        "kappa": Param(1.0, positive),
        "normalize": Param(True, boolean),
        "use_history": Param(True, boolean),
    }
    examples: ClassVar[tuple[dict[str, Any], ...]] = ({}, {"use_history": False})

    def reset(self) -> None:
        # one row of ``_history`` per client ever seen; ``_row`` maps a client id to its row
        self._row: dict[Hashable, int] = {}
        self._history: torch.Tensor | None = None

    def _ids(self, n: int, client_ids: Sequence[Hashable] | None) -> list[Hashable]:
        if client_ids is None:
            return list(range(n))
        ids = list(client_ids)  # the length was checked by check_context
        if len(set(ids)) != n:
            raise AggregatorError("foolsgold: client_ids must be distinct within a round")
        return ids

    def _accumulate(self, ids: list[Hashable], updates: torch.Tensor) -> torch.Tensor:
        """H_i += Δ_i for the clients of this round (new clients start at 0); return their H,
        in the round's row order. Memory: the histories themselves plus, only when the round's
        clients are not the newest block of rows in order, a gathered copy of theirs; the
        float32 rows are added one at a time (no float64 copy of the updates)."""
        d = updates.shape[1]
        if self._history is None:  # float64: sums of updates near float32's maximum stay finite
            self._history = torch.zeros(0, d, dtype=torch.float64)
        if self._history.shape[1] != d:
            raise AggregatorError(
                f"foolsgold: the histories have dimension {self._history.shape[1]} but the updates "
                f"have dimension {d}; call reset() when the model changes"
            )
        new = [cid for cid in ids if cid not in self._row]
        if new:
            known = len(self._row)
            self._row.update({cid: known + k for k, cid in enumerate(new)})
            grown = torch.empty(known + len(new), d, dtype=self._history.dtype)
            grown[:known] = self._history
            grown[known:] = 0.0
            self._history = grown
        rows = [self._row[cid] for cid in ids]
        for i, row in enumerate(rows):
            self._history[row] += updates[i]
        first = rows[0]
        if rows == list(range(first, first + len(rows))):
            return self._history[first:first + len(rows)]  # a view
        return self._history.index_select(0, torch.tensor(rows, dtype=torch.int64))

    def aggregate(self, updates: torch.Tensor, ctx: Context) -> Aggregation:
        ids = self._ids(updates.shape[0], ctx.client_ids)
        histories = self._accumulate(ids, updates)
        basis = histories if self.use_history else updates
        alpha = foolsgold_weights(basis, self.kappa)
        total = float(alpha.sum())
        share = alpha / total if total > 0 else torch.zeros_like(alpha)
        combined = weighted_sum(share if self.normalize else alpha, updates)
        return Aggregation(
            update=combined,
            accepted=alpha > 0,
            weights=share,
            diagnostics={"alpha": alpha.tolist(), "known_clients": len(self._row)},
        )
