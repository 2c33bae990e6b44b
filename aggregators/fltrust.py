"""FLTrust (Cao, Fang, Liu, Gong, NDSS 2021, "FLTrust: Byzantine-robust Federated Learning via
Trust Bootstrapping")."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from fedshield.aggregators.base import Aggregation, AggregatorError, Context, Rule, register
from fedshield.aggregators.kernels import row_norms, weighted_sum


@register
class FLTrust(Rule):
    """FLTrust: ReLU-cosine trust against the server's own update, magnitudes normalised.

        TS_i = ReLU(cos(x_i, g_0)) = max(0, ⟨x_i, g_0⟩ / (‖x_i‖ ‖g_0‖))
        update = Σ_i TS_i · (‖g_0‖ / ‖x_i‖) · x_i  /  Σ_j TS_j

    Cao et al. 2021, Alg. 1 (as in the official MXNet code): g_0 is the server's update on its
    small clean root set, given as context ``reference`` (d,) — the server must compute it every
    round, hence ``needs_reference = True``. The server's global learning rate is applied by the
    caller. ``weights`` are TS_i / Σ TS (the clients' shares), ``accepted`` is TS_i > 0.

    Documented fallbacks instead of the paper's division by zero: a client with ‖x_i‖ = 0 gets
    TS_i = 0; if ‖g_0‖ = 0 or every TS_i = 0 (no client points within 90° of the reference), the
    update is the zero vector (the model is kept) and ``diagnostics["fallback"]`` says why.
    """

    name: ClassVar[str] = "fltrust"
    needs_reference: ClassVar[bool] = True
    examples: ClassVar[tuple[dict[str, Any], ...]] = ({},)

    def aggregate(self, x: torch.Tensor, ctx: Context) -> Aggregation:
        if ctx.reference is None:
            raise AggregatorError(
                "fltrust: needs context 'reference' (the server's update on its root dataset, "
                "shape (d,))"
            )
        n = x.shape[0]
        g0 = ctx.reference
        ref_norm = float(row_norms(g0[None])[0])
        norms = row_norms(x)
        zero = torch.zeros(n, dtype=torch.float64)
        if ref_norm == 0.0:
            return self._fallback(x, zero, "reference update has zero norm", ref_norm)
        dots = (x @ g0).double()
        if not bool(torch.isfinite(dots).all()):
            dots = x.double() @ g0.double()
        safe = torch.where(norms > 0, norms, 1.0)
        cos = torch.where(norms > 0, dots / (safe * ref_norm), 0.0).clamp(-1.0, 1.0)
        trust = cos.clamp(min=0.0)
        total = float(trust.sum())
        if total == 0.0:
            return self._fallback(x, trust, "no client has positive cosine with the reference",
                                  ref_norm, cos)
        coeff = trust * (ref_norm / safe) / total
        return Aggregation(
            update=weighted_sum(coeff, x, rule=self.name), accepted=trust > 0,
            weights=(trust / total).to(x.dtype),
            diagnostics={"trust": trust.tolist(), "cosine": cos.tolist(),
                         "reference_norm": ref_norm},
        )

    @staticmethod
    def _fallback(x: torch.Tensor, trust: torch.Tensor, why: str, ref_norm: float,
                  cos: torch.Tensor | None = None) -> Aggregation:
        n, d = x.shape
        diag: dict[str, Any] = {"fallback": why, "reference_norm": ref_norm,
                                "trust": trust.tolist()}
        if cos is not None:
            diag["cosine"] = cos.tolist()
        return Aggregation(update=torch.zeros(d, dtype=x.dtype),
                           accepted=torch.zeros(n, dtype=torch.bool),
                           weights=torch.zeros(n, dtype=x.dtype), diagnostics=diag)
