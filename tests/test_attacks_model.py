"""Model-poisoning attacks: each attack's defining property on constructed tensors."""

from __future__ import annotations

import math

import pytest
import torch

from fedshield.clients.attacks import AttackError, apply_model_attack, create_attack
from fedshield.clients.attacks.fang import krum_select
from fedshield.clients.attacks.model import alie_z


def make(name, **params):
    return create_attack(name, num_classes=10, low=0.0, high=1.0, **params)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def cloud(n, d, seed=0, shift=0.5):
    g = torch.Generator().manual_seed(seed)
    return shift + torch.randn((n, d), generator=g)


def run(attack, malicious, benign, **kw):
    n = malicious.shape[0] + (0 if benign is None else benign.shape[0])
    kw.setdefault("num_clients", n)
    kw.setdefault("f", malicious.shape[0])
    return attack(malicious, benign, generator=gen(), **kw)


def brute_dist(a, b):
    """Loop-based Euclidean distances (independent of the Gram expansion under test)."""
    return torch.tensor([[float((x - y).double().norm()) for y in b] for x in a])


# --- simple attacks --------------------------------------------------------------------------


def test_signflip_reverses_own_updates():
    mal = cloud(3, 7)
    assert torch.equal(run(make("signflip"), mal, None), -mal)
    assert torch.allclose(run(make("signflip", factor=2.5), mal, None), -2.5 * mal)


def test_scale_multiplies_the_norm_by_lambda():
    mal = cloud(2, 50)
    out = run(make("scale", lam=7.0), mal, None, num_clients=10)
    assert torch.allclose(out.norm(dim=1), 7.0 * mal.norm(dim=1), rtol=1e-6)
    auto = run(make("scale"), mal, None, num_clients=10, f=2)  # λ = n / f = 5
    assert torch.allclose(auto.norm(dim=1), 5.0 * mal.norm(dim=1), rtol=1e-6)


def test_gaussian_replace_and_add_are_seeded_noise():
    mal = torch.zeros(4, 20000)
    a = run(make("gaussian", sigma=3.0), mal, None)
    assert torch.equal(a, run(make("gaussian", sigma=3.0), mal, None))  # same generator seed
    assert abs(float(a.std()) - 3.0) < 0.05 and abs(float(a.mean())) < 0.05
    ones = torch.ones(2, 10)
    added = make("gaussian", sigma=0.5, mode="add")(ones, None, num_clients=2, f=2,
                                                     generator=gen(1))
    noise = make("gaussian", sigma=0.5)(ones, None, num_clients=2, f=2, generator=gen(1))
    assert torch.allclose(added, ones + noise)


def test_ipm_is_minus_epsilon_times_the_honest_mean():
    benign, mal = cloud(6, 9, 1), cloud(2, 9, 2)
    out = run(make("ipm", epsilon=0.5), mal, benign)
    expect = -0.5 * torch.cat([benign, mal]).mean(0)
    assert torch.allclose(out, expect.expand(2, -1), atol=1e-6)
    own = run(make("ipm", epsilon=0.5, knowledge="own"), mal, None)
    assert torch.allclose(own, (-0.5 * mal.mean(0)).expand(2, -1), atol=1e-6)


def test_mimic_copies_one_benign_client():
    benign = cloud(5, 6, 3)
    out = run(make("mimic", target=3), cloud(2, 6), benign)
    assert torch.equal(out, benign[3].expand(2, -1))
    # heuristic: the client farthest along the top variance direction
    benign = torch.zeros(6, 4)
    benign[:, 0] = torch.tensor([0.1, -0.1, 0.05, 0.0, 0.1, 8.0])
    attack = make("mimic")
    assert torch.equal(run(attack, cloud(1, 4), benign)[0], benign[5])
    assert attack.last_diagnostics["mimicked"] == 5


# --- ALIE --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "f", "paper", "common"),
    [(50, 10, 0.468, 0.253), (100, 20, 0.496, 0.286), (51, 12, 0.599, 0.361)],
)
def test_alie_z_matches_the_published_values(n, f, paper, common):
    assert alie_z(n, f) == pytest.approx(paper, abs=5e-4)
    assert alie_z(n, f, "common") == pytest.approx(common, abs=5e-4)


