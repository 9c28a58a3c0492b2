"""The sweep's figures: the KPI's distribution per setting, and the Pareto front of KPI vs violation risk."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pyarrow as pa

from twin.sweep.summary import pareto_front

__all__ = ["plot_distribution", "plot_pareto"]


def _short(settings_json: str, index: int) -> str:
    """``#3`` over one ``leaf=value`` line per varied key (the last part of each dotted key)."""
    settings = json.loads(settings_json)
    return "\n".join(
        [
            f"#{index}",
            *(
                f"{k.rsplit('.', 1)[-1]}={v:g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
                for k, v in settings.items()
            ),
        ]
    )


def plot_distribution(path: Path, cases: pa.Table, summary: pa.Table, kpi_name: str) -> None:
    """Box plot of the main KPI per setting, every Monte Carlo plant as a dot (violating ones red)."""
    rows = [r for r in cases.to_pylist() if r["status"] == "ok"]
    settings = summary.to_pylist()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(settings) + 2), 4.5))
    data = [[r["kpi"] for r in rows if r["setting_index"] == s["setting_index"]] for s in settings]
    ax.boxplot(data, whis=(5, 95), showfliers=False)
    for pos, s in enumerate(settings, start=1):
        for r in rows:
            if r["setting_index"] == s["setting_index"]:
                ax.plot(pos, r["kpi"], "o", ms=3, color="tab:red" if r["violated"] else "tab:blue", alpha=0.7)
    ax.set_xticks(
        range(1, len(settings) + 1), [_short(s["settings"], s["setting_index"]) for s in settings], fontsize=7
    )
    ax.set_ylabel(kpi_name)
    ax.set_title(f"{kpi_name} per setting (box P5-P95; red: a bound violated)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pareto(path: Path, summary: pa.Table, kpi_name: str, direction: str) -> None:
    """Mean KPI against violation probability per setting; the non-dominated settings joined."""
    rows = [r for r in summary.to_pylist() if r["kpi_mean"] is not None]
    front = set(pareto_front(summary, direction))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        on = r["setting_index"] in front
        ax.plot(r["violation_probability"], r["kpi_mean"], "o", color="tab:orange" if on else "tab:gray")
        ax.annotate(
            str(r["setting_index"]),
            (r["violation_probability"], r["kpi_mean"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    line = sorted((r["violation_probability"], r["kpi_mean"]) for r in rows if r["setting_index"] in front)
    if line:
        ax.plot(*zip(*line, strict=True), "-", color="tab:orange", label="Pareto front")
        ax.legend()
    ax.set_xlabel("violation probability")
    ax.set_ylabel(f"mean {kpi_name}")
    ax.set_title(f"{kpi_name} ({direction}) vs violation risk; numbers: setting index (summary.csv)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
