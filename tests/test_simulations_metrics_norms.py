"""norm_stats computes row norms on the float32 matrix (no float64 copy of it) and agrees with
the float64 computation to float tolerance, including rows at the float32 range limits."""

import torch
from torch.overrides import TorchFunctionMode

from fedshield.simulations.metrics import norm_stats


def float64_stats(updates, malicious):
    norms = torch.linalg.vector_norm(updates.double(), dim=1)
    return {"norm_benign": float(norms[~malicious].mean()),
            "norm_malicious": float(norms[malicious].mean()), "norm_max": float(norms.max())}


class LargestFloat64(TorchFunctionMode):
    """Records the element count of the largest float64 tensor any torch call produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                self.largest = max(self.largest, t.numel())
        return out


def test_norms_match_float64_and_make_no_float64_copy():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3000, generator=g) * torch.logspace(-3, 3, 40).unsqueeze(1)
    mal = torch.arange(40) % 5 == 0
    mode = LargestFloat64()
    with mode:
        got = norm_stats(x, mal)
    assert mode.largest < x.shape[1]  # only (n,)-sized float64 vectors; .double() of x: n·d
    want = float64_stats(x, mal)
    for key, value in want.items():
        assert abs(got[key] - value) <= 1e-6 * value, key


def test_rows_at_the_float32_limits_are_recomputed_in_float64():
    x = torch.randn(5, 1000, generator=torch.Generator().manual_seed(1))
    x[1] *= 1e-22  # squares underflow float32
    x[2] *= 1e21  # squares overflow float32: float32 norm inf
    x[3] = 0.0
    mal = torch.tensor([False, True, True, False, False])
    got, want = norm_stats(x, mal), float64_stats(x, mal)
    assert got["norm_max"] == want["norm_max"] and got["norm_max"] < float("inf")
    for key in want:
        assert abs(got[key] - want[key]) <= 1e-6 * want[key], key
    tiny = torch.linalg.vector_norm(x[1].double())
    only_tiny = norm_stats(x[[1]], torch.tensor([True]))
    assert abs(only_tiny["norm_malicious"] - float(tiny)) <= 1e-9 * float(tiny)


def test_nan_and_inf_rows_propagate_like_float64():
    x = torch.ones(3, 4)
    x[0, 1] = float("inf")
    assert norm_stats(x, torch.tensor([True, False, False]))["norm_malicious"] == float("inf")
    x[1, 2] = float("nan")
    got = norm_stats(x, torch.tensor([False, True, False]))
    assert got["norm_malicious"] != got["norm_malicious"] and got["norm_benign"] == float("inf")
