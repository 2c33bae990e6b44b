"""FoolsGold: sybils' weight goes to 0, hand-computed logit weights, history kept by client id."""

import math

import numpy as np
import pytest
import torch

from fedshield import aggregators
from fedshield.aggregators import AggregatorError
from fedshield.aggregators.foolsgold import foolsgold_weights


def reference_weights(h: np.ndarray, kappa: float = 1.0) -> np.ndarray:
    """FoolsGold's published pseudocode, loop by loop (DistributedML/FoolsGold), for comparison."""
    n = h.shape[0]
    unit = h / np.linalg.norm(h, axis=1, keepdims=True)
    cs = unit @ unit.T - np.eye(n)
    maxcs = cs.max(axis=1)
    for i in range(n):
        for j in range(n):
            if i != j and maxcs[i] < maxcs[j]:
                cs[i, j] = cs[i, j] * maxcs[i] / maxcs[j]
    wv = np.clip(1 - cs.max(axis=1), 0, 1)
    wv = wv / wv.max()
    wv[wv == 1] = 0.99
    with np.errstate(divide="ignore"):
        wv = kappa * (np.log(wv / (1 - wv)) + 0.5)
    wv[np.isinf(wv) & (wv > 0)] = 1
    return np.clip(np.nan_to_num(wv, neginf=0.0), 0, 1)


def test_identical_updates_get_zero_weight():
    gen = torch.Generator().manual_seed(0)
    honest = torch.randn(6, 40, generator=gen)
    sybil = torch.randn(40, generator=gen).expand(4, 40)
    agg = aggregators.create("foolsgold")(torch.cat([honest, sybil]))
    assert agg.weights[6:].tolist() == [0.0] * 4
    assert agg.accepted.tolist() == [True] * 6 + [False] * 4
    assert (agg.weights[:6] > 0).all()
    assert float(agg.weights.sum()) == pytest.approx(1.0)


def test_hand_computed_two_sybils_one_honest():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    agg = aggregators.create("foolsgold")(x)
    # cs01 = 1 → α = 0 for both; client 2: α = 1 → 0.99 → ln 99 + 0.5 > 1 → 1
    assert agg.diagnostics["alpha"] == [0.0, 0.0, 1.0]
    assert agg.update.tolist() == [0.0, 1.0]


def test_hand_computed_intermediate_logit():
    # a, b at 60° (cos 0.5), c orthogonal to both: α = [0.5, 0.5, 1] → /max, 1 → 0.99;
    # logit: ln(0.5/0.5) + 0.5 = 0.5 for a and b, ln(99) + 0.5 → clipped to 1 for c.
    x = torch.tensor([[1.0, 0.0, 0.0], [0.5, math.sqrt(3) / 2, 0.0], [0.0, 0.0, 1.0]])
    agg = aggregators.create("foolsgold")(x)
    assert agg.diagnostics["alpha"] == pytest.approx([0.5, 0.5, 1.0])
    expected = (0.5 * x[0] + 0.5 * x[1] + x[2]) / 2.0
    torch.testing.assert_close(agg.update, expected)
    unnormalised = aggregators.create("foolsgold", normalize=False)(x)
    torch.testing.assert_close(unnormalised.update, 2.0 * expected)


def test_kappa_scales_the_logit():
    x = torch.tensor([[1.0, 0.0, 0.0], [0.5, math.sqrt(3) / 2, 0.0], [0.0, 0.0, 1.0]])
    agg = aggregators.create("foolsgold", kappa=1.5)(x)
    assert agg.diagnostics["alpha"] == pytest.approx([0.75, 0.75, 1.0])


def test_matches_reference_pseudocode_with_pardoning():
    gen = np.random.default_rng(5)
    for _ in range(20):
        h = gen.normal(size=(8, 6)) + gen.normal(size=6)  # correlated: pardoning matters
        ours = foolsgold_weights(torch.from_numpy(h), 1.0).numpy()
        np.testing.assert_allclose(ours, reference_weights(h), atol=1e-9)


