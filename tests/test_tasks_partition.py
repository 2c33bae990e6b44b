"""Partitions: disjoint and covering, deterministic, the class skew that α and q promise (measured),
the root set, and clear errors."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedshield.tasks.partition import PartitionError, available_partitions, federated_split

# 10 balanced classes of 1000: shard and group arithmetic is then exact.
LABELS = np.repeat(np.arange(10), 1000)
SCHEMES = ["iid", "dirichlet", "bias", "shards"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_disjoint_covering_deterministic(scheme):
    split = federated_split(LABELS, 20, scheme, seed=3, root_size=100, min_size=5)
    everything = np.concatenate([*split.clients, split.root])
    assert len(everything) == len(LABELS)  # disjoint ...
    np.testing.assert_array_equal(np.sort(everything), np.arange(len(LABELS)))  # ... and covering
    assert len(split.root) == 100 and split.sizes().min() >= 5
    assert all(c.dtype == np.int64 and np.all(np.diff(c) > 0) for c in split.clients)
    again = federated_split(LABELS, 20, scheme, seed=3, root_size=100, min_size=5)
    assert all(np.array_equal(a, b) for a, b in zip(split.clients, again.clients, strict=True))
    np.testing.assert_array_equal(split.root, again.root)
    other = federated_split(LABELS, 20, scheme, seed=4, root_size=100, min_size=5)
    assert not all(np.array_equal(a, b) for a, b in zip(split.clients, other.clients, strict=True))


def test_iid_sizes_and_class_balance():
    split = federated_split(LABELS, 30, "iid", seed=0)
    assert split.sizes().max() - split.sizes().min() <= 1
    shares = split.label_counts(LABELS) / split.sizes()[:, None]
    assert np.abs(shares - 0.1).max() < 0.12  # 333 samples per client: no strong skew


def test_dirichlet_variance_matches_theory():
    """Per class, client shares p ~ Dir(α·1_K): Var(p_k) = (1/K)(1 − 1/K) / (Kα + 1)."""
    k, alpha = 20, 0.5
    measured = []
    for seed in range(5):
        counts = federated_split(LABELS, k, "dirichlet", seed=seed, alpha=alpha).label_counts(
            LABELS
        )
        measured.append((counts / counts.sum(0, keepdims=True)).var(axis=0).mean())
    expected = (1 / k) * (1 - 1 / k) / (k * alpha + 1)
    assert np.mean(measured) == pytest.approx(expected, rel=0.25)


def test_dirichlet_alpha_controls_skew():
    def dominant_share(alpha):
        counts = federated_split(LABELS, 20, "dirichlet", seed=1, alpha=alpha).label_counts(LABELS)
        return (counts.max(1) / counts.sum(1)).mean()

    assert dominant_share(0.1) > 0.5 > 0.15 > dominant_share(100.0)


@pytest.mark.parametrize("q", [0.5, 0.8])
def test_bias_q_is_the_home_label_share(q):
    """Balanced classes: a group receives q of its samples from its own label."""
    split = federated_split(LABELS, 20, "bias", seed=2, q=q)
    counts = split.label_counts(LABELS)
    assert counts.max(1).sum() / counts.sum() == pytest.approx(q, abs=0.03)
    # 20 clients in 10 groups of 2: every label is the dominant one of exactly 2 clients.
    assert np.bincount(counts.argmax(1), minlength=10).tolist() == [2] * 10


def test_bias_q_one_over_c_is_iid_and_fewer_clients_than_classes():
    counts = federated_split(LABELS, 20, "bias", seed=2, q=0.1).label_counts(LABELS)
    assert (counts.max(1) / counts.sum(1)).max() < 0.15
    few = federated_split(LABELS, 4, "bias", seed=0, q=0.9)
    assert few.sizes().sum() == len(LABELS)


def test_shards_classes_per_client():
    split = federated_split(LABELS, 20, "shards", seed=0, shards_per_client=2)
    assert (split.label_counts(LABELS) > 0).sum(1).max() <= 2
    assert split.sizes().tolist() == [500] * 20


def test_root_uniform_and_biased():
    split = federated_split(LABELS, 10, "iid", seed=0, root_size=500)
    assert np.bincount(LABELS[split.root], minlength=10).max() < 80  # ~50 each
    biased = federated_split(
        LABELS, 10, "iid", seed=0, root_size=500, root_bias_class=3, root_p=0.8
    )
    assert np.mean(LABELS[biased.root] == 3) == pytest.approx(0.8, abs=0.05)
    assert not np.isin(biased.root, np.concatenate(biased.clients)).any()


def test_errors_are_clear():
    with pytest.raises(PartitionError, match="too many clients"):
        federated_split(LABELS[:50], 30, "iid", seed=0, min_size=2)
    with pytest.raises(PartitionError, match="min_size"):
        federated_split(LABELS[:200], 50, "dirichlet", seed=0, alpha=0.01, min_size=3)
    with pytest.raises(PartitionError, match="available") as err:
        federated_split(LABELS, 5, "pathological", seed=0)
    assert all(s in str(err.value) for s in SCHEMES) and set(available_partitions()) == set(SCHEMES)
    with pytest.raises(PartitionError, match="alpha"):
        federated_split(LABELS, 5, "dirichlet", seed=0, alpha=0)
    with pytest.raises(PartitionError, match="q must be"):
        federated_split(LABELS, 5, "bias", seed=0, q=1.5)
    with pytest.raises(PartitionError, match="shards"):
        federated_split(LABELS[:30], 10, "shards", seed=0, shards_per_client=4)
    with pytest.raises(PartitionError, match="together"):
        federated_split(LABELS, 5, "iid", seed=0, root_size=10, root_bias_class=1)
    with pytest.raises(PartitionError, match="root_size"):
        federated_split(LABELS[:10], 2, "iid", seed=0, root_size=11)
    with pytest.raises(PartitionError, match="labels"):
        federated_split(np.array([0.5, 1.0]), 2, "iid", seed=0)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(5, 300),
    classes=st.integers(2, 12),
    clients=st.integers(1, 40),
    scheme=st.sampled_from(SCHEMES),
    root=st.integers(0, 20),
    seed=st.integers(0, 2**31),
)
def test_property_any_split_is_a_partition_or_a_clear_error(
    n, classes, clients, scheme, root, seed
):
    labels = np.random.default_rng(seed).integers(0, classes, n)
    try:
        split = federated_split(labels, clients, scheme, seed=seed, root_size=root, min_size=1)
    except PartitionError as err:
        words = ("min_size", "too many clients", "shards", "root", "classes")
        assert any(word in str(err) for word in words)
        return
    assert split.num_clients == clients and split.sizes().min() >= 1 and len(split.root) == root
    np.testing.assert_array_equal(
        np.sort(np.concatenate([*split.clients, split.root])), np.arange(n)
    )
