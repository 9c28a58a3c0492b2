"""What ``bioimp fit`` writes: ``fit.json``, ``params.toml`` and the figures.

* ``fit.json``: solver status of every start, the objective, each estimate with its standard error,
  95 % interval and identifiability flags, the correlation matrix, the noise scales, per batch the
  initial states and residual RMS.
* ``params.toml``: a ``[twin.params]`` table (every estimated parameter and every ``[fixed]`` override):
  paste it into a scenario (or append the file to one without a ``[twin]`` table) and the twin runs with
  the calibrated values; ``[plant.params]`` takes the same names for a simulated plant.
* ``fit_<batch>.png`` per batch (data, fitted trajectory, 95 % prediction band, per signal) and
  ``residuals_<signal>.png`` per signal (weighted residuals over time, every batch).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from twin.fit.estimate import FitResult

__all__ = ["params_toml", "write_outputs"]


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def fit_json(result: FitResult) -> dict[str, Any]:
    """The report as a JSON-ready dict (non-finite numbers become null)."""
    names = [p.name for p in result.params]
    return {
        "model": result.spec.name,
        "spec": result.fit.source,
        "success": result.success,
        "objective": result.objective,
        "n_data": result.n_data,
        "solver": {
            "best_start": result.best_start,
            "starts": [
                {"start": s.start, "status": s.status, "success": s.success, "objective": _finite(s.objective),
                 "iterations": s.iterations}
                for s in result.starts
            ],
        },
        "parameters": {
            p.name: {
                "estimate": p.estimate,
                "unit": p.unit,
                "se": _finite(p.se),
                "ci95": [_finite(p.ci95[0]), _finite(p.ci95[1])],
                "scale": p.scale,
                "identifiable": p.identifiable,
                "flags": list(p.flags),
            }
            for p in result.params
        },
        "correlation": {"names": names, "matrix": [[_finite(v) for v in row] for row in result.correlation]},
        "noise": {
            s: {"sigma": result.fit.noise[s].sigma, "rel_sigma": result.fit.noise[s].rel_sigma,
                "estimated": result.fit.noise[s].estimate, "scale": result.noise_factor[s]}
            for s in result.signals
        },
        "batches": [
            {
                "name": bf.batch.name,
                "source": bf.batch.source,
                "n_samples": {s: len(bf.residuals[s]) for s in result.signals},
                "x0": bf.x0,
                "x0_se": bf.x0_se,
                "weighted_rms": {s: (_finite(float(np.sqrt(np.mean(r**2)))) if r.size else None)
                                 for s, r in bf.residuals.items()},
            }
            for bf in result.batches
        ],
    }


def params_toml(result: FitResult) -> str:
    """The calibrated parameters as a scenario's ``[twin.params]`` table."""
    lines = [
        f"# bioimp fit: model {result.spec.name!r}, {len(result.batches)} batches "
        f"({', '.join(b.batch.name for b in result.batches)}); uncertainty in fit.json.",
        "# Paste into a scenario (or append to one without a [twin] table).",
        "[twin.params]",
    ]
    for p in result.params:
        note = "" if p.identifiable else "   # NOT identifiable from these data: " + "; ".join(p.flags)
        lines.append(f"{p.name} = {p.estimate!r}{note}")
    for name, value in result.fit.fixed.items():
        lines.append(f"{name} = {float(value)!r}   # fixed in the fit spec")
    return "\n".join(lines) + "\n"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def write_figures(result: FitResult, out: Path) -> list[Path]:
    """One figure per batch and one residual plot per signal (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = result.spec
    written: list[Path] = []
    tu = spec.time_unit
    nsig = len(result.signals)
    cols = min(3, nsig)
    rows = math.ceil(nsig / cols)
    for bf in result.batches:
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
        for i, s in enumerate(result.signals):
            ax = axes[i // cols][i % cols]
            tau = bf.grid.tau
            ax.fill_between(tau, bf.y[i] - bf.band[i], bf.y[i] + bf.band[i], color="tab:blue", alpha=0.2,
                            label="95 % prediction band")
            ax.plot(tau, bf.y[i], color="tab:blue", label="fit")
            data = bf.batch.samples.get(s, ())
            ax.plot([d.t for d in data], [d.value for d in data], "o", color="k", ms=4, label="data")
            ax.set_title(f"{s} [{spec.units[s]}]")
            ax.set_xlabel(f"t [{tu}]")
        for j in range(nsig, rows * cols):
            axes[j // cols][j % cols].axis("off")
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"batch {bf.batch.name}: data, fit and 95 % prediction band")
        fig.tight_layout()
        path = out / f"fit_{_safe(bf.batch.name)}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    for i, s in enumerate(result.signals):
        fig, ax = plt.subplots(figsize=(6.0, 3.2))
        for bf in result.batches:
            t = [bf.grid.tau[k] for k in bf.grid.sample_idx[s]]
            ax.plot(t, bf.residuals[s], "o", ms=4, label=bf.batch.name)
        for level in (-1.96, 0.0, 1.96):
            ax.axhline(level, color="grey", lw=0.8, ls="-" if level == 0 else "--")
        ax.set_xlabel(f"t [{tu}]")
        ax.set_ylabel("(model - data) / sigma")
        ax.set_title(f"residuals of {s} (dashed: ±1.96)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"residuals_{_safe(s)}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
        del i
    return written


def write_outputs(result: FitResult, out: Path) -> list[Path]:
    """Write fit.json, params.toml and the figures into ``out`` (created if needed)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "fit.json").write_text(json.dumps(fit_json(result), indent=2) + "\n", encoding="utf-8")
    (out / "params.toml").write_text(params_toml(result), encoding="utf-8")
    return [out / "fit.json", out / "params.toml", *write_figures(result, out)]
