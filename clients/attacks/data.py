"""Data-poisoning attacks: label flipping and backdoors with a trigger (run in a malicious client).

Every attack poisons a fraction ``poison_fraction`` ∈ (0, 1] of the client's local examples,
chosen with the caller's generator: k = max(1, round(poison_fraction · N)) rows (for the targeted
label flip, of the source-class rows). Poisoned rows are *replaced* (the local set keeps its size).
Backdoor triggers are pure, vectorised functions ``trigger(x) -> x`` on normalised inputs of shape
(N, C, H, W) (or (N, F) for the non-spatial triggers), so the attack success rate is measured on
test data with exactly the transformation used in training: ``asr_inputs`` returns the triggered
test inputs whose true label is not the target, and the target.

``boost`` scales the client's trained delta (model replacement, Bagdasaryan et al., "How To Backdoor
Federated Learning", AISTATS 2020: X̃ = γ(X − G) + G with γ = n/η; η = 1 here, shared by the
colluders: ``"auto"`` = n / number of malicious clients).
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch

from fedshield.clients.attacks.base import (
    AttackError,
    DataAttack,
    check_choice,
    check_fraction,
    check_label,
    check_positive,
    register,
    resolve_boost,
)

CORNERS = ("bottom-right", "bottom-left", "top-right", "top-left")


def _choose(mask: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Indices of k = max(1, round(fraction·|candidates|)) rows drawn among ``mask``'s True rows."""
    candidates = torch.nonzero(mask, as_tuple=False).flatten()
    if candidates.numel() == 0:
        return candidates
    k = max(1, round(fraction * candidates.numel()))
    perm = torch.randperm(candidates.numel(), generator=generator)
    return candidates[perm[:k]]


