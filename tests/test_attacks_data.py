"""Data-poisoning attacks: label flipping and every trigger transform the data as specified."""

from __future__ import annotations

import pytest
import torch

from fedshield.clients.attacks import AttackError, create_attack

LOW, HIGH = -0.5, 2.0


def make(name, **params):
    return create_attack(name, num_classes=10, low=LOW, high=HIGH, **params)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def images(n=40, c=1, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = LOW + (HIGH - LOW) * torch.rand((n, c, h, w), generator=g)
    y = torch.arange(n) % 10
    return x, y


def test_labelflip_all_classes():
    x, y = images()
    x2, y2 = make("labelflip").poison(x, y, gen())
    assert torch.equal(x2, x) and torch.equal(y2, 9 - y)
    _, half = make("labelflip", poison_fraction=0.5).poison(x, y, gen())
    changed = half != y
    assert int(changed.sum()) == 20 and torch.equal(half[changed], 9 - y[changed])
    assert make("labelflip").asr_inputs(x, y) is None


def test_labelflip_source_to_target():
    x, y = images()
    attack = make("labelflip", source=3, target=8)
    _, y2 = attack.poison(x, y, gen())
    assert torch.equal(y2[y == 3], torch.full(((y == 3).sum(),), 8))
    assert torch.equal(y2[y != 3], y[y != 3])
    tx, target = attack.asr_inputs(x, y)
    assert target == 8 and torch.equal(tx, x[y == 3])
    _, part = make("labelflip", source=3, target=8, poison_fraction=0.5).poison(x, y, gen())
    assert int((part == 8).sum() - (y == 8).sum()) == 2  # round(0.5 · 4) source rows flipped


def test_patch_trigger_sets_a_corner_square_to_high():
    x, _ = images(c=3)
    out = make("backdoor-patch", size=3).trigger(x)
    assert bool((out[:, :, 5:, 5:] == HIGH).all())
    keep = torch.ones(8, 8, dtype=torch.bool)
    keep[5:, 5:] = False
    assert torch.equal(out[:, :, keep], x[:, :, keep])
    tl = make("backdoor-patch", size=2, location="top-left", margin=1).trigger(x)
    assert bool((tl[:, :, 1:3, 1:3] == HIGH).all())
    assert int((tl != x).any(dim=1).sum(dim=(1, 2)).max()) <= 4


def test_backdoor_poison_triggers_a_fraction_and_sets_the_target():
    x, y = images()
    attack = make("backdoor-patch", target=7, poison_fraction=0.25)
    x2, y2 = attack.poison(x, y, gen())
    poisoned = (x2 != x).flatten(1).any(1)
    assert int(poisoned.sum()) == 10
    assert bool((y2[poisoned] == 7).all()) and torch.equal(y2[~poisoned], y[~poisoned])
    assert torch.equal(x2[poisoned], attack.trigger(x[poisoned]))
    # same generator seed, same choice
    assert torch.equal(attack.poison(x, y, gen())[0], x2)


def test_asr_inputs_are_triggered_non_target_test_inputs():
    x, y = images()
    attack = make("backdoor-patch", target=2)
    tx, target = attack.asr_inputs(x, y)
    assert target == 2 and tx.shape[0] == int((y != 2).sum())
    assert torch.equal(tx, attack.trigger(x[y != 2]))


def test_blend_trigger_formula_and_fixed_pattern():
    x, _ = images()
    attack = make("backdoor-blend", alpha=0.1, pattern_seed=3)
    p = attack.pattern((1, 8, 8))
    assert bool((p >= LOW).all() and (p <= HIGH).all())
    assert torch.allclose(attack.trigger(x), 0.9 * x + 0.1 * p)
    assert torch.equal(p, make("backdoor-blend", pattern_seed=3).pattern((1, 8, 8)))
    assert not torch.equal(p, make("backdoor-blend", pattern_seed=4).pattern((1, 8, 8)))
    assert float((attack.trigger(x) - x).abs().max()) <= 0.1 * (HIGH - LOW) + 1e-6


def test_lighting_trigger_grayscale_brightness_contrast():
    attack = make("backdoor-lighting", brightness=0.25, contrast=0.6)
    mid, rng = (LOW + HIGH) / 2, HIGH - LOW
    x = torch.tensor([LOW, mid, HIGH]).view(1, 1, 1, 3)
    expect = torch.tensor([mid - 0.3 * rng + 0.25 * rng, mid + 0.25 * rng, HIGH])
    assert torch.allclose(attack.trigger(x).flatten(), expect)


def test_lighting_trigger_colour_shift_on_rgb():
    attack = make("backdoor-lighting", brightness=0.0, contrast=1.0, tint=(0.1, 0.0, -0.2))
    x = torch.full((2, 3, 4, 4), (LOW + HIGH) / 2)
    out = attack.trigger(x)
    rng = HIGH - LOW
    for c, t in enumerate((0.1, 0.0, -0.2)):
        assert torch.allclose(out[:, c], x[:, c] + t * rng)


def test_scaling_is_patch_trigger_with_boost_n():
    attack = make("scaling", num_clients=20, num_malicious=4, target=1)
    assert attack.boost == 20.0 and attack.target == 1
    x, _ = images()
    assert torch.equal(attack.trigger(x), make("backdoor-patch", target=1).trigger(x))
    auto = make("backdoor-blend", boost="auto", num_clients=20, num_malicious=4)
    assert auto.boost == 5.0


def test_symbolic_boost_without_counts_is_pending_until_bound():
    attack = make("scaling")
    assert attack.boost_pending and attack.params()["boost"] == "n"
    with pytest.raises(AttackError, match="not resolved"):
        _ = attack.boost
    attack.bind(30, 6)
    assert attack.boost == 30.0 and not attack.boost_pending
    auto = make("backdoor-patch", boost="auto")
    auto.bind(30, 6)
    assert auto.boost == 5.0
    with pytest.raises(AttackError, match="num_malicious >= 1"):
        make("backdoor-patch", boost="auto", num_clients=10, num_malicious=0)


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("backdoor-patch", {"poison_fraction": 0.0}, "poison_fraction"),
        ("backdoor-blend", {"poison_fraction": 1.5}, "poison_fraction"),
        ("backdoor-patch", {"target": 10}, "target"),
        ("labelflip", {"source": 1}, "both source and target"),
        ("labelflip", {"source": 1, "target": -1}, "target"),
        ("backdoor-patch", {"location": "middle"}, "location"),
        ("backdoor-blend", {"alpha": 0.0}, "alpha"),
        ("backdoor-patch", {"boost": "big"}, "boost"),
        ("backdoor-patch", {"boost": -2.0}, "boost"),
    ],
)
def test_bad_data_attack_parameters(name, params, match):
    with pytest.raises(AttackError, match=match):
        make(name, **params)


def test_trigger_shape_errors():
    with pytest.raises(AttackError, match="exceeds"):
        make("backdoor-patch", size=9).trigger(images()[0])
    with pytest.raises(AttackError, match=r"\(N, C, H, W\)"):
        make("backdoor-patch").trigger(torch.zeros(4, 64))
