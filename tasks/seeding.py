"""Seeds for every random choice of a run, derived from the scenario seed and a purpose.

Every generator in fedshield is seeded from a tuple of *parts* (the scenario seed, a purpose string
and the indices that identify the draw), hashed with BLAKE2b. The hash is stable across processes,
Python versions and machines (unlike ``hash()``), so a ClientApp in a Ray actor and the inline
engine draw exactly the same batches for the same ``(seed, "client", partition_id, round)``.

Conventions (contracts.md): client training ``(cfg.seed, "client", pid, round)``; server root
training ``(cfg.seed, "server", round)``; attacks ``(cfg.seed, "attack", round)``; client sampling
``(cfg.seed, "sample", round)``; model initialisation ``(cfg.seed, "init")``.
"""

from __future__ import annotations

import hashlib
import numbers
import random
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch

__all__ = ["SeedError", "derive_seed", "numpy_rng", "torch_generator"]

_SEED_BITS = 63  # fits torch.Generator.manual_seed, numpy and a signed int64


class SeedError(ValueError):
    """A seed part is not an int or a str."""


def _encode(part: object) -> bytes:
    # bool is an int subclass; refuse it so that True and 1 cannot be confused silently.
    if isinstance(part, bool) or not isinstance(part, numbers.Integral | str):
        raise SeedError(
            f"seed parts must be int or str, got {part!r} of type {type(part).__name__}"
        )
    if isinstance(part, str):
        body = part.encode("utf-8")
        return b"s" + len(body).to_bytes(4, "big") + body
    body = str(int(part)).encode("ascii")
    return b"i" + len(body).to_bytes(4, "big") + body


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from ``parts``: ``int.from_bytes(blake2b(enc(parts), 8 bytes)) >> 1``.

    Each part is encoded with its type tag and length, so ``("a", 1)`` and ``("a1",)`` or ``(1,)``
    and ``("1",)`` give different seeds. At least one part is required.
    """
    if not parts:
        raise SeedError("derive_seed needs at least one part, e.g. derive_seed(cfg.seed, 'init')")
    digest = hashlib.blake2b(b"".join(_encode(p) for p in parts), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - _SEED_BITS)


def torch_generator(*parts: int | str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``derive_seed(*parts)``."""
    generator = torch.Generator()
    generator.manual_seed(derive_seed(*parts))
    return generator


def numpy_rng(*parts: int | str) -> np.random.Generator:
    """A numpy ``Generator`` (PCG64) seeded with ``derive_seed(*parts)``."""
    return np.random.default_rng(derive_seed(*parts))


T = TypeVar("T")


def seeded_sample(population: Sequence[T], k: int, *parts: int | str) -> list[T]:
    """``k`` distinct members of ``sorted(population)``, returned sorted, drawn by
    ``random.Random(derive_seed(*parts))`` — the client sampling of both engines (parts
    ``(seed, "sample", round)``); with no parts the draw is unseeded."""
    rng = random.Random(derive_seed(*parts) if parts else None)
    return sorted(rng.sample(sorted(population), k))