def test_history_survives_client_churn():
    gen = torch.Generator().manual_seed(3)
    r1, r2, r3 = (torch.randn(3, 10, generator=gen) for _ in range(3))
    rule = aggregators.create("foolsgold")
    rule(r1, client_ids=["a", "b", "c"])
    rule(r2[:2], client_ids=["b", "d"])          # a and c absent
    agg = rule(r3, client_ids=["c", "d", "a"])   # a and c return, in another order
    expected = foolsgold_weights(torch.stack([r1[2] + r3[0], r2[1] + r3[1], r1[0] + r3[2]]), 1.0)
    assert agg.diagnostics["alpha"] == pytest.approx(expected.tolist())
    assert agg.diagnostics["known_clients"] == 4
    rule.reset()
    fresh = rule(r3, client_ids=["c", "d", "a"])
    assert fresh.diagnostics["alpha"] == pytest.approx(foolsgold_weights(r3, 1.0).tolist())


def _noisy_sybil_rounds(rule, rounds: int = 8):
    gen = torch.Generator().manual_seed(4)
    poison = torch.randn(200, generator=gen)
    ids = ["h0", "h1", "h2", "h3", "s0", "s1"]
    for _ in range(rounds):
        honest = torch.randn(4, 200, generator=gen)
        sybils = poison + torch.randn(2, 200, generator=gen)
        agg = rule(torch.cat([honest, sybils]), client_ids=ids)
    return agg


def test_history_catches_sybils_that_vary_per_round():
    # each round the two sybils send a shared poison direction plus fresh noise (cos ≈ 0.5 in
    # one round); their accumulated histories converge, and FoolsGold drives both weights to zero
    with_history = _noisy_sybil_rounds(aggregators.create("foolsgold"))
    assert with_history.diagnostics["alpha"][4:] == [0.0, 0.0]
    assert with_history.diagnostics["alpha"][:4] == [1.0] * 4
    one_round = _noisy_sybil_rounds(aggregators.create("foolsgold", use_history=False))
    assert min(one_round.diagnostics["alpha"][4:]) > 0.2


def test_use_history_false_compares_only_this_round():
    rule = aggregators.create("foolsgold", use_history=False)
    rule(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), client_ids=[1, 2, 3])
    agg = rule(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]), client_ids=[1, 2, 3])
    assert agg.diagnostics["alpha"] == [1.0, 0.0, 0.0]


def test_all_alike_gives_zero_update_not_nan():
    agg = aggregators.create("foolsgold")(torch.ones(4, 3))
    assert torch.equal(agg.update, torch.zeros(3))
    assert agg.weights.tolist() == [0.0] * 4


def test_client_id_errors():
    rule = aggregators.create("foolsgold")
    with pytest.raises(AggregatorError, match="client_ids"):
        rule(torch.ones(2, 3), client_ids=["a"])
    with pytest.raises(AggregatorError, match="unknown context"):
        rule(torch.ones(2, 3), ids=["a", "b"])
    with pytest.raises(AggregatorError, match="distinct"):
        rule(torch.ones(2, 3), client_ids=["a", "a"])
    rule(torch.ones(1, 3), client_ids=["a"])
    with pytest.raises(AggregatorError, match="dimension"):
        rule(torch.ones(1, 4), client_ids=["a"])
    rule.reset()  # a new model: start over
    assert rule(torch.ones(1, 4), client_ids=["a"]).update.tolist() == [1.0] * 4


def test_state_survives_a_checkpoint_round_trip(tmp_path):
    # the server checkpoints vars(rule) of a stateful rule with torch.save and restores it
    gen = torch.Generator().manual_seed(6)
    r1, r2 = torch.randn(4, 12, generator=gen), torch.randn(4, 12, generator=gen)
    ids = ["a", "b", "c", "d"]
    live = aggregators.create("foolsgold")
    live(r1, client_ids=ids)
    torch.save(dict(vars(live)), tmp_path / "state.pt")
    restored = aggregators.create("foolsgold")
    vars(restored).update(torch.load(tmp_path / "state.pt", weights_only=False))
    assert torch.equal(restored(r2, client_ids=ids).update, live(r2, client_ids=ids).update)


@pytest.mark.parametrize(
    ("params", "word"),
    [({"kappa": 0}, "kappa"), ({"kappa": "1"}, "kappa"), ({"normalize": 1}, "normalize"),
     ({"use_history": None}, "use_history")],
)
def test_bad_parameters_are_named(params, word):
    with pytest.raises(AggregatorError, match=word):
        aggregators.create("foolsgold", **params)


def test_is_stateful():
    assert aggregators.create("foolsgold").stateful
