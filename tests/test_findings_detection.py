"""The detection findings on constructed cells: the table's figures and the claims' verdicts."""

from __future__ import annotations

from fedshield.simulations.findings import Cell, Results
from fedshield.simulations.findings.detection import check_detection, detection_table


def cell(aggregator: str, attack: str, acc: float, seed: int, *, params=None, asr=None,
         recall=None, fpr=None, precision=None) -> Cell:
    return Cell(aggregator, attack, "dirichlet", seed, acc, asr, rounds=30,
                config={"aggregator_params": params or {}}, recall=recall, fpr=fpr,
                precision=precision)


FREQFED = {"detector": "freqfed", "inner": "fedavg"}
FLDETECTOR = {"detector": "fldetector", "inner": "median"}


def cells(freqfed_asr: float, fld_recall: float) -> list[Cell]:
    out = []
    for seed in (0, 1):
        out += [cell("fedavg", "none", 0.90, seed), cell("fedavg", "scaling", 0.88, seed,
                                                          asr=1.0)]
        for attack, acc in (("none", 0.89), ("backdoor-patch", 0.88), ("scaling", 0.87),
                            ("minmax", 0.80 + 0.02 * seed)):
            asr = freqfed_asr if attack in ("backdoor-patch", "scaling") else None
            out.append(cell("detect", attack, acc, seed, params=FREQFED, asr=asr,
                            recall=1.0, fpr=0.3 if attack != "none" else 0.4, precision=0.5))
            out.append(cell("detect", attack, 0.89, seed, params=FLDETECTOR, asr=0.0,
                            recall=fld_recall, fpr=0.0, precision=1.0))
    return out


def test_table_names_compositions_and_gives_mean_and_std_over_seeds():
    table = detection_table(Results(cells(0.01, 0.95)))
    lines = table.splitlines()
    freqfed = next(line for line in lines if line.startswith("| freqfed+fedavg |"))
    # worst attack minmax: accuracy 0.80 and 0.82 -> 81.0 ± 1.4
    assert "81.0 ± 1.4 (minmax)" in freqfed and "| 0.40 ± 0.00 |" in freqfed
    assert any(line.startswith("| fldetector+median | 0.95 ± 0.00") for line in lines)
    assert "Detection recall per attack" in table and "Detection precision" in table


def test_claims_hold_fail_and_go_missing_where_they_should():
    verdicts = {f.key: f.holds for f in check_detection(Results(cells(0.01, 0.95)))}
    assert verdicts["freqfed-stops-backdoors"] is True
    assert verdicts["fldetector-detects"] is True
    assert verdicts["detectors-keep-accuracy"] is False  # freqfed's worst 81.0 < 90 − 5
    assert verdicts["indicator-stops-backdoors"] is None  # no BackdoorIndicator cell
    verdicts = {f.key: f.holds for f in check_detection(Results(cells(0.2, 0.5)))}
    assert verdicts["freqfed-stops-backdoors"] is False
    assert verdicts["fldetector-detects"] is False
