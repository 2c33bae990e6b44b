"""The report: Markdown tables and PNG plots from a results store of constructed cells."""

import json

import pytest

from fedshield.simulations.report import ReportError, write_report
from fedshield.simulations.store import ResultsStore

RULES = ["fedavg", "krum(f=2)", "median"]
ATTACKS = ["none", "labelflip", "backdoor-patch"]
# final accuracy by (rule, attack); krum's worst case (0.6) beats fedavg's (0.3)
ACC = {("fedavg", "none"): 0.9, ("fedavg", "labelflip"): 0.3, ("fedavg", "backdoor-patch"): 0.85,
       ("krum(f=2)", "none"): 0.8, ("krum(f=2)", "labelflip"): 0.7,
       ("krum(f=2)", "backdoor-patch"): 0.6,
       ("median", "none"): 0.88, ("median", "labelflip"): 0.5,
       ("median", "backdoor-patch"): 0.8}


def fake_cell(order, rule, attack, rounds=4):
    final = ACC[(rule, attack)]
    clean = attack == "none"
    rows = []
    for r in range(1, rounds + 1):
        rows.append({
            "round": r, "accuracy": final * r / rounds, "loss": 1.0 / r,
            "asr": (0.9 if rule == "fedavg" else 0.2) if attack == "backdoor-patch" else None,
            "malicious_share": None if clean else 0.1 * (1 + RULES.index(rule)),
            "recall": 0.75 if rule.startswith("krum") and not clean else None,
            "fpr": 0.05 if rule.startswith("krum") and not clean else None,
            "precision": 0.9 if rule.startswith("krum") and not clean else None,
            "aggregation_seconds": 0.001,
        })
    summary = {"final_accuracy": final, "best_accuracy": final, "final_asr": rows[-1]["asr"],
               "rounds_to_target": 3 if final >= 0.8 else None, "target_accuracy": 0.8,
               "recall": rows[-1]["recall"], "fpr": rows[-1]["fpr"],
               "precision": rows[-1]["precision"], "malicious_share": rows[-1]["malicious_share"],
               "aggregation_seconds": 0.001}
    config = {"dataset": "digits", "model": "mlp", "partition": "dirichlet", "alpha": 0.5,
              "q": 0.5, "num_clients": 10, "clients_per_round": 0, "rounds": rounds,
              "malicious_fraction": 0.2, "num_malicious": -1, "seed": 0,
              "aggregator": rule.split("(")[0], "attack": attack}
    return {"id": f"c{order:02d}", "scenario": "t", "order": order, "engine": "inline",
            "rule": rule, "attack": attack, "config": config, "clean": clean,
            "clean_key": rule, "summary": summary, "rounds": rows, "seconds": 1.0}


@pytest.fixture
def results(tmp_path):
    store = ResultsStore(tmp_path / "res")
    store.prepare()
    order = 0
    for rule in RULES:
        for attack in ATTACKS:
            store.save_cell(fake_cell(order, rule, attack))
            order += 1
    return store


def test_report_tables_ranking_and_plots(results):
    path = write_report(results.root)
    text = path.read_text()
    assert "| rule | none | labelflip | backdoor-patch | worst |" in text
    # ranked by worst case: krum 0.6 > median 0.5 > fedavg 0.3
    ranking = text.split("### Ranking by worst-case accuracy")[1]
    assert ranking.index("krum(f=2)") < ranking.index("median") < ranking.index("fedavg")
    assert "| 1 | krum(f=2) | 60.0 | backdoor-patch | 80.0 | too few seeds |" in text
    # accuracy drop vs the attack-free twin: fedavg labelflip 90 - 30 = 60 points
    drop = text.split("### Accuracy drop")[1].split("###")[0]
    assert "| fedavg | 0.0 | 60.0 | 5.0 |" in drop
    assert "Attack success rate" in text and "| fedavg | 90.0 |" in text
    assert "Detection recall" in text
    for name in ("accuracy.png", "heatmap.png", "asr.png", "detection.png", "recall.png"):
        png = results.root / "plots" / name
        assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"
        assert f"plots/{name}" in text


def test_indexes_hold_one_row_per_cell_and_round(results):
    index = [json.loads(line) for line in (results.root / "cells.jsonl").read_text().splitlines()]
    assert len(index) == 9 and len({r["id"] for r in index}) == 9
    rounds = (results.root / "rounds.jsonl").read_text().splitlines()
    assert len(rounds) == 9 * 4
    results.rebuild_indexes()  # the end of a sweep: the CSV is written from cells/
    assert (results.root / "cells.csv").read_text().count("\n") == 10
    assert len((results.root / "rounds.jsonl").read_text().splitlines()) == 9 * 4
    env = json.loads((results.root / "environment.json").read_text())
    assert env["torch"] and env["python"]


def test_report_errors(tmp_path):
    with pytest.raises(ReportError, match="does not exist"):
        write_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no finished cells"):
        write_report(tmp_path / "empty")


def test_report_without_any_share_skips_the_detection_plot(tmp_path):
    # e.g. median under the flower engine: the ServerApp writes no update matrix
    store = ResultsStore(tmp_path)
    store.prepare()
    for order, attack in enumerate(["none", "labelflip"]):
        cell = fake_cell(order, "median", attack)
        for row in cell["rounds"]:
            row["malicious_share"] = None
        store.save_cell(cell)
    text = write_report(tmp_path).read_text()
    assert "| median | 88.0 | 50.0 | 50.0 |" in text
    assert (tmp_path / "plots" / "accuracy.png").exists()
    assert not (tmp_path / "plots" / "detection.png").exists()
