"""Correctness of the bench-scaling machinery: exponent fit, memory probes, a tiny run.

No timed assertions; memory assertions use buffers far above allocator noise."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fedshield.simulations.bench import scaling as sc

linux_memory = pytest.mark.skipif(not sc.memory_supported(), reason="needs /proc/self/clear_refs")


def test_fit_exponent_recovers_power_laws():
    xs = [10, 100, 1000]
    assert sc.fit_exponent(xs, [3 * x**2 for x in xs]) == pytest.approx(2.0)
    assert sc.fit_exponent(xs, [0.5 * x for x in xs]) == pytest.approx(1.0)
    assert sc.fit_exponent(xs, [7.0, 7.0, 7.0]) == pytest.approx(0.0)
    assert math.isnan(sc.fit_exponent([10], [1.0]))
    assert sc.fit_exponent([10, 100, 1000], [1.0, 10.0, math.nan]) == pytest.approx(1.0)


def test_live_tensor_census_sees_a_new_tensor():
    before = sc.live_tensor_bytes()
    x = torch.empty(1_000_000)
    delta = sc.live_tensor_bytes() - before
    assert abs(delta - 4_000_000) < 100_000
    del x


@linux_memory
def test_peak_rss_counts_transient_buffers():
    # 40 MB buffers are always mmapped by glibc, so the peak sees both copies
    n, d = 10, 1_000_000
    ratio = sc.calibrate(n, d, copies=2)
    assert 1.8 < ratio < 2.3


@linux_memory
def test_memory_probe_detects_a_list_kept_beside_the_stack():
    """A fake engine keeps per-client deltas and their stack: held ≈ 2 (n·d·4)."""
    probe = sc.MemoryProbe()
    n, d = 8, 500_000
    for _ in range(2):
        with probe.phase("train"):
            deltas = [torch.ones(d) for _ in range(n)]
        stacked = torch.stack(deltas)
        with probe.phase("aggregate"):
            stacked.mean(0)
        del deltas, stacked
    assert len(probe.records) == 2
    held = probe.records[1]["held"] / (n * d * 4)
    assert 1.9 < held < 2.1


def test_synthetic_updates_shape_and_determinism():
    a, b = sc.synthetic_updates(5, 7, seed=1), sc.synthetic_updates(5, 7, seed=1)
    assert a.shape == (5, 7) and a.dtype == torch.float32 and torch.equal(a, b)


def test_bad_sizes_are_rejected():
    with pytest.raises(sc.BenchError, match="--clients"):
        sc._ints("10,abc", "--clients")
    with pytest.raises(sc.BenchError, match="positive"):
        sc._ints("0,10", "--dims")
    assert sc.main(["--rounds", "1", "--part", "engine"]) == 2


@pytest.mark.slow
def test_tiny_aggregation_scaling_run_writes_plot_and_json(tmp_path, capsys):
    png, out = tmp_path / "s.png", tmp_path / "s.json"
    code = sc.main(["--part", "aggregation", "--rules", "fedavg,median", "--clients", "4,8",
                    "--dims", "100,1000", "--fixed-d", "100", "--fixed-n", "4", "--repeats", "1",
                    "--no-memory", "--plot", str(png), "--json", str(out)])
    assert code == 0
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    points = json.loads(out.read_text())["aggregation"]
    assert {(p["rule"], p["sweep"], p["n"], p["d"]) for p in points} == {
        (r, "n", n, 100) for r in ("fedavg", "median") for n in (4, 8)
    } | {(r, "d", 4, d) for r in ("fedavg", "median") for d in (100, 1000)}
    assert all(p["seconds"] > 0 for p in points)
    assert "exponent k_n" in capsys.readouterr().out


@pytest.mark.slow
@linux_memory
def test_memory_is_measured_in_a_fresh_process(tmp_path):
    """The child process fills a finite peak ratio for a matrix above the 4 MiB floor; an
    (n, d) copy made by the rule would show as >= 1, FedAvg's mean needs far less than one."""
    out = tmp_path / "m.json"
    code = sc.main(["--part", "aggregation", "--rules", "fedavg", "--clients", "4",
                    "--dims", "300000", "--fixed-d", "300000", "--fixed-n", "4", "--repeats", "1",
                    "--plot", str(tmp_path / "m.png"), "--json", str(out)])
    assert code == 0
    points = json.loads(out.read_text())["aggregation"]
    assert all(0.0 <= p["peak_ratio"] < 0.9 for p in points)
