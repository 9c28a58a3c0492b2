"""The CHO batch's two speed figures (issue 5): the economic NMPC's re-solve, and a whole batch over ZeroMQ.

* ``test_cho_nmpc_step``: the slow level of the default CHO scenario (twin/scenarios/cho_fedbatch.toml)
  is :class:`controllers.planners.NmpcPlanner`, which re-solves the **whole remaining batch**
  (:meth:`controllers.batch_ocp.BatchOcp.solve`, shrinking horizon: 336 h down to 0) every ``replan_s``
  from the EKF twin's estimate. The re-solves are timed where they really happen: along the default
  14-day closed loop (in-process plant, :func:`twin.compare.run_one`), each call's own
  ``BatchSolution.compute_s`` recorded. The issue's "horizon covering at least 48 h" is read as: the
  re-solves whose remaining horizon is >= 48 h (all but the last two days'). The first solve is the cold
  start from the rollout (no primal-dual warm start yet) and is reported apart. Budget: p99 of those
  re-solves (see ``cho_nmpc_step_p99_ms``). Quick mode stops the 14-day batch's loop after 8 h
  (3 solves).
* ``test_cho_batch_over_zmq``: the whole default batch exactly as a user runs it,
  ``bioimp run twin/scenarios/cho_fedbatch.toml --out DIR`` in a child process (its plant a
  ``bioimp plant serve`` process, reached over ZeroMQ; EKF twin; SQLite batch record; summary, CSV and
  figure), timed end to end, interpreter start included. The compiled planner NLP is cached on disk
  (``~/.cache/bioimp``): an untimed set-up builds the planner once first, which compiles only if the
  cache is cold (reported as ``cache_was_cold``), so the timed run is the usual case, a warm cache.
  Budget: ``cho_batch_wall_s``. Quick mode runs 48 steps (4 h).
"""

from __future__ import annotations

import json
import math
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.budgets import check
from controllers.batch_ocp import BatchOcp, BatchSolution
from controllers.planners import NmpcPlanner
from twin import compare
from twin.cascade_setup import build_planner
from twin.scenario import CHO_SCENARIO, load_scenario

ROOT = Path(__file__).parents[1]
HORIZON_MIN_H = 48.0  # the "horizon covering at least 48 h"
QUICK_NMPC_STEPS = 97  # 8 h 5 min of 5-min periods: the cold solve and two warm re-solves (replan 4 h)
QUICK_BATCH_STEPS = 48  # 4 h
ITERATION_LIMIT = "Maximum_Iterations_Exceeded"


def _ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1e3, q))


