"""PNG plots of a results store (matplotlib, Agg backend): see :mod:`simulations.report`."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from fedshield.simulations.stats import Estimate, mean_ci
from fedshield.simulations.tables import Grid, ordered, summary_table, summary_value

BAND_ALPHA = 0.12


def _mean_series(cells: list[dict[str, Any]], key: str) -> tuple[list[int], list[Estimate]]:
    """Mean ± 95 % CI over the cells (seeds) of ``key`` per round, where it is defined."""
    acc: dict[int, list[float]] = defaultdict(list)
    for cell in cells:
        for row in cell["rounds"]:
            if row.get(key) is not None:
                acc[int(row["round"])].append(float(row[key]))
    rounds = sorted(acc)
    return rounds, [e for r in rounds if (e := mean_ci(acc[r])) is not None]


def _line_with_band(ax: Any, xs: list[float], ys: list[Estimate], **style: Any) -> None:
    """A line of means and, when there are several seeds, the band of their 95 % CIs."""
    ax.plot(xs, [e.mean for e in ys], **style)
    if any(e.n > 1 for e in ys):
        ax.fill_between(xs, [e.low for e in ys], [e.high for e in ys], color=style.get("color"),
                        alpha=BAND_ALPHA, lw=0)


def _colors(rules: list[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10" if len(rules) <= 10 else "tab20")
    return {rule: cmap(i % cmap.N) for i, rule in enumerate(rules)}


def _per_attack(cells: list[dict[str, Any]], key: str, path: Path, ylabel: str,
                attacks: list[str], rules: list[str],
                ylim: tuple[float, float] | None) -> Path | None:
    cols = min(3, len(attacks))
    rows = math.ceil(len(attacks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False,
                             sharex=True, sharey=ylim is not None)
    colors = _colors(rules)
    for ax, attack in zip(axes.flat, attacks, strict=False):
        for rule in rules:
            members = [c for c in cells if c["rule"] == rule and c["attack"] == attack]
            xs, ys = _mean_series(members, key)
            if xs:
                _line_with_band(ax, xs, ys, label=rule, color=colors[rule], lw=1.6,
                                marker="o" if len(xs) < 12 else None, ms=3)
        ax.set_title(f"attack: {attack}", fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ylim:
            ax.set_ylim(*ylim)
    for ax in axes[-1]:
        ax.set_xlabel("round")
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    seen: dict[str, Any] = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(lab, h)
    if not seen:  # nothing to draw (e.g. no rule defines the metric under the flower engine)
        plt.close(fig)
        return None
    spare = list(axes.flat)[len(attacks):]
    for ax in spare:
        ax.set_visible(False)
    if spare:
        spare[0].set_visible(True)
        spare[0].axis("off")
        spare[0].legend(seen.values(), seen.keys(), loc="center", fontsize=9, frameon=False,
                        title="rule")
        fig.tight_layout()
    else:
        fig.legend(seen.values(), seen.keys(), loc="lower center", ncol=min(5, len(seen)),
                   fontsize=9, frameon=False)
        rows_needed = math.ceil(len(seen) / 5)
        fig.tight_layout(rect=(0, min(0.3, 0.035 * rows_needed / rows + 0.03), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def heatmap(cells: list[dict[str, Any]], path: Path) -> Path:
    acc = Grid(cells, summary_value("final_accuracy"))
    _, order = summary_table(cells)
    data = [[acc.mean(r, a) if acc.mean(r, a) is not None else math.nan for a in acc.attacks]
            for r in order]
    fig, ax = plt.subplots(figsize=(1.2 * len(acc.attacks) + 2.6, 0.45 * len(order) + 1.6))
    image = ax.imshow(data, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(acc.attacks)), acc.attacks, rotation=30, ha="right")
    ax.set_yticks(range(len(order)), order)
    for i, row in enumerate(data):
        for j, value in enumerate(row):
            if not math.isnan(value):
                ax.text(j, i, f"{100 * value:.0f}", ha="center", va="center", fontsize=8,
                        color="black")
    ax.set_title("final clean accuracy (%) — rules ranked by worst case")
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def asr_bars(cells: list[dict[str, Any]], path: Path) -> Path | None:
    """One panel per targeted attack: horizontal bars of the final ASR of each rule."""
    asr = Grid(cells, summary_value("final_asr"))
    attacks = [a for a in asr.attacks if any(asr.mean(r, a) is not None for r in asr.rules)]
    if not attacks:
        return None
    _, order = summary_table(cells)
    colors = _colors(order)
    fig, axes = plt.subplots(1, len(attacks), figsize=(4.8 * len(attacks) + 1.8,
                                                       0.38 * len(order) + 1.4),
                             squeeze=False, sharey=True)
    for ax, attack in zip(axes[0], attacks, strict=True):
        values = [100 * (asr.mean(rule, attack) or 0.0) for rule in order]
        bars = ax.barh(range(len(order)), values, color=[colors[r] for r in order])
        ax.bar_label(bars, fmt="%.0f", fontsize=8, padding=2)
        ax.set_yticks(range(len(order)), order)
        ax.invert_yaxis()
        ax.set_xlim(0, 110)
        ax.set_xlabel("attack success rate (%)")
        ax.set_title(f"attack: {attack}", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("targeted / backdoor attack success rate at the last round (lower is better)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def certified_curves(cells: list[dict[str, Any]], path: Path) -> Path | None:
    """Certified accuracy (FLCert: vs the number m of malicious clients; CRFL: vs the certified
    radius), one line per rule × attack (mean over seeds where they share the x grid)."""
    curves = certified_means(cells)
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = _colors(list(curves))
    axes_names = set()
    for name, (axis, xs, ys) in curves.items():
        axes_names.add(axis)
        ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, ms=3, lw=1.6, label=name,
                color=colors[name])
    ax.set_xlabel(" / ".join(sorted(axes_names)))
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3)
    ax.set_title("certified accuracy: correct and provably unchanged by any attack up to x",
                 fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def certified_means(cells: list[dict[str, Any]]) -> dict[str, tuple[str, list[float], list[float]]]:
    """"rule × attack" → (axis, x, certified accuracy), averaged over the seeds that share the
    x grid (FLCert's m); a seed with its own grid (CRFL's radii) is a curve of its own."""
    groups: dict[tuple[str, tuple[float, ...], str], list[list[float]]] = defaultdict(list)
    seeds: dict[tuple[str, tuple[float, ...], str], list[int]] = defaultdict(list)
    for cell in cells:
        found = cell["summary"].get("certified")
        if found:
            key = (f"{cell['rule']} × {cell['attack']}", tuple(found["x"]), found["axis"])
            groups[key].append(found["accuracy"])
            seeds[key].append(cell.get("config", {}).get("seed", 0))
    names = [k[0] for k in groups]
    out = {}
    for key, runs in sorted(groups.items()):
        name = key[0] if names.count(key[0]) == 1 else f"{key[0]} (seed {seeds[key][0]})"
        out[name] = (key[2], list(key[1]), [sum(c) / len(c) for c in zip(*runs, strict=True)])
    return out


def breakdown_curves(curves: list[Any], path: Path, title: str) -> Path | None:
    """Worst-case accuracy (and, with targeted attacks, the highest backdoor ASR) against the
    malicious fraction, one line per rule with its 95 % CI band; a rule's
    line stops where it cannot be configured. ``curves``: :class:`simulations.breakdown.Curve`,
    ranked (the legend's order)."""
    if not curves:
        return None
    with_asr = any(c.has_asr for c in curves)
    panels = 2 if with_asr else 1
    fig, axes = plt.subplots(1, panels + 1, figsize=(5.6 * panels + 4.4, 5.2), squeeze=False,
                             gridspec_kw={"width_ratios": [1] * panels + [0.62]})
    colors = _colors([c.rule for c in curves])
    series = [(axes[0][0], "worst-case accuracy over the attacks", lambda p: p.worst)]
    if with_asr:
        series.append((axes[0][1], "highest backdoor ASR", lambda p: p.asr or (
            Estimate(0.0, 0.0, 1) if p.runnable else None)))
    for ax, ylabel, value in series:
        for curve in curves:
            kept = [(p.fraction, e) for p in curve.points if (e := value(p)) is not None]
            if kept:
                _line_with_band(ax, [x for x, _ in kept], [e for _, e in kept], label=curve.rule,
                                color=colors[curve.rule], lw=1.5, marker="o", ms=3)
        ax.set_xlabel("malicious fraction")
        ax.set_ylabel(ylabel)
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
    legend_ax = axes[0][-1]
    legend_ax.axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    legend_ax.legend(handles, labels, loc="center left", fontsize=7.5, frameon=False,
                     title="rule (ranked)")
    fig.suptitle(title.replace("**", ""), fontsize=8.5, wrap=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_all(cells: list[dict[str, Any]], out_dir: Path, suffix: str = "") -> dict[str, Path]:
    """Draw every plot for one report section; returns {title: path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _, rules = summary_table(cells)
    attacks = ordered(c["attack"] for c in cells)
    files: dict[str, Path | None] = {
        "accuracy per round": _per_attack(cells, "accuracy", out_dir / f"accuracy{suffix}.png",
                                          "clean test accuracy", attacks, rules, (0.0, 1.0)),
        "accuracy heatmap": heatmap(cells, out_dir / f"heatmap{suffix}.png"),
    }
    files["attack success rate"] = asr_bars(cells, out_dir / f"asr{suffix}.png")
    files["certified accuracy (FLCert)"] = certified_curves(
        cells, out_dir / f"certified{suffix}.png")
    attacked = [a for a in attacks if a != "none"]
    if attacked:
        attacked_cells = [c for c in cells if not c.get("clean")]
        peak = max((r["malicious_share"] for c in attacked_cells for r in c["rounds"]
                    if r.get("malicious_share") is not None), default=1.0)
        files["malicious share over rounds"] = _per_attack(
            attacked_cells, "malicious_share", out_dir / f"detection{suffix}.png",
            "malicious share of aggregate", attacked, rules,
            (0.0, min(1.0, max(0.3, 1.15 * peak))))
        files["detection recall over rounds"] = _per_attack(
            attacked_cells, "recall", out_dir / f"recall{suffix}.png",
            "recall (malicious rejected)", attacked, rules, (0.0, 1.05))
    return {name: path for name, path in files.items() if path is not None}
