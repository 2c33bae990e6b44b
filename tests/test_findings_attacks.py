"""The attack-frontier findings on constructed cells: 'broken', the table and the claims."""

from __future__ import annotations

from fedshield.simulations.findings import Cell, Results
from fedshield.simulations.findings.attacks import breaks_table, broken, check_attacks


def cell(rule, attack, acc, *, asr=None, durable=None, params=None, seed=0):
    return Cell(rule, attack, "dirichlet", seed, acc, asr, rounds=30,
                config={"aggregator_params": params or {}}, durable_rounds=durable)


def results() -> Results:
    cells = []
    for seed in (0, 1):
        for rule in ("fedavg", "median", "trimmedmean", "krum", "fltrust"):
            cells.append(cell(rule, "none", 0.90, seed=seed))
            cells.append(cell(rule, "poisonedfl", 0.85 if rule != "fedavg" else 0.2, seed=seed))
            cells.append(cell(rule, "mpaf", 0.60 if rule == "trimmedmean" else 0.89, seed=seed))
            cells.append(cell(rule, "fltrust-adaptive", 0.88, seed=seed))
            cells.append(cell(rule, "backdoor-patch", 0.9, asr=0.9 if rule == "fedavg" else 0.1,
                              durable=2, seed=seed))
            cells.append(cell(rule, "dba", 0.9, asr=0.95 if rule == "fedavg" else 0.1,
                              seed=seed))
            cells.append(cell(rule, "a3fl", 0.9, asr=0.6, seed=seed))
            cells.append(cell(rule, "edge-case", 0.9, asr=0.8 if rule == "krum" else 0.2,
                              seed=seed))
            cells.append(cell(rule, "neurotoxin", 0.9, asr=0.8, durable=5, seed=seed))
    return Results(cells)


def test_broken_means_ten_points_lost_or_half_the_backdoor_through():
    r = results()
    assert broken(r, "fedavg", "poisonedfl") and not broken(r, "median", "poisonedfl")
    assert broken(r, "trimmedmean", "mpaf") and not broken(r, "krum", "mpaf")
    assert broken(r, "median", "a3fl") and not broken(r, "median", "dba")
    assert broken(r, "median", "nothing-here") is None


def test_the_table_lists_what_each_attack_breaks():
    table = breaks_table(Results(results().cells))
    row = next(line for line in table.splitlines() if line.startswith("| mpaf |"))
    assert "| trimmedmean (1) |" in row


def test_claims_hold_and_fail_on_the_constructed_results():
    verdicts = {f.key: f.holds for f in check_attacks(results())}
    assert verdicts == {
        "poisonedfl-breaks-eight": False,  # only fedavg falls
        "mpaf-trimmed-mean": True,  # 90 → 60
        "dba-beats-centralised": True,  # 95 ≥ 90 on FedAvg
        "a3fl-beats-fixed": True,  # 0.6 ≥ 0.1 under every robust rule
        "edge-case-passes": True,  # 0.8 on Krum
        "fltrust-withstands-adaptive": True,  # 90 → 88
        "neurotoxin-durable": True,  # 5 > 2 rounds
    }