def test_cho_nmpc_step(benchmark: Any, monkeypatch: Any) -> None:
    """Every re-solve of the CHO economic NMPC along the default 14-day closed-loop batch."""
    scenario = load_scenario(CHO_SCENARIO)
    assert scenario.cascade is not None and scenario.cascade.planner == "nmpc"
    if benchmark.disabled:
        # The batch stays 14 days long (the planner's horizon is the remaining batch); only the loop
        # stops early, so quick mode times the same long-horizon re-solves.
        real_run_loop = compare.run_loop
        monkeypatch.setattr(compare, "run_loop", lambda **kw: real_run_loop(**{**kw, "steps": QUICK_NMPC_STEPS}))
    solves: list[dict[str, Any]] = []
    notes: list[str] = []
    real_solve = BatchOcp.solve

    def solve_recorded(self: BatchOcp, x0: Any, p: Any, duration: float, *args: Any, **kwargs: Any) -> BatchSolution:
        sol = real_solve(self, x0, p, duration, *args, **kwargs)
        if not notes:
            notes.append(self.compile_note)
        # ``duration`` is the remaining batch in the planner model's time units (hours for cho_fedbatch).
        hours = duration * self.spec.seconds_per_time_unit / 3600.0
        solves.append({"horizon_h": hours, "s": sol.compute_s, "iter": sol.iterations, "status": sol.status})
        return sol

    monkeypatch.setattr(BatchOcp, "solve", solve_recorded)
    score: list[Any] = []

    def run() -> None:
        score.append(compare.run_one(scenario, "nmpc"))

    benchmark.group = "cho"
    benchmark.pedantic(run, rounds=1, iterations=1)

    horizon_h = [s["horizon_h"] for s in solves]
    assert solves and all(s["s"] > 0 and math.isfinite(s["s"]) for s in solves)
    long = [s for s, h in zip(solves[1:], horizon_h[1:], strict=True) if h >= HORIZON_MIN_H]
    cold = solves[0]
    warm_s = [s["s"] for s in long]
    info: dict[str, float] = {
        "cold_solve_ms": cold["s"] * 1e3,
        "cold_iterations": float(cold["iter"]),
        "solves": float(len(solves)),
        "solves_ge_48h": float(len(long)),
        "iteration_limit_hits": float(sum(s["status"] == ITERATION_LIMIT for s in solves)),
        "not_ok": float(sum(s["status"] != "ok" for s in solves)),
        "iteration_limit_hits_ge_48h": float(sum(s["status"] == ITERATION_LIMIT for s in long)),
        "batch_wall_s": score[0].wall_s,
        "planner_share_of_batch": sum(s["s"] for s in solves) / score[0].wall_s,
    }
    if warm_s:
        info.update({
            "p50_ms": _ms(warm_s, 50),
            "p99_ms": _ms(warm_s, 99),
            "max_ms": _ms(warm_s, 100),
            "iterations_p50": float(np.median([s["iter"] for s in long])),
            "iterations_max": float(max(s["iter"] for s in long)),
        })
        # The re-solves stopped at the warm iteration limit are the slow tail: the converged ones apart.
        ok_s = [s["s"] for s in long if s["status"] == "ok"]
        if ok_s:
            info.update({"ok_p50_ms": _ms(ok_s, 50), "ok_p99_ms": _ms(ok_s, 99)})
    benchmark.extra_info.update(info)
    print(
        f"\nCHO planner ({notes[0]}): {len(solves)} solves; cold {info['cold_solve_ms']:.0f} ms "
        f"({cold['iter']} it., {horizon_h[0]:.0f} h); {len(long)} re-solves with >= {HORIZON_MIN_H:g} h left: "
        + (f"p50 {info['p50_ms']:.0f} ms, p99 {info['p99_ms']:.0f} ms, max {info['max_ms']:.0f} ms, " if warm_s else "")
        + f"{info['iteration_limit_hits']:.0f} at the iteration limit ({info['iteration_limit_hits_ge_48h']:.0f} of "
        f"the >= {HORIZON_MIN_H:g}-h ones), {info['not_ok']:.0f} not ok; "
        f"batch {score[0].wall_s:.1f} s, {100 * info['planner_share_of_batch']:.0f} % of it in the planner"
    )
    if benchmark.disabled:
        assert len(long) == 2, horizon_h
        return
    assert len(long) >= 60  # 14 days, a re-solve every 4 h, >= 48 h left: 72
    check("cho_nmpc_step_p99_ms", info["p99_ms"])


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def test_cho_batch_over_zmq(benchmark: Any, tmp_path: Path) -> None:
    """The whole default 14-day CHO batch as ``bioimp run`` runs it, end to end; 4 h in quick mode."""
    scenario_path = CHO_SCENARIO
    if benchmark.disabled:
        text, n = re.subn(r"(?m)^steps\s*=.*$", f"steps = {QUICK_BATCH_STEPS}", CHO_SCENARIO.read_text())
        assert n == 1, "the CHO scenario's [loop] steps line was not found"
        scenario_path = tmp_path / CHO_SCENARIO.name
        scenario_path.write_text(text)
    steps = load_scenario(scenario_path).loop.steps
    out = tmp_path / "run"
    timing: dict[str, float] = {}
    notes: list[str] = []

    def warm_cache() -> None:
        # Untimed: build the scenario's planner once here, which compiles its NLP into the on-disk cache
        # only if the cache is cold (a fresh machine, or a changed problem), so the timed run measures the
        # user's usual case. The note says which happened ("reused", "compiled", or why interpreted).
        planner = build_planner(load_scenario(scenario_path))
        assert isinstance(planner, NmpcPlanner)
        notes.append(planner.ocp.compile_note)

    def run() -> None:
        cpu0 = _children_cpu_s()
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "hil.cli", "run", str(scenario_path), "--out", str(out)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        timing["wall_s"] = time.perf_counter() - start
        # CPU time of the run and its plant server: on a shared 2-core machine the wall time also holds
        # the waits for other jobs' processes, the CPU time does not.
        timing["cpu_s"] = _children_cpu_s() - cpu0
        assert proc.returncode == 0, proc.stderr[-2000:]

    benchmark.group = "cho"
    benchmark.pedantic(run, setup=warm_cache, rounds=1, iterations=1)
    summary = json.loads((out / "summary.json").read_text())
    step_ms = summary["controller"]["step_ms"]
    assert summary["steps"] == steps
    assert all(0 < step_ms[k] < math.inf for k in ("p50", "p90", "p99", "max"))
    assert step_ms["p50"] <= step_ms["p99"] <= step_ms["max"]
    info = {
        "wall_s": timing["wall_s"],
        "cpu_s": timing["cpu_s"],
        "steps": float(steps),
        "loop_step_p50_ms": float(step_ms["p50"]),
        "loop_step_p99_ms": float(step_ms["p99"]),
        "loop_step_max_ms": float(step_ms["max"]),
        "fallbacks": float(summary["controller"]["fallbacks"]),
        "deadline_misses": float(summary["deadline_misses"]),
        "refused_writes": float(summary["refused_writes"]),
        "cache_was_cold": float(notes[0] == "compiled"),
    }
    benchmark.extra_info.update(info)
    print(
        f"\nCHO batch over ZeroMQ, {steps} steps: {timing['wall_s']:.1f} s wall, {timing['cpu_s']:.1f} s CPU"
        f" (planner cache before the run: {notes[0]}); loop step p50 "
        f"{step_ms['p50']:.2f} ms, p99 {step_ms['p99']:.1f} ms, max {step_ms['max']:.0f} ms; "
        f"{info['fallbacks']:.0f} fallbacks, {info['deadline_misses']:.0f} deadline misses"
    )
    if not benchmark.disabled:
        check("cho_batch_wall_s", timing["wall_s"])
