"""Smoke test of ``fedshield bench aggregators`` (a command: no timing is asserted)."""

from __future__ import annotations

import pytest

from fedshield.simulations.bench import aggregators as bench_aggregators


def test_bench_prints_every_rule_flower_and_the_floors(capsys: pytest.CaptureFixture) -> None:
    assert bench_aggregators.main(["--sizes", "8x300", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    for name in bench_aggregators.RULES:
        assert f"| {name} |" in out
    for flower in ("Krum", "MultiKrum", "FedMedian", "FedTrimmedAvg", "Bulyan"):
        assert f"| {flower} |" in out
    for name in ("flame", "foolsgold", "dnc", "signguard", "bucketing", "nnm"):
        row = next(line for line in out.splitlines() if line.startswith(f"| {name} |"))
        cells = [c.strip() for c in row.strip(" |").split("|")]
        assert float(cells[1].replace(",", "")) > 0  # timed
        assert cells[3:] == ["—"] * 4  # no Flower counterpart
    assert "floor: one pass X.sum(0)" in out and "floor: one Gram X@X.T" in out
    # median and trimmed mean agree with Flower's to float32 rounding on identical replies
    median_row = next(line for line in out.splitlines() if line.startswith("| median |"))
    assert float(median_row.rstrip(" |").split("|")[-1]) < 1e-5


def test_bench_rejects_bad_sizes() -> None:
    with pytest.raises(SystemExit):
        bench_aggregators.main(["--sizes", "3x100"])
    with pytest.raises(SystemExit):
        bench_aggregators.main(["--sizes", "banana"])
