"""Federated partitions of a labelled training set (one client = one partition) and FLTrust's root
set.

Written in numpy rather than with flwr-datasets' partitioners: those need the data as a Hugging Face
``Dataset`` and pull about 530 MB (pyarrow, pandas, datasets) and 4-6 s of imports for what is index
bookkeeping, and they lack the Fang/FLTrust bias scheme. Everything here works
on the label vector alone and is deterministic for a seed (one ``numpy`` PCG64 stream from
``derive_seed(seed, "partition", scheme)``).

Schemes (``available_partitions()``):

- ``iid``: a uniform random permutation cut into ``num_clients`` near-equal parts (sizes differ
  by at most 1).
- ``dirichlet`` (Hsu, Qi & Brown 2019, "Measuring the effects of non-identical data distribution"):
  for each class c, proportions p_c ~ Dir(α·1_K) over the K clients; the class-c samples are
  shuffled and cut at the cumulative proportions. Small α ⇒ few classes per client; α → ∞ ⇒ IID.
  Redrawn (up to ``max_retries`` times) until every client holds ≥ ``min_size`` samples.
- ``bias`` (Fang et al., USENIX Security 2020; Cao et al., FLTrust, NDSS 2021): the K clients are
  split into C groups (C = number of classes; group g = clients ⌊g·K/C⌋ … ⌊(g+1)·K/C⌋ − 1, or, when
  K < C, client ⌊g·K/C⌋ alone). A sample with label y goes to group y with probability q, otherwise
  to one of the C − 1 other groups uniformly; then to a uniformly random client of that group. The
  client order is finally shuffled, as in the official code. q = 1/C is IID; q = 0.5 is the papers'
  default non-IID setting. Redrawn like ``dirichlet`` until every client has ``min_size`` samples.
- ``shards`` (McMahan et al., AISTATS 2017): shuffle, sort by label (stable), cut into
  K·``shards_per_client`` equal shards, deal them out at random: each client sees about
  ``shards_per_client`` classes.

FLTrust's root set D0 (``root_size`` > 0) is drawn *first* from the whole training set and removed
before the clients are partitioned, so it is disjoint from every client. Uniform by default; with
``root_bias_class=c`` and ``root_p=p`` each root sample is of class c with probability p and of
another class (uniformly) otherwise — FLTrust's root-set bias probability (p = 1/C is unbiased).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedshield.tasks.seeding import numpy_rng

__all__ = ["FederatedSplit", "PartitionError", "available_partitions", "federated_split"]

MAX_RETRIES = 10


class PartitionError(ValueError):
    """A partition cannot be made with these parameters; the message names the parameter."""


@dataclass(frozen=True, eq=False)
class FederatedSplit:
    """``clients[k]``: sorted int64 indices into the training set of client k; ``root``: FLTrust's
    root set (sorted, possibly empty). All disjoint."""

    clients: list[np.ndarray]
    root: np.ndarray

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    def sizes(self) -> np.ndarray:
        """(K,) number of samples per client."""
        return np.array([len(c) for c in self.clients], dtype=np.int64)

    def label_counts(self, labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
        """(K, C) count of each class on each client."""
        labels = np.asarray(labels)
        c = int(labels.max()) + 1 if num_classes is None else num_classes
        return np.stack([np.bincount(labels[idx], minlength=c) for idx in self.clients])


def available_partitions() -> dict[str, str]:
    """Scheme names mapped to a one-line description and the parameters they read."""
    return {
        "iid": "uniform random split into near-equal parts",
        "dirichlet": "per-class Dirichlet(alpha) proportions over clients (Hsu et al. 2019)",
        "bias": "Fang/FLTrust bias probability q: label y goes to client group y w.p. q",
        "shards": "sort by label, shards_per_client shards per client (McMahan et al. 2017)",
    }


def federated_split(
    labels: np.ndarray,
    num_clients: int,
    scheme: str,
    *,
    seed: int,
    alpha: float = 0.5,
    q: float = 0.5,
    shards_per_client: int = 2,
    min_size: int = 1,
    root_size: int = 0,
    root_bias_class: int | None = None,
    root_p: float | None = None,
    max_retries: int = MAX_RETRIES,
) -> FederatedSplit:
    """Split the indices of ``labels`` into ``num_clients`` disjoint client sets and a root set.

    Every non-root index goes to exactly one client. Raises :class:`PartitionError` for bad
    parameters, too many clients for the data, or when a client would get < ``min_size`` samples.
    """
    labels = _check_labels(labels)
    _check_int("num_clients", num_clients, 1)
    _check_int("min_size", min_size, 1)
    _check_int("root_size", root_size, 0)
    _check_int("max_retries", max_retries, 1)
    if scheme not in _SCHEMES:
        raise PartitionError(
            f"unknown partition scheme {scheme!r}; available: {sorted(available_partitions())}"
        )
    rng = numpy_rng(seed, "partition", scheme)
    root = _draw_root(labels, root_size, root_bias_class, root_p, rng)
    pool = np.setdiff1d(np.arange(len(labels)), root)
    if len(pool) < num_clients * min_size:
        raise PartitionError(
            f"too many clients for the data: {num_clients} clients x min_size {min_size} > "
            f"{len(pool)} samples (after a root set of {len(root)})"
        )
    params = {"alpha": alpha, "q": q, "shards_per_client": shards_per_client}
    clients = _SCHEMES[scheme](labels, pool, num_clients, min_size, max_retries, rng, params)
    return FederatedSplit(clients=[np.sort(c).astype(np.int64) for c in clients], root=root)


# --- validation --------------------------------------------------------------------------------


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise PartitionError(
            f"labels must be a non-empty 1-D integer array, got shape {labels.shape} "
            f"dtype {labels.dtype}"
        )
    if labels.min() < 0:
        raise PartitionError("labels must be >= 0")
    return labels.astype(np.int64, copy=False)


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise PartitionError(f"{name} must be an integer >= {low}, got {value!r}")


def _enforce_min_size(clients: list[np.ndarray], min_size: int, what: str) -> None:
    smallest = min(len(c) for c in clients)
    if smallest < min_size:
        raise PartitionError(
            f"{what}: a client gets {smallest} samples < min_size {min_size}; use fewer clients, "
            "a smaller min_size or a milder skew"
        )


def _retrying(
    draw: Callable[[], list[np.ndarray]], min_size: int, max_retries: int, what: str
) -> list[np.ndarray]:
    smallest = 0
    for _ in range(max_retries):
        clients = draw()
        smallest = min(len(c) for c in clients)
        if smallest >= min_size:
            return clients
    raise PartitionError(
        f"{what}: after {max_retries} draws some client still had {smallest} < min_size "
        f"{min_size} samples; use fewer clients, a smaller min_size or a milder skew"
    )


# --- root set ----------------------------------------------------------------------------------


def _draw_root(
    labels: np.ndarray,
    size: int,
    bias_class: int | None,
    p: float | None,
    rng: np.random.Generator,
) -> np.ndarray:
    if size == 0:
        return np.empty(0, dtype=np.int64)
    if size > len(labels):
        raise PartitionError(f"root_size={size} exceeds the {len(labels)} training samples")
    if (bias_class is None) != (p is None):
        raise PartitionError("root_bias_class and root_p must be given together (or neither)")
    if bias_class is None:
        return np.sort(rng.choice(len(labels), size=size, replace=False)).astype(np.int64)
    num_classes = int(labels.max()) + 1
    if not 0 <= bias_class < num_classes:
        raise PartitionError(f"root_bias_class must be in [0, {num_classes}), got {bias_class}")
    if not 0.0 <= float(p) <= 1.0:  # type: ignore[arg-type]
        raise PartitionError(f"root_p must be in [0, 1], got {p}")
    wanted = _biased_classes(np.full(size, bias_class), float(p), num_classes, rng)  # type: ignore[arg-type]
    picked = []
    for c, k in enumerate(np.bincount(wanted, minlength=num_classes)):
        members = np.flatnonzero(labels == c)
        if k > len(members):
            raise PartitionError(
                f"biased root set needs {k} samples of class {c}, the data has {len(members)}"
            )
        picked.append(rng.choice(members, size=int(k), replace=False))
    return np.sort(np.concatenate(picked)).astype(np.int64)


def _biased_classes(
    home: np.ndarray, q: float, num_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """For each entry: ``home`` w.p. q, else one of the other ``num_classes − 1`` uniformly."""
    other = rng.integers(0, num_classes - 1, size=len(home))
    other += other >= home
    return np.where(rng.random(len(home)) < q, home, other)


# --- schemes -----------------------------------------------------------------------------------

Params = dict[str, float | int]


def _iid(
    labels: np.ndarray, pool: np.ndarray, k: int, min_size: int, retries: int,
    rng: np.random.Generator, params: Params,
) -> list[np.ndarray]:  # fmt: skip
    return np.array_split(rng.permutation(pool), k)


def _dirichlet(
    labels: np.ndarray, pool: np.ndarray, k: int, min_size: int, retries: int,
    rng: np.random.Generator, params: Params,
) -> list[np.ndarray]:  # fmt: skip
    alpha = float(params["alpha"])
    if not alpha > 0 or not np.isfinite(alpha):
        raise PartitionError(f"alpha must be a finite number > 0, got {params['alpha']!r}")
    by_class = [pool[labels[pool] == c] for c in np.unique(labels[pool])]

    def draw() -> list[np.ndarray]:
        parts: list[list[np.ndarray]] = [[] for _ in range(k)]
        for members in by_class:
            shuffled = rng.permutation(members)
            cuts = (np.cumsum(rng.dirichlet(np.full(k, alpha)))[:-1] * len(shuffled)).astype(int)
            for client, chunk in enumerate(np.split(shuffled, cuts)):
                parts[client].append(chunk)
        return [np.concatenate(p) for p in parts]

    return _retrying(draw, min_size, retries, f"dirichlet(alpha={alpha}) over {k} clients")


def _bias(
    labels: np.ndarray, pool: np.ndarray, k: int, min_size: int, retries: int,
    rng: np.random.Generator, params: Params,
) -> list[np.ndarray]:  # fmt: skip
    q = float(params["q"])
    if not 0.0 <= q <= 1.0:
        raise PartitionError(f"q must be in [0, 1], got {params['q']!r}")
    num_groups = int(labels.max()) + 1
    if num_groups < 2:
        raise PartitionError("the bias scheme needs at least 2 classes")
    if k >= num_groups:
        starts = np.arange(num_groups) * k // num_groups
        sizes = np.diff(np.append(starts, k))
    else:
        starts, sizes = np.arange(num_groups) * k // num_groups, np.ones(num_groups, np.int64)
    pool_labels = labels[pool]

    def draw() -> list[np.ndarray]:
        group = _biased_classes(pool_labels, q, num_groups, rng)
        client = starts[group] + (rng.random(len(pool)) * sizes[group]).astype(np.int64)
        order = rng.permutation(k)  # shuffle the workers, as Fang et al.'s code does
        return [pool[client == order[j]] for j in range(k)]

    return _retrying(draw, min_size, retries, f"bias(q={q}) over {k} clients")


def _shards(
    labels: np.ndarray, pool: np.ndarray, k: int, min_size: int, retries: int,
    rng: np.random.Generator, params: Params,
) -> list[np.ndarray]:  # fmt: skip
    per_client = params["shards_per_client"]
    _check_int("shards_per_client", per_client, 1)
    total = k * int(per_client)
    if total > len(pool):
        raise PartitionError(
            f"shards: {k} clients x shards_per_client {per_client} = {total} shards > "
            f"{len(pool)} samples"
        )
    shuffled = rng.permutation(pool)
    ordered = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(ordered, total)
    deal = rng.permutation(total).reshape(k, int(per_client))
    clients = [np.concatenate([shards[s] for s in row]) for row in deal]
    _enforce_min_size(clients, min_size, f"shards({per_client} per client) over {k} clients")
    return clients


_SCHEMES = {"iid": _iid, "dirichlet": _dirichlet, "bias": _bias, "shards": _shards}