def test_alie_is_exactly_mu_minus_z_sigma_per_coordinate():
    benign, mal = cloud(8, 30, 4), cloud(2, 30, 5)
    out = run(make("alie"), mal, benign)  # n = 10, f = 2: s = 4, z = Φ⁻¹(6/10)
    ref = torch.cat([benign, mal]).double()
    z = float(torch.special.ndtri(torch.tensor(0.6, dtype=torch.float64)))
    expect = ref.mean(0) - z * ref.std(0)
    assert torch.allclose(out.double(), expect.expand(2, -1), atol=1e-6)
    fixed = run(make("alie", z=1.5, knowledge="own"), mal, None)
    expect_own = mal.double().mean(0) - 1.5 * mal.double().std(0)
    assert torch.allclose(fixed.double(), expect_own.expand(2, -1), atol=1e-6)


def test_alie_refuses_undefined_z():
    with pytest.raises(AttackError, match="explicit z"):
        run(make("alie"), cloud(6, 3), cloud(4, 3))  # f = 6 of n = 10: s = 0
    with pytest.raises(AttackError, match="at least 2"):
        run(make("alie", knowledge="own"), cloud(1, 3), None, num_clients=10)


# --- Min-Max / Min-Sum ---------------------------------------------------------------------------


def _quadratic_root(a, b, c, bound):
    """Largest γ ≥ 0 with a + 2γb + γ²c ≤ bound (a ≤ bound)."""
    return (-b + math.sqrt(b * b - c * (a - bound))) / c


def _minmax_setup(perturbation):
    benign, mal = cloud(9, 40, 6), cloud(3, 40, 7)
    ref = torch.cat([benign, mal]).double()
    mu = ref.mean(0)
    p = {"std": -ref.std(0), "sign": -torch.sign(mu), "unit": -mu / mu.norm()}[perturbation]
    return benign, mal, ref, mu, p


@pytest.mark.parametrize("perturbation", ["std", "sign", "unit"])
def test_minmax_respects_its_bound_and_gamma_is_maximal(perturbation):
    benign, mal, ref, mu, p = _minmax_setup(perturbation)
    attack = make("minmax", perturbation=perturbation)
    out = run(attack, mal, benign)
    gamma = attack.last_diagnostics["gamma"]
    assert torch.allclose(out.double(), (mu + gamma * p).expand(3, -1), atol=1e-5)
    bound = float(brute_dist(ref, ref).max())
    assert float(brute_dist(out[:1], ref).max()) <= bound + 1e-4
    # maximal: the closed-form γ* = min_i root of ‖μ + γp − x_i‖² = bound², within tolerance
    diff = mu - ref
    roots = [
        _quadratic_root(float(dv @ dv), float(dv @ p), float(p @ p), bound**2) for dv in diff
    ]
    gstar = min(roots)
    assert gstar < 19.0  # inside the search range [0, 20)
    assert gstar - 2e-5 <= gamma <= gstar + 1e-9
    assert float(((mu + (gamma + 3e-5) * p) - ref).norm(dim=1).max()) > bound


@pytest.mark.parametrize("bound_rule", ["max", "min"])
def test_minsum_respects_its_bound_and_gamma_is_maximal(bound_rule):
    benign, mal, ref, mu, p = _minmax_setup("std")
    attack = make("minsum", bound=bound_rule)
    out = run(attack, mal, benign)
    gamma = attack.last_diagnostics["gamma"]
    sums = (brute_dist(ref, ref) ** 2).sum(1)
    limit = float(sums.max() if bound_rule == "max" else sums.min())
    assert attack.last_diagnostics["bound"] == pytest.approx(limit, rel=1e-6)
    assert float((brute_dist(out[:1].double(), ref) ** 2).sum()) <= limit * (1 + 1e-6)
    diff = mu - ref
    n = ref.shape[0]
    gstar = _quadratic_root(float((diff * diff).sum()), float((diff @ p).sum()),
                            n * float(p @ p), limit)
    assert gstar - 2e-5 <= gamma <= gstar + 1e-9


def test_minsum_min_bound_is_stricter_than_max():
    benign, mal, *_ = _minmax_setup("std")
    a, b = make("minsum", bound="max"), make("minsum", bound="min")
    run(a, mal, benign)
    run(b, mal, benign)
    assert b.last_diagnostics["gamma"] < a.last_diagnostics["gamma"]


def test_minmax_tailored_calls_the_aggregator():
    benign, mal = cloud(9, 10, 8), cloud(3, 10, 9)
    calls = []

    def mean_rule(updates):
        from types import SimpleNamespace

        calls.append(updates.shape)
        return SimpleNamespace(update=updates.mean(0), accepted=None)

    attack = make("minmax", objective="tailored")
    run(attack, mal, benign, aggregator=mean_rule)
    assert calls and all(s == (12, 10) for s in calls)  # the round: 3 crafted + 9 benign rows
    assert attack.last_diagnostics["aggregator_calls"] == len(calls)
    with pytest.raises(AttackError, match="needs the aggregator"):
        run(make("minmax", objective="tailored"), mal, benign)


