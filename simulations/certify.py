"""Certified robustness in the harness: FLCert and CRFL (run key ``certify``).

``certify = { name = "flcert", groups = k }`` or ``certify = { name = "crfl", ... }`` in a
scenario (inline engine, every client every round). The cell's last row carries ``certified``:
``{"axis": ..., "x": [...], "accuracy": [...]}``, the certified accuracy at each x — the number of
malicious clients m for FLCert, the certified radius for CRFL — which the cell summary, the
report's table and its plot read. A certified accuracy is the fraction of test inputs classified
correctly *and* certified: a lower bound on the accuracy under any attack within the threat model
at that x.

FLCert — Cao, Jia, Zhang, Gong, "FLCert: Provably Secure Federated Learning against Poisoning
Attacks", IEEE TIFS 2022 (first version "Provably Secure Federated Learning against Malicious
Clients", AAAI 2021).

The clients are split into k disjoint groups, deterministically by id and balanced: the clients
are ordered by ``blake2b("flcert:" + id)`` and the client at position p of that order joins group
p mod k (group sizes differ by at most one; the paper's hash-mod-k grouping can leave a group
with one client). One global model is trained per group, with the scenario's rule over that
group's clients only. A test input x is classified by majority vote of the k models, ties to the
smallest label: with c_l(x) the number of models predicting l and y = the winner,

    ŷ(x) = argmax_l c_l(x).

A malicious client can change only the model of its own group, so m malicious clients change at
most m votes. Moving m votes from y to any z ≠ y leaves the prediction unchanged iff

    c_y − m > c_z + m,  or  c_y − m = c_z + m and y < z (the tie goes to the smaller label),

so x is **certified at m** iff for every z ≠ y: c_y − c_z > 2m, or c_y − c_z = 2m with y < z.
(The vote gap "exceeds twice the groups the attackers can touch": with one group per client, m
attackers touch at most m groups.) At m = 0 the certified accuracy is the ensemble's accuracy.
Parameters: ``groups`` (k, 1 ≤ k ≤ num_clients).

CRFL — Xie, Chen, Chen, Li, "CRFL: Certifiably Robust Federated Learning against Backdoor
Attacks", ICML 2021 (the certificate as in the authors' code, ``certify_mnist.py``).

- **Training**: after each round's aggregation the server clips the global model's norm to
  ρ_t = min(``clip``, ``clip_start`` + ``clip_growth`` · t) and, before the next round, adds
  N(0, σ² I) to it (σ = ``sigma``); the last round's model is clipped, not noised.
- **Parameter smoothing** at test time: M = ``samples`` copies w_T + N(0, σ_T² I) (σ_T =
  ``test_sigma``) vote; p_A, p_B are the frequencies of the top and the runner-up label, turned
  into bounds with Hoeffding's inequality at error level α (``alpha``): p̲_A = p_A − √(ln(1/α)/2M),
  p̄_B = p_B + √(ln(1/α)/2M).
- **Certified radius** on the magnitude ‖δ‖ of the backdoor pattern, for R attackers
  (``attackers``) that poison a fraction q_B/n_B (``poison_fraction``) of each batch, scale their
  update by γ (``scale``) and attack at round t_adv (``attack_round``), with τ local iterations,
  client learning rate η, aggregation weights α_i = 1/N (N clients per round) and the Lipschitz
  constant L_z = √(2 + 2ρ + ρ²) of the paper's logistic regression (ρ = ``lipschitz_rho``):

      RAD² = −ln(1 − (√p̲_A − √p̄_B)²) · σ² / (2 R τ² L_z² Σ_i α_i² γ² η² (q_B/n_B)² · C),
      C = Π_{t = t_adv+1}^{T−1} (2Φ(ρ_t / σ) − 1) · (2Φ(ρ_T / σ_T) − 1),

  each factor of C the contraction of one round of clipping and noise. An input is certified
  at radius r when it is classified correctly and RAD ≥ r (RAD = ∞ when p̲_A = 1).
  The bound assumes the paper's linear model: ``model`` must be ``logreg``.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, fields
from typing import Any

import torch

from fedshield.tasks.config import ConfigError, RunConfig


# --- settings ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FLCert:
    groups: int = 10


@dataclass(frozen=True)
class CRFL:
    clip: float = 15.0
    clip_start: float = 2.0
    clip_growth: float = 0.1
    sigma: float = 0.01
    test_sigma: float = 0.01
    samples: int = 1000
    alpha: float = 0.001
    attackers: int = 0  # 0: the run's malicious count (at least 1)
    poison_fraction: float = 0.0  # 0: the run's data attack's, else 0.5
    scale: float = 0.0  # 0: the run's data attack's boost, else 1
    attack_round: int = 0  # 0: the last round (the weakest certificate)
    lipschitz_rho: float = 3.0
    radii: int = 50  # points of the certified-accuracy curve

    def clip_level(self, rnd: int) -> float:
        return min(self.clip, self.clip_start + self.clip_growth * rnd)


_SCHEMES: dict[str, type] = {"flcert": FLCert, "crfl": CRFL}


def certification(cfg: RunConfig) -> FLCert | CRFL:
    """The validated settings of ``cfg.certify``; :class:`ConfigError` names a bad key."""
    scheme = _SCHEMES.get(cfg.certify)
    if scheme is None:
        raise ConfigError(f"certify = {cfg.certify!r} has no settings (certify = 'none')")
    known = {f.name: f for f in fields(scheme)}
    unknown = sorted(set(cfg.certify_params) - set(known))
    if unknown:
        raise ConfigError(f"certify {cfg.certify!r}: unknown parameter(s) {unknown}; valid: "
                          f"{sorted(known)}")
    values = {}
    for key, value in cfg.certify_params.items():
        kind = type(known[key].default)
        if isinstance(value, bool) or not isinstance(value, int | float) or (
                kind is int and not float(value).is_integer()) or not math.isfinite(value):
            raise ConfigError(f"certify {cfg.certify!r}: {key} must be a finite "
                              f"{kind.__name__}, got {value!r}")
        values[key] = kind(value)
    settings = scheme(**values)
    _check(cfg, settings)
    return settings


def _check(cfg: RunConfig, s: FLCert | CRFL) -> None:
    def need(ok: bool, text: str) -> None:
        if not ok:
            raise ConfigError(f"certify {cfg.certify!r}: {text}")

    need(cfg.clients_per_round in (0, cfg.num_clients),
         f"trains every client every round; set clients_per_round = 0 (got "
         f"{cfg.clients_per_round})")
    if isinstance(s, FLCert):
        need(1 <= s.groups <= cfg.num_clients,
             f"groups must be in [1, num_clients = {cfg.num_clients}], got {s.groups}")
        return
    need(cfg.model == "logreg", "the certified radius assumes the paper's linear model; set "
         f"model = 'logreg' (got {cfg.model!r})")
    for key in ("clip", "clip_start", "sigma", "test_sigma", "lipschitz_rho"):
        need(getattr(s, key) > 0, f"{key} must be > 0, got {getattr(s, key)}")
    for key in ("clip_growth", "attackers", "poison_fraction", "scale", "attack_round"):
        need(getattr(s, key) >= 0, f"{key} must be >= 0, got {getattr(s, key)}")
    need(s.samples >= 1 and s.radii >= 2, "samples must be >= 1 and radii >= 2")
    need(0 < s.alpha < 1, f"alpha must be in (0, 1), got {s.alpha}")
    need(s.poison_fraction <= 1, f"poison_fraction must be <= 1, got {s.poison_fraction}")
    need(s.attack_round <= cfg.rounds, f"attack_round must be <= rounds = {cfg.rounds}")


def run_certified(cfg: RunConfig) -> Any:
    """The run of a ``certify`` cell (FLCert or CRFL); an engine's ``RunResult``."""
    settings = certification(cfg)
    if isinstance(settings, FLCert):
        return run_flcert(cfg, settings)
    return run_crfl(cfg, settings)


