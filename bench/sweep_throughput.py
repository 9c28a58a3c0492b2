"""Sweep throughput: closed-loop batches per minute with 1 and 2 local workers and on a Dask LocalCluster.

Runs the same sweep three times into fresh directories — a local pool of 1 worker, of 2 workers, and a
``distributed.LocalCluster`` of 2 worker processes (1 thread each) on loopback — and prints the wall time
(runner start-up included), cases per minute, the time spent inside cases summed over workers (it grows
when the workers compete for cores), the speed-up of 2 workers over 1, the Dask path's
overhead against the pool of the same size, and whether the three tables agree (timing columns aside).
Not a pytest module (the Haldane example takes about a minute a run on 2 cores):

    PYTHONPATH=. .venv/bin/python bench/sweep_throughput.py scenarios/haldane_sweep.toml
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from hil.sweep_cli import in_process
from twin.sweep.config import load_sweep
from twin.sweep.execute import CaseRunner, DaskRunner, LocalPoolRunner
from twin.sweep.run import SweepResult, run_sweep
from twin.sweep.worker import TIMING_COLUMNS


def _timed(path: str, out: Path, make_runner: Callable[[], CaseRunner]) -> tuple[float, SweepResult]:
    config = load_sweep(path)
    start = time.perf_counter()
    with make_runner() as runner:
        result = run_sweep(config, out, runner, in_process)
    return time.perf_counter() - start, result


def _rows(result: SweepResult) -> list[dict[str, object]]:
    keep = [c for c in result.cases.column_names if c not in TIMING_COLUMNS]
    return result.cases.select(keep).to_pylist()


def main(path: str) -> None:
    """Print one line per runner, then the speed-up, the Dask overhead and the agreement."""
    from distributed import LocalCluster

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        runs: dict[str, tuple[float, SweepResult]] = {}
        runs["pool, 1 worker"] = _timed(path, root / "w1", lambda: LocalPoolRunner(1))
        runs["pool, 2 workers"] = _timed(path, root / "w2", lambda: LocalPoolRunner(2))
        with LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        ) as cluster:
            address = cluster.scheduler_address
            runs["dask, 2 workers"] = _timed(path, root / "dask", lambda: DaskRunner(address))
        for label, (wall, result) in runs.items():
            n = result.cases.num_rows
            busy = sum(result.cases.column("wall_s").to_pylist())  # time inside cases, summed over workers
            print(
                f"{label:16s} {n:4d} cases  {wall:7.1f} s  {60 * n / wall:6.1f} cases/min  "
                f"(sum of case times {busy:6.1f} s)",
                flush=True,
            )
        w1, w2, dask = (runs[k][0] for k in ("pool, 1 worker", "pool, 2 workers", "dask, 2 workers"))
        print(f"speed-up 2 workers / 1: {w1 / w2:.2f}x;  Dask overhead vs pool of 2: {dask / w2 - 1:+.1%}")
        same = (
            _rows(runs["pool, 1 worker"][1]) == _rows(runs["pool, 2 workers"][1]) == _rows(runs["dask, 2 workers"][1])
        )
        print(f"tables identical (timing columns aside): {same}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "scenarios/haldane_sweep.toml")