# --- Fang ---------------------------------------------------------------------------------------


def _brute_krum(updates, f):
    n = updates.shape[0]
    d = brute_dist(updates, updates) ** 2
    scores = [sorted(float(v) for j, v in enumerate(row) if j != i)[: n - f - 2]
              for i, row in enumerate(d)]
    return int(torch.tensor([sum(s) for s in scores]).argmin())


def test_fang_krum_crafted_update_is_selected_by_local_krum():
    benign, mal = cloud(8, 20, 10), cloud(3, 20, 11)
    attack = make("fang-krum")
    out = run(attack, mal, benign)
    diag = attack.last_diagnostics
    assert diag["selected"] and 0 < diag["lambda"] <= diag["lambda_upper"]
    steps = round(math.log2(diag["lambda_upper"] / diag["lambda"]))
    assert diag["lambda"] == pytest.approx(diag["lambda_upper"] / 2**steps)
    s = torch.sign(torch.cat([benign, mal]).mean(0))
    assert torch.allclose(out[0], -diag["lambda"] * s)
    assert float((out[1:] - out[0]).norm(dim=1).max()) <= 1e-5 + 1e-7  # supporters within ε
    round_ = torch.cat([out, benign])
    assert _brute_krum(round_, 3) < 3
    assert krum_select(round_, 3) == _brute_krum(round_, 3)


def test_fang_krum_is_the_update_the_real_krum_selects():
    from fedshield import aggregators
    benign, mal = cloud(8, 20, 12), cloud(3, 20, 13)
    rule = aggregators.create("krum", f=3)
    out = run(make("fang-krum"), mal, benign, aggregator=rule)
    agg = rule(torch.cat([out, benign]))
    assert bool(agg.accepted[:3].any()) and not bool(agg.accepted[3:].any())
    chosen = int(torch.nonzero(agg.accepted)[0])
    assert torch.allclose(agg.update, out[chosen])


def test_fang_krum_lambda_upper_bound_formula():
    # 3 benign deltas in d = 4, n = 5 clients, c = 1: k = n - c - 2 = 2 nearest, n - 2c - 1 = 2
    rest = torch.tensor([[0.0, 0, 0, 0], [1.0, 0, 0, 0], [0.0, 2, 0, 0]])
    from fedshield.clients.attacks.fang import FangKrum

    lam = FangKrum.lambda_upper(rest, n=5, c=1)
    sums = [1 + 2, 1 + math.sqrt(5), 2 + math.sqrt(5)]  # Σ of the 2 nearest distances per row
    assert lam == pytest.approx(min(sums) / (2 * 2) + 2.0 / 2)


def test_fang_trim_full_knowledge_hand_computed():
    ref = torch.tensor(
        [[1.0, -1.0, -1.0, 1.0], [2.0, -2.0, 2.0, -5.0], [3.0, -3.0, 3.0, -3.0]]
    )
    # means: +, -, +, -;  min / max: [1, -3, -1, -5] / [3, -1, 3, 1]
    # s=+1: col0 min 1 > 0 -> 1/2; col2 min -1 <= 0 -> -2; s=-1: col1 max -1 <= 0 -> -0.5;
    # col3 max 1 > 0 -> 2
    out = run(make("fang-trim"), ref[2:], ref[:2])
    assert torch.allclose(out, torch.tensor([[0.5, -0.5, -2.0, 2.0]]))
    rnd = run(make("fang-trim", randomize=True, b=3.0), ref[2:].expand(50, -1), ref[:2])
    lo = torch.tensor([1 / 3, -1.0, -3.0, 1.0])
    hi = torch.tensor([1.0, -1 / 3, -1.0, 3.0])
    assert bool(((rnd >= lo - 1e-6) & (rnd <= hi + 1e-6)).all())


def test_fang_trim_partial_knowledge():
    mal = cloud(4, 12, 14)
    out = run(make("fang-trim", knowledge="own", k=3.5), mal, None)
    mu, sd = mal.double().mean(0), mal.double().std(0, correction=0)
    assert torch.allclose(out.double(), (mu - 3.5 * sd * torch.sign(mu)).expand(4, -1), atol=1e-6)
    rnd = run(make("fang-trim", knowledge="own"), mal, None).double()
    k = (mu - rnd) / (sd * torch.sign(mu))
    assert bool(((k >= 3 - 1e-5) & (k <= 4 + 1e-5)).all())


