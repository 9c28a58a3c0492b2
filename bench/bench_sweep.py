"""Sweep throughput (issue 7): closed-loop batches per minute with 1 and 2 local workers and on a Dask
``LocalCluster`` of 2 worker processes, in the same run.

Three runners are started once and kept: a local pool of 1 worker, of 2 workers, and a
``distributed.LocalCluster`` of 2 worker processes (1 thread each) on loopback.

1. **Whole study, each runner** (scenarios/haldane_sweep.toml: 72 batches of 150 h, 9 controller
   settings): the three tables must agree (timing columns aside); cases over wall time are reported
   (worker spawn and each worker's solver builds included). This is also every worker's warm-up: it
   has built the controllers of the settings it will meet.
2. **Steady state, interleaved**: ``ROUNDS`` rounds; in each, every runner (in an order rotated from
   round to round) runs the same cases (``ROUND_PLANTS`` plants of every setting), longest first as
   timed in step 1 (what keeps a round's tail short, as it is in a long study). The rates of one
   round are measured seconds apart, so a change in the shared machine's speed (the time inside a case
   varied by 40 % between two consecutive whole-study runs here) falls on all three alike; the budgets
   are asserted on the median over rounds of each round's ratio.

Budgets: 2 workers >= 1.7x the cases per minute of 1 worker; the Dask path's time per case within 10 %
of the local pool of the same size. Quick mode (``make test``) runs a 4-case, 10-step version of the
study through the same three runners and checks only that the tables agree.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.budgets import check
from hil.sweep_cli import in_process
from twin.sweep.cases import Case, expand_cases
from twin.sweep.config import load_sweep
from twin.sweep.execute import CaseRunner, DaskRunner, LocalPoolRunner
from twin.sweep.run import SweepResult, run_sweep
from twin.sweep.store import CaseStore
from twin.sweep.worker import TIMING_COLUMNS, CaseContext

REPO = Path(__file__).resolve().parent.parent
DASK_WORKER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 128 * 2**20,
    "distributed.admin.tick.interval": "1s",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.scheduler.worker-saturation": 1.0,
}
STUDY = REPO / "scenarios" / "haldane_sweep.toml"
LABELS = ["pool_1", "pool_2", "dask_2"]


ROUNDS = 8
ROUND_PLANTS = 3  # plants of each of the 9 settings per round: 27 cases


def _whole_study(path: Path, out: Path, runner: CaseRunner) -> dict[str, Any]:
    config = load_sweep(path)
    start = time.perf_counter()
    result = run_sweep(config, out, runner, in_process)
    wall = time.perf_counter() - start
    n = result.cases.num_rows
    return {"result": result, "wall_s": wall, "per_min": 60 * n / wall, "n": n}


def _round(runner: CaseRunner, cases: Sequence[Case], context: CaseContext, out: Path) -> float:
    """Cases per minute of one round: submission to the last row, each row stored as the sweep stores it."""
    store = CaseStore(out)
    start = time.perf_counter()
    for _case, outcome in runner.run(cases, context):
        assert not isinstance(outcome, BaseException), outcome
        store.add(outcome)
    return 60 * len(cases) / (time.perf_counter() - start)


def _rows(result: SweepResult) -> list[dict[str, object]]:
    keep = [c for c in result.cases.column_names if c not in TIMING_COLUMNS]
    return result.cases.select(keep).to_pylist()


def _quick_study(tmp_path: Path) -> Path:
    """The example study cut to 4 cases of 10 steps (same file otherwise, scenario path made absolute)."""
    text = STUDY.read_text().replace('"../twin/', f'"{REPO}/twin/').replace("plants = 8", "plants = 1")
    text = text.replace('"controller.horizon" = [5, 10, 20]', '"controller.horizon" = [5, 10]')
    text = text.replace('"objective.delta_u.inp" = [0.1, 1.0, 10.0]', '"objective.delta_u.inp" = [0.1, 1.0]')
    path = tmp_path / "quick_sweep.toml"
    path.write_text(text + '\n[override]\n"loop.steps" = 10\n')
    return path


def test_sweep_throughput(benchmark: Any, tmp_path: Path) -> None:
    import dask
    from distributed import LocalCluster

    study = _quick_study(tmp_path) if benchmark.disabled else STUDY
    whole: dict[str, dict[str, Any]] = {}
    rates: dict[str, list[float]] = {label: [] for label in LABELS}

    def run() -> None:
        with (
            # As docs/scaling.md advises for CPU-bound cases: no statistical profiler sampling the case's
            # thread every 10 ms, and glibc's own trim threshold instead of the 64 kB Dask sets for workers.
            dask.config.set(DASK_WORKER_CONFIG),
            LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
            ) as cluster,
            LocalPoolRunner(1) as pool_1,
            LocalPoolRunner(2) as pool_2,
            DaskRunner(cluster.scheduler_address) as dask_2,
        ):
            runners: dict[str, CaseRunner] = {"pool_1": pool_1, "pool_2": pool_2, "dask_2": dask_2}
            for label, runner in runners.items():
                whole[label] = _whole_study(study, tmp_path / label, runner)
            if benchmark.disabled:
                return
            config = load_sweep(study)
            wall = {row["case_key"]: row["wall_s"] for row in whole["pool_1"]["result"].cases.to_pylist()}
            chosen = [c for c in expand_cases(config) if c.plant < ROUND_PLANTS]
            chosen.sort(key=lambda c: -wall[c.key])
            context = CaseContext(config.kpi, in_process)
            for r in range(ROUNDS):
                for label in LABELS[r % 3 :] + LABELS[: r % 3]:
                    rates[label].append(_round(runners[label], chosen, context, tmp_path / f"round{r}_{label}"))

    benchmark.group = "sweep"
    benchmark.pedantic(run, rounds=1, iterations=1)
    for label, r in whole.items():
        print(f"{label}: whole study, {r['n']} cases, {r['wall_s']:.1f} s, {r['per_min']:.0f} cases/min")
        benchmark.extra_info[f"{label}_whole_per_min"] = r["per_min"]
    assert _rows(whole["pool_1"]["result"]) == _rows(whole["pool_2"]["result"]) == _rows(whole["dask_2"]["result"])
    if benchmark.disabled:
        return
    speedups = [two / one for one, two in zip(rates["pool_1"], rates["pool_2"], strict=True)]
    overheads = [pool / dsk - 1.0 for pool, dsk in zip(rates["pool_2"], rates["dask_2"], strict=True)]
    for label in LABELS:
        print(
            f"{label}: steady state, rounds of {ROUND_PLANTS} plants per setting: "
            + ", ".join(f"{v:.0f}" for v in rates[label])
        )
        benchmark.extra_info[f"{label}_steady_per_min"] = statistics.median(rates[label])
    speedup, dask_overhead = statistics.median(speedups), statistics.median(overheads)
    benchmark.extra_info.update(
        {
            "speedup_2_workers": speedup,
            "speedup_2_workers_rounds": speedups,
            "speedup_2_workers_whole_run": whole["pool_2"]["per_min"] / whole["pool_1"]["per_min"],
            "dask_overhead": dask_overhead,
            "dask_overhead_rounds": overheads,
        }
    )
    print(
        "speed-up 2 workers / 1 per round: " + ", ".join(f"{v:.2f}" for v in speedups) + f"; median {speedup:.2f}x\n"
        "Dask time per case vs pool of 2 per round: "
        + ", ".join(f"{v:+.1%}" for v in overheads)
        + f"; median {dask_overhead:+.1%}"
    )
    check("sweep_speedup_2_workers", 1.0 / speedup)
    check("sweep_dask_overhead", dask_overhead)
