"""coordinate_share without a full sort (np.partition + stable tie ranks) equals the stable-sort
definition exactly, on random and on heavily tied inputs."""

import pytest
import torch

from fedshield.server.shares import coordinate_positions, coordinate_share


def sorted_share(updates, malicious, positions):
    """The definition: stable sort along clients, malicious fraction at the chosen ranks."""
    order = torch.sort(updates, dim=0, stable=True).indices
    return float(malicious[order[list(positions)]].double().mean())


def cases():
    g = torch.Generator().manual_seed(7)
    for n in (1, 2, 3, 5, 8, 11, 20):
        for d in (1, 7, 300):
            for kind in ("random", "ties", "constant"):
                if kind == "random":
                    x = torch.randn(n, d, generator=g)
                elif kind == "ties":  # three values only: ties at every bound
                    x = torch.randint(-1, 2, (n, d), generator=g).float()
                else:
                    x = torch.zeros(n, d)
                    x[0, 0] = -0.0
                mal = torch.rand(n, generator=g) < 0.4
                mal[torch.randint(0, n, (1,), generator=g)] = True  # at least one malicious
                yield n, x, mal


@pytest.mark.parametrize("rule,params", [("median", {}), ("trimmedmean", {"f": 1}),
                                         ("trimmedmean", {"f": 3}), ("trimmedmean", {"beta": 0.2})])
def test_partition_share_equals_the_stable_sort_exactly(rule, params):
    checked = 0
    for n, x, mal in cases():
        positions = coordinate_positions(rule, n, params)
        if positions is None:
            continue
        assert coordinate_share(x, mal, positions) == sorted_share(x, mal, positions)
        checked += 1
    assert checked >= 20


def test_hand_computed_ties_go_to_the_lower_client_index():
    # one coordinate, values (1, 1, 1, 0): stable order 3, 0, 1, 2; median positions 1, 2 -> 0, 1
    x = torch.tensor([[1.0], [1.0], [1.0], [0.0]])
    assert coordinate_share(x, torch.tensor([True, False, False, False]), [1, 2]) == 0.5
    assert coordinate_share(x, torch.tensor([False, False, True, False]), [1, 2]) == 0.0
    assert coordinate_share(x, torch.tensor([True, True, False, False]), [1, 2]) == 1.0


def test_no_malicious_client_is_zero_and_all_malicious_is_one():
    x = torch.randn(9, 40, generator=torch.Generator().manual_seed(1))
    assert coordinate_share(x, torch.zeros(9, dtype=torch.bool), [4]) == 0.0
    assert coordinate_share(x, torch.ones(9, dtype=torch.bool), range(2, 7)) == 1.0


def test_nan_and_non_contiguous_positions_fall_back_to_the_sort():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 50, generator=g)
    x[2, 5] = float("nan")
    mal = torch.tensor([True, False, True, False, False, False])
    assert coordinate_share(x, mal, [2, 3]) == sorted_share(x, mal, [2, 3])
    y = torch.randn(6, 50, generator=g)
    assert coordinate_share(y, mal, [0, 5]) == sorted_share(y, mal, [0, 5])