def _client_hash(client_id: int) -> bytes:
    return hashlib.blake2b(f"flcert:{int(client_id)}".encode(), digest_size=8).digest()


def flcert_partition(num_clients: int, groups: int) -> list[list[int]]:
    """The clients of each group, sorted: position p of the hash order joins group p mod k."""
    order = sorted(range(num_clients), key=_client_hash)
    return [sorted(order[g::groups]) for g in range(groups)]


def vote_counts(predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, C) int64 votes from (k, N) predicted labels."""
    k, n = predictions.shape
    counts = torch.zeros(n, num_classes, dtype=torch.int64)
    counts.scatter_add_(1, predictions.T.long(), torch.ones(n, k, dtype=torch.int64))
    return counts


def certified_radius(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the vote's label ŷ (N,), the largest m at which each input is certified (N,)).

    For each z ≠ ŷ with gap g = c_ŷ − c_z: certified at every m ≤ ⌊g/2⌋ when ŷ < z (a tie at
    g = 2m keeps ŷ), and m ≤ ⌊(g−1)/2⌋ when ŷ > z; the input's radius is the minimum over z."""
    n, classes = counts.shape
    top = counts.argmax(dim=1)  # the first maximum: ties go to the smallest label
    gap = counts.gather(1, top[:, None]) - counts  # (N, C) ≥ 0
    labels = torch.arange(classes)[None, :]
    allowed = torch.where(labels > top[:, None], gap // 2, (gap - 1) // 2)
    allowed[torch.arange(n), top] = torch.iinfo(torch.int64).max
    return top, allowed.min(dim=1).values


def certified_accuracy(counts: torch.Tensor, labels: torch.Tensor, max_m: int) -> list[float]:
    """Certified accuracy at m = 0 … ``max_m`` (index m)."""
    predicted, radius = certified_radius(counts)
    correct = predicted == labels.long()
    return [float((correct & (radius >= m)).double().mean()) for m in range(max_m + 1)]


def _predictions(task: Any, vectors: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for vector in vectors:
            model = task.model_from_vector(vector)
            model.eval()
            out.append(model(x).argmax(dim=1))
    return torch.stack(out)


def run_flcert(cfg: RunConfig, settings: FLCert) -> Any:
    """Train the k group models of ``cfg`` (one inline run per group, the scenario's rule and
    attack), vote on the test set and return the engine's ``RunResult``: per round, the groups'
    rows merged (clients, detection and share averaged over the groups); the last row adds the
    ensemble's accuracy and ASR, ``certified`` and each group model's accuracy."""
    from fedshield.simulations.engine_inline import RunResult, run_inline
    from fedshield.tasks.task import get_task

    start = time.perf_counter()
    k = settings.groups
    groups = flcert_partition(cfg.num_clients, k)
    group_cfg = cfg.with_updates(eval_every=cfg.rounds, certify="none", certify_params={})
    runs = [run_inline(group_cfg, clients=members) for members in groups]
    task = get_task(cfg)
    x = torch.as_tensor(task.dataset.test_x)
    y = torch.as_tensor(task.dataset.test_y)
    vectors = [run.final_vector for run in runs]
    counts = vote_counts(_predictions(task, vectors, x), task.dataset.num_classes)
    certified = certified_accuracy(counts, y, k)
    asr = None
    inputs = _asr_inputs(cfg, task, x, y)
    if inputs is not None:
        triggered, target = inputs
        votes = vote_counts(_predictions(task, vectors, triggered), task.dataset.num_classes)
        asr = float((votes.argmax(dim=1) == torch.as_tensor(target)).double().mean())
    rows = [_merged(rnd, [run.rounds[rnd - 1] for run in runs]) for rnd in range(1, cfg.rounds + 1)]
    rows[-1].update({"accuracy": certified[0], "loss": None, "asr": asr,
                     "certified": {"axis": "malicious clients", "x": list(range(k + 1)),
                                   "accuracy": certified},
                     "group_accuracy": [run.rounds[-1]["accuracy"] for run in runs],
                     "group_sizes": [len(g) for g in groups]})
    return RunResult(rounds=rows, final_vector=torch.stack(vectors).mean(dim=0),
                     malicious_ids=runs[0].malicious_ids,
                     seconds=time.perf_counter() - start)


def _asr_inputs(cfg: RunConfig, task: Any, x: torch.Tensor, y: torch.Tensor
                ) -> tuple[torch.Tensor, Any] | None:
    """The run's triggered test inputs and target (data attacks with a target), else None."""
    from fedshield.clients.attacks import attack_from_config

    attack = attack_from_config(cfg, task.dataset) if cfg.malicious_count else None
    if attack is None or attack.kind != "data":
        return None
    inputs = attack.asr_inputs(x, y)
    return inputs if inputs is not None and len(inputs[0]) else None


# --- CRFL ----------------------------------------------------------------------------------------
class CRFLTraining:
    """The server side of CRFL, a ``post_step`` of the inline engine: round t's model is clipped
    to ρ_t (the model that is evaluated), then noised for the next round (not after the last)."""

    def __init__(self, settings: CRFL, rounds: int, seed: int) -> None:
        from fedshield.tasks.seeding import torch_generator

        self.settings, self.rounds = settings, rounds
        self.generator = torch_generator(seed, "crfl")

    def __call__(self, rnd: int, vec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        level = self.settings.clip_level(rnd)
        norm = float(torch.linalg.vector_norm(vec.double()))
        clipped = vec * min(1.0, level / norm) if norm > 0 else vec
        if rnd >= self.rounds:
            return clipped, clipped
        noise = torch.randn(vec.shape, generator=self.generator, dtype=torch.float64)
        return clipped, (clipped.double() + self.settings.sigma * noise).to(vec.dtype)


def smoothed_votes(task: Any, vec: torch.Tensor, x: torch.Tensor, sigma: float, samples: int,
                   generator: torch.Generator) -> torch.Tensor:
    """(N, C) votes of ``samples`` copies vec + N(0, σ² I) on the inputs ``x``."""
    counts = torch.zeros(len(x), task.dataset.num_classes, dtype=torch.int64)
    ones = torch.ones(len(x), 1, dtype=torch.int64)
    with torch.no_grad():
        for _ in range(samples):
            noisy = vec.double() + sigma * torch.randn(vec.shape, generator=generator,
                                                       dtype=torch.float64)
            model = task.model_from_vector(noisy.to(vec.dtype))
            counts.scatter_add_(1, model(x).argmax(dim=1)[:, None], ones)
    return counts


def crfl_radius(counts: torch.Tensor, settings: CRFL, *, rounds: int, clients: int,
                attackers: int, local_iterations: float, lr: float, poison_fraction: float,
                scale: float) -> torch.Tensor:
    """(N,) float64 certified radius of each input (module docstring); ∞ where p̲_A = 1."""
    from scipy.stats import norm

    samples = counts.sum(dim=1, keepdim=True).double()
    top2 = counts.topk(2, dim=1).values.double() / samples
    slack = math.sqrt(math.log(1 / settings.alpha) / (2 * float(samples[0])))
    pa = (top2[:, 0] - slack).clamp(min=1e-8)
    pb = (top2[:, 1] + slack).clamp(max=1 - 1e-8)
    gap = (pa.sqrt() - pb.sqrt()).clamp(min=0.0)
    fraction = -torch.log1p(-gap.square()) * settings.sigma ** 2
    rho = settings.lipschitz_rho
    lipschitz_sq = 2 + 2 * rho + rho ** 2
    weights_sq = attackers * (1.0 / clients) ** 2
    t_adv = settings.attack_round or rounds
    contraction = 1.0
    for t in range(t_adv + 1, rounds):
        contraction *= 2 * norm.cdf(settings.clip_level(t) / settings.sigma) - 1
    contraction *= 2 * norm.cdf(settings.clip_level(rounds) / settings.test_sigma) - 1
    denominator = (2 * attackers * local_iterations ** 2 * lipschitz_sq * weights_sq
                   * scale ** 2 * lr ** 2 * poison_fraction ** 2 * contraction)
    radius = (fraction / denominator).sqrt()
    return torch.where(pa >= 1.0, torch.full_like(radius, math.inf), radius)


def run_crfl(cfg: RunConfig, settings: CRFL) -> Any:
    """Train with CRFL's clipping and noise, smooth the final model, certify every test input."""
    from fedshield.clients.attacks import attack_from_config
    from fedshield.simulations.engine_inline import run_inline
    from fedshield.tasks.seeding import torch_generator
    from fedshield.tasks.task import get_task

    start = time.perf_counter()
    result = run_inline(cfg, post_step=CRFLTraining(settings, cfg.rounds, cfg.seed))
    task = get_task(cfg)
    x = torch.as_tensor(task.dataset.test_x)
    y = torch.as_tensor(task.dataset.test_y)
    generator = torch_generator(cfg.seed, "crfl-smoothing")
    counts = smoothed_votes(task, result.final_vector, x, settings.test_sigma, settings.samples,
                            generator)
    attack = attack_from_config(cfg, task.dataset) if cfg.malicious_count else None
    data_attack = attack if attack is not None and attack.kind == "data" else None
    train_size = len(task.dataset.train_y)
    steps = cfg.local_steps or cfg.local_epochs * math.ceil(
        train_size / cfg.num_clients / cfg.batch_size)
    radius = crfl_radius(
        counts, settings, rounds=cfg.rounds, clients=cfg.per_round,
        attackers=settings.attackers or max(1, cfg.nominal_malicious),
        local_iterations=steps, lr=cfg.lr,
        poison_fraction=settings.poison_fraction or (
            data_attack.poison_fraction if data_attack is not None else 0.5),
        scale=settings.scale or (float(data_attack.boost) if data_attack is not None else 1.0))
    correct = counts.argmax(dim=1) == y.long()
    finite = radius[torch.isfinite(radius) & correct]
    top = float(finite.max()) if finite.numel() else 1.0
    grid = [1.1 * top * i / (settings.radii - 1) for i in range(settings.radii)]
    curve = [float((correct & (radius >= r)).double().mean()) for r in grid]
    asr = None
    inputs = _asr_inputs(cfg, task, x, y)
    if inputs is not None:
        votes = smoothed_votes(task, result.final_vector, inputs[0], settings.test_sigma,
                               settings.samples, generator)
        asr = float((votes.argmax(dim=1) == torch.as_tensor(inputs[1])).double().mean())
    result.rounds[-1].update({
        "smoothed_accuracy": curve[0], "smoothed_asr": asr,
        "certified": {"axis": "radius", "x": grid, "accuracy": curve},
        "median_radius": float(radius[correct].median()) if bool(correct.any()) else 0.0})
    result.seconds = time.perf_counter() - start
    return result


_AVERAGED = ("precision", "recall", "fpr", "malicious_share", "train_loss")


def _merged(rnd: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One round of the k group runs as one row: ids concatenated, rates averaged over the
    groups that report them, times summed; no evaluation (the ensemble is evaluated once)."""
    out: dict[str, Any] = {"round": rnd, "accuracy": None, "loss": None, "asr": None}
    for key in ("partition_ids", "malicious_in_round"):
        out[key] = [pid for row in rows for pid in row.get(key) or []]
    out["clients"] = sum(row.get("clients") or 0 for row in rows)
    for key in _AVERAGED:
        values = [row[key] for row in rows if row.get(key) is not None]
        out[key] = sum(values) / len(values) if values else None
    for key in ("aggregation_seconds", "train_seconds", "round_seconds"):
        out[key] = sum(row.get(key) or 0.0 for row in rows)
    out["skipped"] = any(row.get("skipped") for row in rows)
    out["diverged"] = any(row.get("diverged") for row in rows)
    return out
