"""bioimp sweep: strict sweep files, identical results whatever runs the cases, failures recorded, resume.

Short batches (10 hourly steps of the Haldane fed-batch) keep the whole file within about a minute and
a half on two cores.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from hil.cli import main
from hil.sweep_cli import in_process
from plant_models.errors import ScenarioError
from twin.scenario import HALDANE_SCENARIO, parse_scenario
from twin.sweep.cases import Case, expand_cases
from twin.sweep.config import SweepConfig, parse_sweep
from twin.sweep.execute import LocalPoolRunner
from twin.sweep.run import run_sweep
from twin.sweep.worker import TIMING_COLUMNS, CaseContext, controller_builds, reset_cache, run_case

REPO = Path(__file__).resolve().parents[2]

# 3 settings x 2 horizons x 4 plants = 24 cases; plants differ in parameters and initial state.
SWEEP = f"""
scenario = "{HALDANE_SCENARIO}"
seed = 11
plants = 4
[override]
"loop.steps" = {{steps}}
[vary]
"controller.horizon" = [5, 10]
"objective.delta_u.inp" = [0.1, 1.0, 10.0]
[uncertainty]
params = {{{{ mu_m = 0.15, K_i = 0.2, Y_x = 0.1 }}}}
x0 = {{{{ X_s = 0.2, S_s = 0.3 }}}}
[kpi]
main = "P_s*V_s"
direction = "max"
violation_atol = 0.001
"""


def _sweep(steps: int = 10) -> SweepConfig:
    return parse_sweep(SWEEP.format(steps=steps), REPO, "<test>", "test")


def _ctx(config: SweepConfig) -> CaseContext:
    return CaseContext(config.kpi, in_process)


def _write(tmp_path: Path, steps: int = 10) -> Path:
    path = tmp_path / "sweep.toml"
    path.write_text(SWEEP.format(steps=steps))
    return path


def _deterministic(table: pa.Table) -> list[dict[str, Any]]:
    """The rows without the columns that measure the machine (compute and wall times)."""
    keep = [c for c in table.column_names if c not in TIMING_COLUMNS]
    return table.select(keep).to_pylist()


class InlineRunner:
    """Runs the cases in this process, one after the other (a CaseRunner for tests)."""

    def run(self, cases: Sequence[Case], context: CaseContext) -> Iterator[tuple[Case, dict[str, Any] | BaseException]]:
        for case in cases:
            yield case, run_case(case, context)

    def close(self) -> None:
        pass

    def __enter__(self) -> InlineRunner:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        pass


# --- the sweep file ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s + "colour = 1\n", "colour: unknown key"),
        (lambda s: 'name = "../up"\n' + s, "name: use letters, digits"),
        (lambda s: s.replace("seed = 11", "seed = -1"), "seed: must be >= 0"),
        (lambda s: s.replace("plants = 4", "plants = 'four'"), "plants: expected an integer"),
        (lambda s: s.replace("[5, 10]", "5"), 'vary."controller.horizon": expected a list of values'),
        (lambda s: s.replace("[5, 10]", "[]"), 'vary."controller.horizon": expected at least one value'),
        (
            lambda s: s.replace("[5, 10]", "[5, 0]"),
            "vary: controller.horizon=0, objective.delta_u.inp=0.1: controller.horizon: must be >= 1, got 0",
        ),
        (lambda s: s.replace('"controller.horizon"', '"controller.horizn"'), "controller.horizn: unknown key"),
        (lambda s: s.replace('"controller.horizon"', '"model"'), 'vary."model": a sweep may not change'),
        (lambda s: s + '[search]\nkind = "bayes"\n', "search.kind: unknown search 'bayes'"),
        (lambda s: s + '[search]\nkind = "optuna"\n', "search.trials: required key is missing"),
        (lambda s: s.replace("[5, 10]", "{ low = 5, high = 10 }"), "needs a random or optuna search"),
        (lambda s: s + '[search]\nkind = "random"\n', "search.trials: required key is missing"),
        (lambda s: s + "[search]\ntrials = 3\n", "search.trials: a grid runs every combination"),
        (lambda s: s.replace("mu_m = 0.15", "mu_max = 0.15"), "plant.uncertainty.mu_max: unknown name"),
        (lambda s: s.replace("X_s = 0.2", "X_s = 1.5"), "uncertainty.x0.X_s: must be in [0, 1)"),
        (lambda s: s.replace('direction = "max"', 'direction = "up"'), 'kpi.direction: expected "max" or "min"'),
        (lambda s: s.replace('"loop.steps"', '"controller.horizon"'), 'override."controller.horizon": also in'),
        (lambda s: s.replace("[vary]", "[vary"), "invalid TOML"),
        (lambda s: s.replace('"P_s*V_s"', '"P_x*V_s"'), "kpi.main: 'P_x' is not a state of model"),
        (lambda s: s + 'constraints = ["V_s"]\n', "kpi.constraints: 'V_s' has no bounds in the base scenario"),
        (lambda s: s.replace("[5, 10]", "[5, [10]]"), "controller.horizon: expected an integer, got [10]"),
    ],
)
def test_config_error_is_one_line_naming_the_key(edit: Any, message: str) -> None:
    text = edit(SWEEP.format(steps=10))
    with pytest.raises(ScenarioError) as info:
        expand_cases(parse_sweep(text, REPO, "<test>"))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_cli_config_error_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(SWEEP.format(steps=10).replace("plants = 4", "plants = 0"))
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "plants: must be >= 1, got 0" in err
    assert not (tmp_path / "out").exists()


def test_random_search_draws_from_the_seed() -> None:
    text = SWEEP.format(steps=10).replace("[5, 10]", "{ low = 4, high = 12, integer = true }")
    text = text.replace("[0.1, 1.0, 10.0]", "{ low = 0.01, high = 100.0, log = true }")
    text += '[search]\nkind = "random"\ntrials = 5\n'
    first, again = (expand_cases(parse_sweep(text, REPO)) for _ in range(2))
    assert len(first) == 5 * 4
    assert [c.key for c in first] == [c.key for c in again]
    for case in first:
        assert 4 <= case.settings["controller.horizon"] <= 12
        assert 0.01 <= case.settings["objective.delta_u.inp"] <= 100.0
    assert len({c.setting for c in first}) == 5


def test_plants_are_shared_by_settings_and_differ_from_each_other() -> None:
    cases = expand_cases(_sweep())
    assert len(cases) == 24
    seeds = [[c.seed for c in cases if c.setting_index == s] for s in range(6)]
    assert all(s == seeds[0] for s in seeds) and len(set(seeds[0])) == 4
    assert len({c.key for c in cases}) == 24


def test_a_bound_is_a_setting() -> None:
    text = SWEEP.format(steps=10).replace('"controller.horizon" = [5, 10]', '"bounds.X_s" = [[0.0, 3.7], [0.0, 3.5]]')
    cases = expand_cases(parse_sweep(text, REPO))
    assert cases[-1].setting == "bounds.X_s=[0.0, 3.5], objective.delta_u.inp=10.0"
    assert parse_scenario(cases[-1].scenario_text).controller.mpc.state_bounds["X_s"] == (0.0, 3.5)
    # A tighter bound is the controller's back-off: the plant is still judged by the base scenario's limit.
    assert cases[-1].limits == cases[0].limits == {"X_s": (0.0, 3.7), "S_s": (-0.01, math.inf), "P_s": (0.0, 3.0)}


# --- determinism --------------------------------------------------------------------------------------


IPOPT = '"controller.solver" = "ipopt"\n"controller.mode" = "converged"\n"controller.compiled" = false\n'
DOMPC = '"controller.kind" = "do-mpc"\n"controller.compiled" = false\n'


@pytest.mark.parametrize(("override", "builds"), [("", 2), (IPOPT, 2), (DOMPC, 8)], ids=["sqp-rti", "ipopt", "do-mpc"])
def test_reused_controller_decides_as_a_new_one(override: str, builds: int) -> None:
    # SQP and Ipopt NMPCs are reused (reset between cases); do-mpc's objects cannot be reset by us, so a
    # do-mpc controller is built for every case.
    text = SWEEP.format(steps=10).replace("[override]\n", "[override]\n" + override)
    config = parse_sweep(text, REPO)
    cases = expand_cases(config)[:8]  # settings 0 and 1: two controllers, four plants each
    reset_cache()
    reused = [run_case(c, _ctx(config)) for c in cases]
    assert controller_builds() == builds
    fresh = []
    for case in cases:
        reset_cache()
        fresh.append(run_case(case, _ctx(config)))
    for a, b in zip(reused, fresh, strict=True):
        assert a["status"] == b["status"] == "ok"
        assert {k: v for k, v in a.items() if k not in TIMING_COLUMNS} == {
            k: v for k, v in b.items() if k not in TIMING_COLUMNS
        }


def test_pool_and_dask_cluster_give_identical_tables(tmp_path: Path) -> None:
    from distributed import LocalCluster

    config = _sweep()
    inline = run_sweep(config, tmp_path / "inline", InlineRunner(), in_process)
    with LocalPoolRunner(2) as pool:
        local = run_sweep(config, tmp_path / "pool", pool, in_process)
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        # Through the command line, as a user would point it at a cluster's scheduler.
        argv = [
            "sweep",
            str(_write(tmp_path)),
            "--scheduler",
            cluster.scheduler_address,
            "--out",
            str(tmp_path / "dask"),
        ]
        assert main(argv) == 0
    dask = pq.read_table(tmp_path / "dask" / "cases.parquet")
    assert inline.cases.num_rows == local.cases.num_rows == dask.num_rows == 24
    assert set(inline.cases.column("status").to_pylist()) == {"ok"}
    assert _deterministic(local.cases) == _deterministic(inline.cases)
    assert _deterministic(dask) == _deterministic(inline.cases)
    # Rows are in setting and plant order, whatever order they finished in.
    order = list(zip(dask.column("setting_index").to_pylist(), dask.column("plant").to_pylist(), strict=True))
    assert order == sorted(order)


# --- failures, summary, resume ------------------------------------------------------------------------


def test_failing_case_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    # A vessel of 1e-300 L passes validation (its derivative is finite) but the run fails numerically.
    text = SWEEP.format(steps=10).replace('"controller.horizon" = [5, 10]', '"plant.x0.V_s" = [120.0, 1e-300]')
    text = text.replace("x0 = { X_s = 0.2, S_s = 0.3 }", "").replace("[0.1, 1.0, 10.0]", "[1.0]")
    result = run_sweep(parse_sweep(text, REPO), tmp_path, InlineRunner(), in_process)
    rows = result.cases.to_pylist()
    assert len(rows) == 8 and result.failed == 4
    assert [r["status"] for r in rows] == ["ok"] * 4 + ["error"] * 4
    for row in rows[4:]:
        assert row["error"] and "\n" not in row["error"] and row["kpi"] is None
    summary = result.summary.to_pylist()
    assert (summary[1]["ok"], summary[1]["errors"], summary[1]["kpi_mean"]) == (0, 4, None)
    assert summary[0]["ok"] == 4


def test_summary_recomputed_from_the_table_and_best(tmp_path: Path) -> None:
    run_sweep(_sweep(), tmp_path, InlineRunner(), in_process)
    cases = pq.read_table(tmp_path / "cases.parquet").to_pylist()
    summary = pacsv.read_csv(tmp_path / "summary.csv").to_pylist()
    assert len(summary) == 6
    for row in summary:
        mine = [c for c in cases if c["setting_index"] == row["setting_index"]]
        kpi = np.array([c["kpi"] for c in mine])
        assert row["cases"] == len(mine) == 4
        np.testing.assert_allclose(row["kpi_mean"], kpi.mean(), rtol=1e-12)
        np.testing.assert_allclose(row["kpi_p5"], np.percentile(kpi, 5), rtol=1e-12)
        np.testing.assert_allclose(row["kpi_p95"], np.percentile(kpi, 95), rtol=1e-12)
        assert row["violation_probability"] == pytest.approx(np.mean([c["violated"] for c in mine]), abs=1e-15)
        # the harvested product is what the KPI says it is: true final P_s times V_s
        np.testing.assert_allclose(kpi, [c["final_P_s"] * c["final_V_s"] for c in mine], rtol=1e-12)
    for name in ("kpi_distribution.png", "pareto.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    # --best: the best mean KPI among the settings within the risk, written as a runnable scenario
    assert main(["sweep", "--best", str(tmp_path), "--max-risk", "1"]) == 0
    best = max(summary, key=lambda r: r["kpi_mean"])
    chosen = parse_scenario((tmp_path / "best.toml").read_text())
    settings = json.loads(best["settings"])
    assert chosen.controller.mpc.horizon == settings["controller.horizon"]
    assert chosen.controller.mpc.objective.delta_u["inp"] == settings["objective.delta_u.inp"]
    assert chosen.loop.steps == 10 and chosen.controller.budget_s == 1.0  # overrides applied, budget kept


def test_killed_sweep_resumes_with_only_the_missing_cases(tmp_path: Path) -> None:
    sweep = _write(tmp_path, steps=40)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "hil.cli", "sweep", str(sweep), "--workers", "2", "--out", str(out)]
    # Own session: SIGKILL reaches the sweep and its worker processes (nothing is cleaned up).
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    try:
        while len(list((out / "cases").glob("*.json"))) < 6:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the sweep did not finish 6 cases in 120 s"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "cases").glob("*.json")}
    assert 6 <= len(before) < 24, "kill the sweep halfway: some cases must be left"
    for path in (out / "cases").glob("*.json"):
        json.loads(path.read_text())  # every recorded case is whole
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=240, check=True)
    assert f"({24 - len(before)} run now, {len(before)} already done, 0 failed, 0 lost)" in done.stdout
    assert "\x1b" not in done.stdout  # no progress bar drawn into a pipe
    after = {p.name: p.stat().st_mtime_ns for p in (out / "cases").glob("*.json")}
    assert {k: after[k] for k in before} == before  # finished cases were not run again
    table = pq.read_table(out / "cases.parquet")
    keys = table.column("case_key").to_pylist()
    assert table.num_rows == 24 and len(set(keys)) == 24
    assert set(keys) == {c.key for c in expand_cases(_sweep(steps=40))}
    assert not list(out.glob("**/*.tmp"))


def test_ctrl_c_leaves_a_consistent_directory(tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "hil.cli", "sweep", str(_write(tmp_path, steps=40)), "--workers", "2"]
    proc = subprocess.Popen(
        [*argv, "--out", str(out)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        # As from a terminal: Ctrl-C's default disposition. A child inherits an ignored SIGINT, and in the
        # whole suite something earlier leaves this process ignoring it: the sweep then ran to the end.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    try:
        while len(list((out / "cases").glob("*.json"))) < 3:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the sweep did not finish 3 cases in 120 s"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends to the terminal's foreground group
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert b"sweep interrupted" in err and err.count(b"\n") == 1, err
    keys = {p.stem for p in (out / "cases").glob("*.json")}
    assert 3 <= len(keys) < 24
    table = pq.read_table(out / "cases.parquet")
    assert set(table.column("case_key").to_pylist()) == keys
    assert not list(out.glob("**/*.tmp"))


def test_unreachable_scheduler_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", str(_write(tmp_path)), "--scheduler", "tcp://127.0.0.1:9", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--scheduler: cannot connect to tcp://127.0.0.1:9" in err


def test_budget_is_counted_not_enforced() -> None:
    config = _sweep()
    case = expand_cases(config)[0]
    assert case.budget_s == 1.0 and "budget_s" not in case.scenario_text  # the base scenario's 1 s
    late = run_case(replace(case, budget_s=1e-9), _ctx(config))  # every step is over a 1 ns budget...
    assert late["over_budget_steps"] == 10
    on_time = run_case(case, _ctx(config))
    assert on_time["over_budget_steps"] == 0
    # ...and the controller decides exactly as without a budget
    assert {k: v for k, v in late.items() if k not in TIMING_COLUMNS} == {
        k: v for k, v in on_time.items() if k not in TIMING_COLUMNS
    }


def test_optuna_search_is_deterministic_and_resumes(tmp_path: Path) -> None:
    text = SWEEP.format(steps=10).replace("plants = 4", "plants = 2")
    text = text.replace("[5, 10]", "{ low = 4, high = 12, integer = true }")
    text = text.replace("[0.1, 1.0, 10.0]", "{ low = 0.01, high = 100.0, log = true }")
    config = parse_sweep(text + '[search]\nkind = "optuna"\ntrials = 4\n', REPO)
    assert expand_cases(config) == []  # settings come trial by trial
    first = run_sweep(config, tmp_path / "a", InlineRunner(), in_process)
    assert first.cases.num_rows == 8 and first.ran == 8 and first.summary.num_rows == 4
    again = run_sweep(config, tmp_path / "b", InlineRunner(), in_process)
    assert _deterministic(again.cases) == _deterministic(first.cases)
    # A run killed after its second trial: re-running replays trials 0-1 from DIR and runs 2-3.
    for path in (tmp_path / "b" / "cases").glob("*.json"):
        if json.loads(path.read_text())["setting_index"] >= 2:
            path.unlink()
    resumed = run_sweep(config, tmp_path / "b", InlineRunner(), in_process)
    assert (resumed.ran, resumed.skipped) == (4, 4)
    assert _deterministic(resumed.cases) == _deterministic(first.cases)


def test_process_noise_and_sensor_noise_follow_the_plant_seed() -> None:
    text = SWEEP.format(steps=10).replace('"controller.horizon" = [5, 10]', "").replace("[0.1, 1.0, 10.0]", "[1.0]")
    text = text.replace("plants = 4", "plants = 2").replace("params = { mu_m = 0.15, K_i = 0.2, Y_x = 0.1 }", "")
    text = text.replace("x0 = { X_s = 0.2, S_s = 0.3 }", "process_noise = { X_s = 0.01 }\n" + SENSORS)
    config = parse_sweep(text, REPO)
    cases = expand_cases(config)
    scenario = parse_scenario(cases[0].scenario_text)
    assert scenario.plant.mismatch is not None and scenario.plant.mismatch.process_noise == {"X_s": 0.01}
    assert scenario.plant.sensors is not None and scenario.plant.sensors.online_period_s == 600.0
    rows = [run_case(c, _ctx(config)) for c in cases]
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert rows[0]["final_X_s"] != rows[1]["final_X_s"]  # different noise on the two plants...
    assert run_case(cases[1], _ctx(config))["final_X_s"] == rows[1]["final_X_s"]  # ...the same on a re-run


SENSORS = """sensors = { online_period_s = 600.0, online = { X_s = { measures = "X_s", sigma = 0.01 }, \
S_s = { measures = "S_s", sigma = 0.001 }, P_s = { measures = "P_s", sigma = 0.01 }, \
V_s = { measures = "V_s", sigma = 0.1 } } }"""
