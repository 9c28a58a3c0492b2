"""Bayesian search (optuna's TPE sampler) over the sweep's settings, with a trial budget.

Each trial asks optuna for a setting, runs that setting's Monte Carlo plants (in parallel, on the same
runner as any sweep), and tells optuna the mean KPI over the plants that finished (a trial whose plants
all failed is told as failed). Trials run one after the other; the parallelism is the plants of a trial.

The sampler is seeded from the sweep's seed and sees only the told values, which are deterministic, so
the same sweep suggests the same settings whatever runs the cases. That is also how it resumes: a re-run
replays the trials, finds their cases already done (same scenario text, same key) and reads them back
instead of running them, and continues where the killed run stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from twin.sweep.cases import Case, base_data, limits_of, setting_cases
from twin.sweep.config import RandomRange, SweepConfig, Value
from twin.sweep.execute import CaseRunner
from twin.sweep.progress import SweepProgress
from twin.sweep.store import CaseStore
from twin.sweep.worker import CaseContext

__all__ = ["run_trials"]


def _suggest(trial: Any, key: str, spec: tuple[Value, ...] | RandomRange) -> Value:
    if isinstance(spec, RandomRange):
        if spec.integer:
            return int(trial.suggest_int(key, int(spec.low), int(spec.high), log=spec.log))
        return float(trial.suggest_float(key, spec.low, spec.high, log=spec.log))
    if all(isinstance(v, bool | int | float | str) for v in spec):
        return spec[list(spec).index(trial.suggest_categorical(key, list(spec)))]
    # Lists (bounds) are not optuna choices: choose their index.
    return spec[int(trial.suggest_categorical(key, list(range(len(spec)))))]


def run_trials(
    config: SweepConfig,
    context: CaseContext,
    store: CaseStore,
    runner: CaseRunner,
    progress: SweepProgress,
    on_row: Callable[[dict[str, Any]], None],
) -> tuple[list[Case], int]:
    """Run ``config.trials`` trials; return every trial's cases and how many were found already done.

    ``on_row`` is called with each row run now (after it is stored).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed = int(np.random.SeedSequence([config.seed, 2]).generate_state(1, dtype=np.uint32)[0])
    study = optuna.create_study(
        direction="maximize" if config.kpi.direction == "max" else "minimize",
        sampler=optuna.samplers.TPESampler(seed=seed),
    )
    base = base_data(config)
    limits = limits_of(config, base)
    all_cases: list[Case] = []
    skipped = 0
    for index in range(config.trials):
        trial = study.ask()
        settings = {k: _suggest(trial, k, v) for k, v in config.vary.items()}
        cases = setting_cases(config, base, index, settings, limits)
        done = store.done()
        pending = [c for c in cases if c.key not in done]
        skipped += len(cases) - len(pending)
        for _ in range(len(cases) - len(pending)):
            progress.advance(ok=True)
        for _case, outcome in runner.run(pending, context):
            if isinstance(outcome, BaseException):
                progress.advance(ok=False)
                continue
            store.add(outcome)
            on_row(outcome)
            progress.advance(ok=outcome["status"] == "ok")
        all_cases.extend(cases)
        kpis = [r["kpi"] for r in store.rows(c.key for c in cases) if r["status"] == "ok"]
        if kpis:
            study.tell(trial, float(np.mean(kpis)))
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return all_cases, skipped
