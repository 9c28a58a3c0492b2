"""Sweep throughput (issue 7): closed-loop batches per minute with 1 and 2 local workers and on a Dask
``LocalCluster`` of 2 worker processes, in the same run.

The Haldane example study (scenarios/haldane_sweep.toml: 72 batches of 150 h, 9 controller settings) runs
three times into fresh directories — a local pool of 1 worker, of 2 workers, and a
``distributed.LocalCluster`` of 2 worker processes (1 thread each) on loopback — and the three tables must
agree (timing columns aside). Two rates are measured per runner:

* **whole run**: cases over wall time from the runner's start (worker spawn and each worker's solver
  builds included);
* **steady state**: the rate between the moment every worker has finished its first case and the last
  case — what a long study (1,000 cases) runs at, once each worker's one-off start-up (spawn, imports,
  one build per controller, ~2–5 s) is paid.

Budgets (steady state): 2 workers ≥ 1.7× the cases per minute of 1 worker; the Dask path's time per case
within 10 % of the local pool of the same size. Quick mode (``make test``) runs a 4-case, 10-step
version of the study through the same three runners and checks only that the tables agree.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.budgets import check
from hil.sweep_cli import in_process
from twin.sweep.config import load_sweep
from twin.sweep.execute import CaseRunner, DaskRunner, LocalPoolRunner, Outcome
from twin.sweep.run import SweepResult, run_sweep
from twin.sweep.worker import TIMING_COLUMNS, CaseContext

REPO = Path(__file__).resolve().parent.parent
DASK_WORKER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 128 * 2**20,
}
STUDY = REPO / "scenarios" / "haldane_sweep.toml"


class _Stopwatch:
    """Wraps a runner and notes when each case comes back."""

    def __init__(self, inner: CaseRunner) -> None:
        self.inner = inner
        self.done_at: list[float] = []

    def run(self, cases: Sequence[Any], context: CaseContext) -> Iterator[Outcome]:
        for outcome in self.inner.run(cases, context):
            self.done_at.append(time.perf_counter())
            yield outcome

    def close(self) -> None:
        self.inner.close()


def _timed(path: Path, out: Path, make_runner: Callable[[], CaseRunner], workers: int) -> dict[str, Any]:
    config = load_sweep(path)
    start = time.perf_counter()
    runner = make_runner()
    watch = _Stopwatch(runner)
    try:
        result = run_sweep(config, out, watch, in_process)  # type: ignore[arg-type]
    finally:
        runner.close()
    wall = time.perf_counter() - start
    n = result.cases.num_rows
    # Steady state: from the completion at which every worker has surely finished a case (the
    # workers-th) to the last, over the cases finished in between.
    first = watch.done_at[workers - 1]
    steady = (n - workers) / (watch.done_at[-1] - first) * 60 if n > workers else float("nan")
    case_s = sum(result.cases.column("wall_s").to_pylist()) / n  # inside a case: grows if workers share a core
    return {"result": result, "wall_s": wall, "per_min": 60 * n / wall, "steady_per_min": steady, "n": n,
            "case_s": case_s}


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
    runs: dict[str, dict[str, Any]] = {}
    makers: dict[str, tuple[int, Callable[[str], CaseRunner]]] = {
        "pool_1": (1, lambda _: LocalPoolRunner(1)),
        "pool_2": (2, lambda _: LocalPoolRunner(2)),
        "dask_2": (2, DaskRunner),
    }

    def run() -> None:
        with (
            # As docs/scaling.md advises for CPU-bound cases: no statistical profiler sampling the case's
            # thread every 10 ms, and glibc's own trim threshold instead of the 64 kB Dask sets for workers.
            dask.config.set(DASK_WORKER_CONFIG),
            LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
            ) as cluster,
        ):
            for label, (workers, make) in makers.items():
                address = cluster.scheduler_address
                runs[label] = _timed(study, tmp_path / label, lambda: make(address), workers)  # noqa: B023

    benchmark.group = "sweep"
    benchmark.pedantic(run, rounds=1, iterations=1)
    for label, r in runs.items():
        print(
            f"{label}: {r['n']} cases, {r['wall_s']:.1f} s, {r['per_min']:.0f} cases/min whole run, "
            f"{r['steady_per_min']:.0f} cases/min steady state, {r['case_s']:.3f} s inside a case"
        )
        for figure in ("per_min", "steady_per_min", "case_s"):
            benchmark.extra_info[f"{label}_{figure}"] = r[figure]
    assert _rows(runs["pool_1"]["result"]) == _rows(runs["pool_2"]["result"]) == _rows(runs["dask_2"]["result"])
    speedup = runs["pool_2"]["steady_per_min"] / runs["pool_1"]["steady_per_min"]
    dask_overhead = runs["pool_2"]["steady_per_min"] / runs["dask_2"]["steady_per_min"] - 1.0
    speedup_whole = runs["pool_2"]["per_min"] / runs["pool_1"]["per_min"]
    benchmark.extra_info.update(
        {"speedup_2_workers": speedup, "speedup_2_workers_whole_run": speedup_whole, "dask_overhead": dask_overhead}
    )
    print(
        f"speed-up 2 workers / 1: {speedup:.2f}x steady state ({speedup_whole:.2f}x whole run); "
        f"Dask time per case vs pool of 2: {dask_overhead:+.1%}"
    )
    if not benchmark.disabled:
        check("sweep_speedup_2_workers", 1.0 / speedup)
        check("sweep_dask_overhead", dask_overhead)
