"""A whole sweep: expand, skip what is done, run the rest, write the table, the summary and the plots."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from twin.sweep.cases import Case, expand_cases
from twin.sweep.config import SweepConfig
from twin.sweep.execute import CaseRunner
from twin.sweep.plots import plot_distribution, plot_pareto
from twin.sweep.progress import SweepProgress
from twin.sweep.store import CaseStore
from twin.sweep.summary import summarize, write_summary
from twin.sweep.worker import CaseContext, Connector

__all__ = ["SweepResult", "run_sweep"]


@dataclass(frozen=True)
class SweepResult:
    """What a run of a sweep did.

    Attributes:
        cases: the full table (every case of the sweep finished so far, this run's and earlier ones).
        summary: one row per setting.
        ran: cases run now; skipped: cases found done; failed: cases recorded with an error now;
        lost: cases the runner lost (a worker died): not recorded, so a re-run retries them.
    """

    cases: pa.Table
    summary: pa.Table
    ran: int
    skipped: int
    failed: int
    lost: int


def prepare(config: SweepConfig, out_dir: Path) -> tuple[list[Case], CaseStore]:
    """Validate every setting, open DIR and keep a copy of the sweep and its base scenario there."""
    cases = expand_cases(config)
    store = CaseStore(out_dir)
    (out_dir / "sweep.toml").write_text(config.source, encoding="utf-8")
    (out_dir / "scenario.toml").write_text(config.scenario_text, encoding="utf-8")
    return cases, store


def run_sweep(
    config: SweepConfig,
    out_dir: Path,
    runner: CaseRunner,
    connect: Connector,
    progress: SweepProgress | None = None,
) -> SweepResult:
    """Run the cases of ``config`` not yet in ``out_dir`` on ``runner``; ``connect`` makes each case's Plant.

    Every finished case is recorded at once (atomically), so an interruption (Ctrl-C: KeyboardInterrupt)
    loses only the cases running at that moment; ``cases.parquet`` is rewritten before it propagates.
    """
    cases, store = prepare(config, out_dir)
    adaptive = config.search == "optuna"
    done = store.done()
    pending = [c for c in cases if c.key not in done]
    total = config.trials * config.plants if adaptive else len(cases)
    progress = progress or SweepProgress(total, 0 if adaptive else len(cases) - len(pending))
    counts = {"failed": 0, "lost": 0, "ran": 0}
    context = CaseContext(config.kpi, connect)
    skipped = len(cases) - len(pending)

    def finished(row: dict[str, Any]) -> None:
        counts["ran"] += 1
        counts["failed"] += row["status"] != "ok"

    complete = not adaptive  # an adaptive sweep knows its cases only once its trials are done
    try:
        with progress:
            if adaptive:
                from twin.sweep.bayes import run_trials

                cases, skipped = run_trials(config, context, store, runner, progress, finished)
                complete = True
            else:
                for _case, outcome in runner.run(pending, context):
                    if isinstance(outcome, BaseException):
                        counts["lost"] += 1
                        progress.advance(ok=False)
                        continue
                    store.add(outcome)
                    finished(outcome)
                    progress.advance(ok=outcome["status"] == "ok")
    finally:
        table = store.write_table([c.key for c in cases] if complete else None)
    summary = summarize(table)
    write_summary(out_dir / "summary.csv", summary)
    kpi_name = config.kpi.main
    plot_distribution(out_dir / "kpi_distribution.png", table, summary, kpi_name)
    plot_pareto(out_dir / "pareto.png", summary, kpi_name, config.kpi.direction)
    lost = len({c.key for c in cases}) - table.num_rows
    return SweepResult(table, summary, counts["ran"], skipped, counts["failed"], lost)