# --- the adversary stage -------------------------------------------------------------------------


def test_apply_model_attack_rewrites_only_malicious_rows():
    updates = cloud(6, 5, 15)
    mask = torch.tensor([False, True, False, False, True, False])
    out = apply_model_attack(updates, mask, make("ipm"), generator=gen())
    assert torch.equal(out[~mask], updates[~mask])
    expect = -0.1 * updates.mean(0)  # omniscient reference = every honest row
    assert torch.allclose(out[mask], expect.expand(2, -1), atol=1e-6)
    assert torch.equal(apply_model_attack(updates, torch.zeros(6, dtype=torch.bool),
                                          make("ipm"), generator=gen()), updates)


def test_apply_model_attack_hides_benign_rows_from_own_knowledge():
    seen = {}
    attack = make("signflip")
    original = attack.craft

    def spy(malicious, benign, **kw):
        seen["benign"] = benign
        return original(malicious, benign, **kw)

    attack.craft = spy
    apply_model_attack(cloud(4, 3), torch.tensor([True, False, False, True]), attack,
                       generator=gen())
    assert seen["benign"] is None


def test_apply_model_attack_errors():
    updates = cloud(3, 4)
    with pytest.raises(AttackError, match="no benign update"):
        apply_model_attack(updates, torch.ones(3, dtype=torch.bool), make("alie"),
                           generator=gen())
    with pytest.raises(AttackError, match="malicious_mask"):
        apply_model_attack(updates, torch.tensor([1, 0, 0]), make("ipm"), generator=gen())
    with pytest.raises(AttackError, match="needs the benign"):
        make("minmax")(cloud(2, 4), None, num_clients=5, f=2, generator=gen())


def test_chunked_float64_statistics_match_brute_force(monkeypatch):
    from fedshield.clients.attacks import _linalg

    monkeypatch.setattr(_linalg, "CHUNK", 7)  # force many column chunks
    a, b = cloud(5, 30, 16), cloud(3, 30, 17)
    assert torch.allclose(_linalg.sq_dists(a), brute_dist(a, a).double() ** 2, atol=1e-9)
    assert torch.allclose(_linalg.sq_dists(a, b), brute_dist(a, b).double() ** 2, atol=1e-9)
    assert torch.allclose(_linalg.std("t", a), a.double().std(0), atol=1e-12)
    mu, p = a.double().mean(0), torch.linspace(-1, 1, 30, dtype=torch.float64)
    off_a, off_b = _linalg.offsets_from(a, mu, p)
    assert torch.allclose(off_a, ((mu - a.double()) ** 2).sum(1))
    assert torch.allclose(off_b, (mu - a.double()) @ p)


def test_rules_needing_a_reference_fall_back_to_the_local_surrogate():

    class NeedsReference:
        needs_reference = True

        def __call__(self, updates):
            raise AssertionError("must not be called without the server reference")

    benign, mal = cloud(8, 20, 10), cloud(3, 20, 11)
    attack = make("fang-krum")
    run(attack, mal, benign, aggregator=NeedsReference())
    assert attack.last_diagnostics["selected"]  # decided by the local Krum
    tailored = make("minmax", objective="tailored")
    run(tailored, mal, benign, aggregator=NeedsReference())
    agnostic = make("minmax")
    run(agnostic, mal, benign)
    assert tailored.last_diagnostics["fallback"] == "agnostic"
    assert tailored.last_diagnostics["gamma"] == agnostic.last_diagnostics["gamma"]


def test_minmax_tailored_against_krum_keeps_the_crafted_update_selected():
    from fedshield import aggregators
    benign, mal = cloud(9, 20, 18), cloud(3, 20, 19)
    rule = aggregators.create("krum", f=3)
    attack = make("minmax", objective="tailored")
    out = run(attack, mal, benign, aggregator=rule)
    gamma = attack.last_diagnostics["gamma"]
    assert gamma > 0
    assert bool(rule(torch.cat([out, benign])).accepted[:3].any())
    mu, p = attack_parts(benign, mal)
    beyond = (mu + (gamma + 3e-5) * p).float().expand(3, -1)
    assert not bool(rule(torch.cat([beyond, benign])).accepted[:3].any())


def attack_parts(benign, mal):
    ref = torch.cat([benign, mal]).double()
    return ref.mean(0), -ref.std(0)
