"""FLCert — certified robustness by ensembles of group models (Cao, Jia, Zhang, Gong, "FLCert:
Provably Secure Federated Learning against Poisoning Attacks", IEEE TIFS 2022; first version
"Provably Secure Federated Learning against Malicious Clients", AAAI 2021).

The clients are split into k disjoint groups, deterministically by id and balanced: the clients
are ordered by ``blake2b("flcert:" + id)`` and the client at position p of that order joins group
p mod k (group sizes differ by at most one; the paper's hash-mod-k grouping can leave a group
with one client). One global model is trained per group, with the scenario's rule
over that group's clients only. A test input x is classified by majority vote of the k models,
ties to the smallest label: with c_l(x) the number of models predicting l and y = the winner,

    ŷ(x) = argmax_l c_l(x).

A malicious client can change only the model of its own group, so m malicious clients change at
most m votes. Moving m votes from y to any z ≠ y leaves the prediction unchanged iff

    c_y − m > c_z + m,  or  c_y − m = c_z + m and y < z (the tie goes to the smaller label),

so x is **certified at m** iff for every z ≠ y: c_y − c_z > 2m, or c_y − c_z = 2m with y < z.
The certified accuracy at m is the fraction of test inputs that are classified correctly and
certified at m — a lower bound on the accuracy under *any* attack by any m malicious clients,
whatever they send. (The vote gap "exceeds twice the groups the attackers can touch": with one
group per client, m attackers touch at most m groups.) At m = 0 it is the ensemble's accuracy.

Turned on by the run key ``flcert_groups = k`` (inline engine, every client every round); the
cell's last row carries ``certified_accuracy`` (a list, index m = 0 … k), the ensemble's
accuracy and ASR (the votes for the target on triggered inputs), and each group model's accuracy.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import torch

from fedshield.tasks.config import RunConfig


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


def run_flcert(cfg: RunConfig, *, on_round: Callable[[dict[str, Any]], None] | None = None
               ) -> Any:
    """Train the k group models of ``cfg`` (one inline run per group, the scenario's rule and
    attack), vote on the test set and return the engine's ``RunResult``: per round, the groups'
    rows merged (clients, detection and share averaged over the groups); the last row adds the
    ensemble's accuracy and ASR, ``certified_accuracy`` and ``group_accuracy``."""
    from fedshield.clients.attacks import attack_from_config
    from fedshield.simulations.engine_inline import RunResult, run_inline
    from fedshield.tasks.task import get_task

    start = time.perf_counter()
    groups = flcert_partition(cfg.num_clients, cfg.flcert_groups)
    group_cfg = cfg.with_updates(eval_every=cfg.rounds, flcert_groups=0)
    runs = [run_inline(group_cfg, clients=members) for members in groups]
    task = get_task(cfg)
    x = torch.as_tensor(task.dataset.test_x)
    y = torch.as_tensor(task.dataset.test_y)
    vectors = [run.final_vector for run in runs]
    counts = vote_counts(_predictions(task, vectors, x), task.dataset.num_classes)
    certified = certified_accuracy(counts, y, cfg.flcert_groups)
    asr = None
    attack = attack_from_config(cfg, task.dataset)
    inputs = (attack.asr_inputs(x, y) if cfg.malicious_count and attack is not None
              and attack.kind == "data" else None)
    if inputs is not None:
        triggered, target = inputs
        if len(triggered):
            votes = vote_counts(_predictions(task, vectors, triggered), task.dataset.num_classes)
            asr = float((votes.argmax(dim=1) == torch.as_tensor(target)).double().mean())
    rows = [_merged(rnd, [run.rounds[rnd - 1] for run in runs]) for rnd in range(1, cfg.rounds + 1)]
    rows[-1].update({"accuracy": certified[0], "loss": None, "asr": asr,
                     "certified_accuracy": certified,
                     "group_accuracy": [run.rounds[-1]["accuracy"] for run in runs],
                     "group_sizes": [len(g) for g in groups]})
    if on_round is not None:
        for row in rows:
            on_round(row)
    return RunResult(rounds=rows, final_vector=torch.stack(vectors).mean(dim=0),
                     malicious_ids=runs[0].malicious_ids,
                     seconds=time.perf_counter() - start)


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