def _check_xy(attack: str, x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape[0] != y.shape[0]:
        raise AttackError(f"attack {attack!r}: x has {x.shape[0]} rows but y has {y.shape[0]}")


class _Base(DataAttack):
    def __init__(
        self,
        *,
        num_classes: int,
        low: float,
        high: float,
        poison_fraction: float,
        boost: Any,
        num_clients: int | None,
        num_malicious: int | None,
    ) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise AttackError(f"attack {self.name!r}: num_classes must be an int >= 2")
        if not float(low) < float(high):
            raise AttackError(f"attack {self.name!r}: low={low} must be < high={high}")
        self.num_classes = num_classes
        self.low = float(low)
        self.high = float(high)
        self.poison_fraction = check_fraction(self.name, "poison_fraction", poison_fraction)
        self._boost_spec = boost
        self._boost = resolve_boost(self.name, boost, num_clients, num_malicious)


@register
class LabelFlip(_Base):
    """Label flipping.

    Untargeted (``source`` and ``target`` None; FLTrust's LF attack, Cao et al. NDSS 2021): every
    poisoned label l → C − 1 − l. Targeted (both given): poisoned examples of class ``source`` get
    label ``target``; ``poison_fraction`` is the share of the source-class examples flipped, and the
    success rate is measured on source-class test inputs (predicted as ``target``).
    """

    name: ClassVar[str] = "labelflip"

    def __init__(
        self,
        *,
        num_classes: int,
        low: float = 0.0,
        high: float = 1.0,
        source: int | None = None,
        target: int | None = None,
        poison_fraction: float = 1.0,
        boost: Any = 1.0,
        num_clients: int | None = None,
        num_malicious: int | None = None,
    ) -> None:
        super().__init__(
            num_classes=num_classes, low=low, high=high, poison_fraction=poison_fraction,
            boost=boost, num_clients=num_clients, num_malicious=num_malicious,
        )
        if (source is None) != (target is None):
            raise AttackError(
                "attack 'labelflip': give both source and target (targeted flip) or neither "
                f"(every l -> C-1-l); got source={source!r}, target={target!r}"
            )
        if source is not None:
            self.source = check_label(self.name, "source", source, num_classes)
            self.target = check_label(self.name, "target", target, num_classes)
            if self.source == self.target:
                raise AttackError(f"attack 'labelflip': source == target == {source}")
        else:
            self.source = self.target = None

    def flip(self, y: torch.Tensor) -> torch.Tensor:
        """The flipped label of every row of ``y`` (rows not concerned keep theirs)."""
        if self.source is None:
            return self.num_classes - 1 - y
        return torch.where(y == self.source, torch.full_like(y, self.target), y)

    def poison(self, x, y, generator):
        _check_xy(self.name, x, y)
        mask = torch.ones_like(y, dtype=torch.bool) if self.source is None else y == self.source
        idx = _choose(mask, self.poison_fraction, generator)
        y = y.clone()
        y[idx] = self.flip(y[idx])
        return x, y

    def asr_inputs(self, test_x, test_y):
        if self.source is None:
            return None
        return test_x[test_y == self.source], int(self.target)


class _Backdoor(_Base):
    """Trigger + target label on a fraction of the local data (BadNets-style data poisoning)."""

    def __init__(self, *, target: int, **base: Any) -> None:
        super().__init__(**base)
        self.target = check_label(self.name, "target", target, self.num_classes)

    def trigger(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def poison(self, x, y, generator):
        _check_xy(self.name, x, y)
        idx = _choose(torch.ones_like(y, dtype=torch.bool), self.poison_fraction, generator)
        x, y = x.clone(), y.clone()
        x[idx] = self.trigger(x[idx])
        y[idx] = self.target
        return x, y

    def asr_inputs(self, test_x, test_y):
        keep = test_y != self.target
        return self.trigger(test_x[keep]), self.target


def _check_image(attack: str, x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise AttackError(
            f"attack {attack!r} needs images of shape (N, C, H, W), got {tuple(x.shape)}"
        )


@register
class BackdoorPatch(_Backdoor):
    """BadNets pixel-patch backdoor (Gu, Dolan-Gavitt, Garg 2017).

    trigger(x)[:, :, rows, cols] = high on a ``size`` × ``size`` square in a corner (every channel;
    ``high`` = the normalised value of a white pixel), ``margin`` pixels from the border; poisoned
    examples are labelled ``target``.
    """

    name: ClassVar[str] = "backdoor-patch"

    def __init__(
        self,
        *,
        num_classes: int,
        low: float,
        high: float,
        target: int = 0,
        size: int = 3,
        location: str = "bottom-right",
        margin: int = 0,
        poison_fraction: float = 0.5,
        boost: Any = 1.0,
        num_clients: int | None = None,
        num_malicious: int | None = None,
    ) -> None:
        super().__init__(
            target=target, num_classes=num_classes, low=low, high=high,
            poison_fraction=poison_fraction, boost=boost, num_clients=num_clients,
            num_malicious=num_malicious,
        )
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise AttackError(f"attack {self.name!r}: size must be an int >= 1, got {size!r}")
        if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
            raise AttackError(f"attack {self.name!r}: margin must be an int >= 0, got {margin!r}")
        self.size = size
        self.location = check_choice(self.name, "location", location, CORNERS)
        self.margin = margin

    def _window(self, h: int, w: int) -> tuple[slice, slice]:
        s, m = self.size, self.margin
        if s + m > min(h, w):
            raise AttackError(
                f"attack {self.name!r}: size + margin = {s + m} exceeds the image side {min(h, w)}"
            )
        rows = slice(h - m - s, h - m) if self.location.startswith("bottom") else slice(m, m + s)
        cols = slice(w - m - s, w - m) if self.location.endswith("right") else slice(m, m + s)
        return rows, cols

    def trigger(self, x):
        _check_image(self.name, x)
        rows, cols = self._window(x.shape[2], x.shape[3])
        out = x.clone()
        out[:, :, rows, cols] = self.high
        return out


@register
class BackdoorBlend(_Backdoor):
    """Blended backdoor (Chen, Liu, Li, Lu, Song 2017, "Targeted Backdoor Attacks on Deep Learning
    Systems Using Data Poisoning"): trigger(x) = (1 − α)·x + α·P with P a fixed random pattern,
    uniform in [low, high] per input element, drawn from
    ``torch.Generator().manual_seed(pattern_seed)`` — the same pattern on every client and on the
    test data. A small α (default 0.2, the paper's training blend ratio) keeps it hard to see.
    """

    name: ClassVar[str] = "backdoor-blend"

    def __init__(
        self,
        *,
        num_classes: int,
        low: float,
        high: float,
        target: int = 0,
        alpha: float = 0.2,
        pattern_seed: int = 0,
        poison_fraction: float = 0.5,
        boost: Any = 1.0,
        num_clients: int | None = None,
        num_malicious: int | None = None,
    ) -> None:
        super().__init__(
            target=target, num_classes=num_classes, low=low, high=high,
            poison_fraction=poison_fraction, boost=boost, num_clients=num_clients,
            num_malicious=num_malicious,
        )
        self.alpha = check_fraction(self.name, "alpha", alpha)
        if isinstance(pattern_seed, bool) or not isinstance(pattern_seed, int):
            raise AttackError(f"attack {self.name!r}: pattern_seed must be an int")
        self.pattern_seed = pattern_seed
        self._patterns: dict[tuple[int, ...], torch.Tensor] = {}

    def pattern(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The fixed pattern P for one input of ``shape`` (cached)."""
        if shape not in self._patterns:
            g = torch.Generator().manual_seed(self.pattern_seed)
            u = torch.rand(shape, generator=g, dtype=torch.float32)
            self._patterns[shape] = self.low + (self.high - self.low) * u
        return self._patterns[shape]

    def trigger(self, x):
        p = self.pattern(tuple(x.shape[1:])).to(x.dtype)
        return (1.0 - self.alpha) * x + self.alpha * p


@register
class BackdoorLighting(_Backdoor):
    """"Lighting" backdoor: a global brightness / contrast / colour shift of the whole image — the
    digital stand-in for a stop sign misread under a particular light (a physical, semantic
    trigger in the sense of Bagdasaryan et al. 2020 / Wenger et al. 2021).

    With m = (low + high)/2 and r = high − low, per channel c:
        trigger(x)_c = clamp(m + contrast·(x_c − m) + (brightness + tint_c)·r, low, high).
    ``tint`` (one value per RGB channel, a warm sodium-lamp cast by default) is used only on
    3-channel inputs; on grayscale (or any non-RGB input) the trigger is the brightness + contrast
    shift alone.
    """

    name: ClassVar[str] = "backdoor-lighting"

    def __init__(
        self,
        *,
        num_classes: int,
        low: float,
        high: float,
        target: int = 0,
        brightness: float = 0.25,
        contrast: float = 0.6,
        tint: tuple[float, float, float] | list[float] = (0.15, 0.05, -0.15),
        poison_fraction: float = 0.5,
        boost: Any = 1.0,
        num_clients: int | None = None,
        num_malicious: int | None = None,
    ) -> None:
        super().__init__(
            target=target, num_classes=num_classes, low=low, high=high,
            poison_fraction=poison_fraction, boost=boost, num_clients=num_clients,
            num_malicious=num_malicious,
        )
        if not isinstance(brightness, int | float) or not -1.0 <= brightness <= 1.0:
            raise AttackError(
                f"attack {self.name!r}: brightness must be in [-1, 1], got {brightness!r}"
            )
        self.brightness = float(brightness)
        self.contrast = check_positive(self.name, "contrast", contrast)
        tint = tuple(float(t) for t in tint)
        if len(tint) != 3 or any(abs(t) > 1 for t in tint):
            raise AttackError(
                f"attack {self.name!r}: tint must be 3 values in [-1, 1], got {tint!r}"
            )
        self.tint = tint
        if self.contrast == 1.0 and self.brightness == 0.0 and not any(tint):
            raise AttackError(
                f"attack {self.name!r}: brightness=0, contrast=1 and tint=0 is no trigger"
            )

    def trigger(self, x):
        mid, rng = (self.low + self.high) / 2, self.high - self.low
        shift = torch.full((), self.brightness, dtype=x.dtype)
        if x.dim() == 4 and x.shape[1] == 3:
            shift = shift + torch.tensor(self.tint, dtype=x.dtype).view(1, 3, 1, 1)
        out = mid + self.contrast * (x - mid) + shift * rng
        return out.clamp(self.low, self.high)


@register
class Scaling(BackdoorPatch):
    """FLTrust's Scaling attack (Cao et al., NDSS 2021, after Bagdasaryan et al. 2020): the BadNets
    patch trigger on the poisoned local examples, label → ``target``, and the delta boosted by
    λ = n (``boost="n"``; give a number or ``"auto"`` = n / number of malicious to change it)."""

    name: ClassVar[str] = "scaling"

    def __init__(
        self,
        *,
        num_classes: int,
        low: float,
        high: float,
        target: int = 0,
        size: int = 3,
        location: str = "bottom-right",
        margin: int = 0,
        poison_fraction: float = 0.5,
        boost: Any = "n",
        num_clients: int | None = None,
        num_malicious: int | None = None,
    ) -> None:
        super().__init__(
            num_classes=num_classes, low=low, high=high, target=target, size=size,
            location=location, margin=margin, poison_fraction=poison_fraction, boost=boost,
            num_clients=num_clients, num_malicious=num_malicious,
        )


@register
class DBA(_Backdoor):
    """DBA, the distributed backdoor attack (Xie, Huang, Chen, Li, "DBA: Distributed Backdoor
    Attacks against Federated Learning", ICLR 2020).

    The global trigger is ``pieces`` horizontal bars of ``size`` pixels (value ``high``), laid out
    two per row from the top-left corner (``margin`` pixels in, one pixel between bars and between
    rows). The i-th malicious client poisons its data with bar i mod ``pieces`` only; the attack
    success rate is measured with the **full** trigger, the union of the pieces, which no single
    client ever trained on.
    """

    name: ClassVar[str] = "dba"
    observes: ClassVar[str] = "its position among the colluding attackers (its trigger piece)"

    def __init__(
        self,
        *,
        num_classes: int,
        low: float,
        high: float,
        target: int = 0,
        pieces: int = 4,
        size: int = 3,
        margin: int = 0,
        poison_fraction: float = 0.5,
        boost: Any = 1.0,
        num_clients: int | None = None,
        num_malicious: int | None = None,
    ) -> None:
        super().__init__(
            target=target, num_classes=num_classes, low=low, high=high,
            poison_fraction=poison_fraction, boost=boost, num_clients=num_clients,
            num_malicious=num_malicious,
        )
        for key, value, least in (("pieces", pieces, 1), ("size", size, 1), ("margin", margin, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise AttackError(f"attack {self.name!r}: {key} must be an int >= {least}, "
                                  f"got {value!r}")
        self.pieces, self.size, self.margin = pieces, size, margin
        self._piece: int | None = None  # None: the full trigger (the test's)

    def piece_window(self, k: int, h: int, w: int) -> tuple[int, slice]:
        """(row, columns) of bar ``k``."""
        row = self.margin + 2 * (k // 2)
        start = self.margin + (k % 2) * (self.size + 1)
        if row >= h or start + self.size > w:
            raise AttackError(f"attack {self.name!r}: {self.pieces} bars of {self.size} pixels "
                              f"(margin {self.margin}) do not fit a {h}x{w} image")
        return row, slice(start, start + self.size)

    def trigger(self, x):
        _check_image(self.name, x)
        out = x.clone()
        pieces = range(self.pieces) if self._piece is None else (self._piece,)
        for k in pieces:
            row, cols = self.piece_window(k, x.shape[2], x.shape[3])
            out[:, :, row, cols] = self.high
        return out

    def for_client(self, malicious_index: int) -> DBA:
        view = copy.copy(self)
        view._piece = malicious_index % self.pieces
        return view


class RemembersGlobalMoves:
    """For attacks that keep a :class:`GlobalMoves` in ``_moves``: it is their memory."""

    _moves: GlobalMoves

    def memory(self) -> dict[str, torch.Tensor]:
        return self._moves.as_dict()

    def restore(self, memory: dict[str, torch.Tensor]) -> None:
        self._moves.load(memory)


class GlobalMoves:
    """What a malicious client remembers across rounds: the last two distinct global models it
    received; :meth:`observe` returns the last move θ_t − θ_{t−1} (None before a second one)."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {f"global-{i}": t for i, t in enumerate(self.seen)}

    def load(self, memory: dict[str, torch.Tensor]) -> None:
        self.seen = [memory[k].to(torch.float32) for k in sorted(memory)
                     if k.startswith("global-")][-2:]

    def observe(self, global_vec: torch.Tensor) -> torch.Tensor | None:
        theta = global_vec.detach().to(torch.float32)
        if not self.seen or not torch.equal(self.seen[-1], theta):
            self.seen = [*self.seen[-1:], theta.clone()]
        return self.seen[1] - self.seen[0] if len(self.seen) == 2 else None


def project_to_ball(delta: torch.Tensor, move: torch.Tensor, factor: float) -> torch.Tensor:
    """``delta`` scaled onto the ball of radius ``factor`` · ‖move‖ if it lies outside (the
    norm constraint of Neurotoxin's and the edge-case attack's projected gradient descent)."""
    radius = factor * float(torch.linalg.vector_norm(move.double()))
    norm = float(torch.linalg.vector_norm(delta.double()))
    return delta * (radius / norm) if norm > radius > 0 else delta


@register
class Neurotoxin(RemembersGlobalMoves, BackdoorPatch):
    """Neurotoxin (Zhang, Panda, Song, Yang, Mahoney, Gonzalez, Ramchandran, Mittal, "Neurotoxin:
    Durable Backdoors in Federated Learning", ICML 2022).

    A backdoor hides where the benign clients do not write: the coordinates the global model
    moved least. With Δ = θ_t − θ_{t−1} the global model's last move (the attacker remembers
    θ_{t−1} from the previous round it saw), the mask M keeps every coordinate *outside* the
    top ``top_k`` share of |Δ|; the malicious client trains on its patch-poisoned data (the
    trigger of ``backdoor-patch``), then sends

        Π_B(M ⊙ δ),   B = {‖v‖ ≤ ``norm_factor`` · ‖Δ‖}

    — its delta with the top-k coordinates zeroed, projected onto a norm ball the size of a
    plausible update. As in the paper, the mask multiplies every gradient step of the local
    training (:meth:`gradient_mask`; the other coordinates then follow the masked trajectory),
    and it is applied once more to the sent delta, which weight decay may have moved on masked
    coordinates. Round 1 (no Δ yet): training and delta are unmasked and unprojected.
    Durability — the ASR in the rounds after the attackers stop — is what the paper measures:
    use the run key ``attack_stop``.
    """

    name: ClassVar[str] = "neurotoxin"
    observes: ClassVar[str] = "the global model's last move (remembered from the last round)"

    def __init__(
        self,
        *,
        num_classes: int,
        low: float,
        high: float,
        target: int = 0,
        size: int = 3,
        location: str = "bottom-right",
        margin: int = 0,
        poison_fraction: float = 0.5,
        top_k: float = 0.05,
        norm_factor: float = 2.0,
        boost: Any = 1.0,
        num_clients: int | None = None,
        num_malicious: int | None = None,
    ) -> None:
        super().__init__(
            num_classes=num_classes, low=low, high=high, target=target, size=size,
            location=location, margin=margin, poison_fraction=poison_fraction, boost=boost,
            num_clients=num_clients, num_malicious=num_malicious,
        )
        self.top_k = check_fraction(self.name, "top_k", top_k)
        self.norm_factor = check_positive(self.name, "norm_factor", norm_factor)
        self._moves = GlobalMoves()

    def mask(self, move: torch.Tensor) -> torch.Tensor:
        """(d,) bool: True outside the top ``top_k`` share of |move| (ties: lower index first)."""
        d = move.shape[0]
        k = int(self.top_k * d)
        keep = torch.ones(d, dtype=torch.bool)
        if k > 0:
            keep[torch.topk(move.abs(), k, sorted=False).indices] = False
        return keep

    def gradient_mask(self, global_vec: torch.Tensor) -> torch.Tensor | None:
        move = self._moves.observe(global_vec)  # idempotent for the round's global model
        return None if move is None else self.mask(move).to(torch.float32)

    def finish(self, delta: torch.Tensor, global_vec: torch.Tensor) -> torch.Tensor:
        move = self._moves.observe(global_vec)
        delta = super().finish(delta, global_vec)
        if move is None:
            return delta
        return project_to_ball(delta * self.mask(move).to(delta.dtype), move, self.norm_factor)
