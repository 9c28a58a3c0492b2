"""``bioimp fit`` on simulated CHO batches: recovery, outputs, record = CSV, identifiability, prediction.

Three 7-day batches of the project's simulated plant (true parameters drawn from the documented ±20 %
uncertainty, seed 3; daily assays with the documented noise), written as real batch records
(tests/twin/fit/batches.py). One fit through the CLI serves several tests (module fixture).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hil.cli import main
from tests.twin.fit.batches import ESTIMATED, FIT_SPEC, SCENARIO, SimBatch, simulate, simulate_set, truth, write_csv
from twin.fit.data import load_batches
from twin.fit.estimate import FitResult, fit_batches, simulate_batch
from twin.fit.problem import Problem
from twin.fit.spec import parse_fit_spec
from twin.scenario import CHO_SCENARIO, parse_scenario

TRUE_SEED = 3


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[SimBatch]]:
    root = tmp_path_factory.mktemp("fit_runs")
    return root, simulate_set(root / "runs", truth(TRUE_SEED), rep=0)


@pytest.fixture(scope="module")
def cli_fit(runs: tuple[Path, list[SimBatch]]) -> Path:
    """``bioimp fit`` on the folder of the three run directories (two starts)."""
    root, _ = runs
    (root / "spec.toml").write_text(FIT_SPEC, encoding="utf-8")
    out = root / "out"
    assert main(["fit", str(root / "spec.toml"), "--data", str(root / "runs"), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def fitted(runs: tuple[Path, list[SimBatch]]) -> tuple[FitResult, Problem]:
    """The same fit through the library, with the built problem kept for the CSV fit."""
    _, batches = runs
    fit = parse_fit_spec(FIT_SPEC)
    spec = fit.spec()
    problem = Problem(fit, spec)
    data = load_batches([b.directory for b in batches], fit, spec)
    return fit_batches(fit, data, spec, problem), problem


def test_recovers_each_parameter_within_its_95_ci(cli_fit: Path) -> None:
    report = json.loads((cli_fit / "fit.json").read_text())
    true = truth(TRUE_SEED)
    assert report["success"] is True
    assert {s["status"] for s in report["solver"]["starts"]} <= {"Solve_Succeeded", "Solved_To_Acceptable_Level"}
    assert len(report["solver"]["starts"]) == 2
    assert set(report["parameters"]) == set(ESTIMATED)
    for name, p in report["parameters"].items():
        assert p["identifiable"] is True, (name, p["flags"])
        lo, hi = p["ci95"]
        assert lo <= true[name] <= hi, (name, true[name], p)
        # an informative interval: the truth was drawn ±20 % around nominal; the data pin it much closer
        assert (hi - lo) / p["estimate"] < 0.3, (name, p)
    corr = np.array(report["correlation"]["matrix"])
    np.testing.assert_allclose(np.diag(corr), 1.0, rtol=1e-9)
    np.testing.assert_allclose(corr, corr.T, atol=1e-12)
    # 144 assays (3 batches x 8 days x 6 signals): at the optimum, χ² is near its degrees of freedom
    assert report["n_data"] == 144
    assert 0.5 * 100 < report["objective"] < 0.5 * 190


def test_writes_figures_and_params_ready_for_a_scenario(cli_fit: Path) -> None:
    for name in ("fit_b1.png", "fit_b2.png", "fit_b3.png", *(f"residuals_{s}.png" for s in
                                                             ("Xv", "Glc", "Gln", "Lac", "Amm", "mAb"))):
        assert (cli_fit / name).stat().st_size > 10_000, name
    params_text = (cli_fit / "params.toml").read_text()
    report = json.loads((cli_fit / "fit.json").read_text())
    # Appended to a scenario of the fitted model, and to the default (thermal) CHO scenario: both load
    # and the twin believes the calibrated values.
    base = SCENARIO.format(name="next", steps=10, period=3600.0)
    for text in (base, CHO_SCENARIO.read_text()):
        scenario = parse_scenario(text + "\n" + params_text)
        for name, p in report["parameters"].items():
            assert scenario.twin.params[name] == pytest.approx(p["estimate"], rel=1e-15)


def test_record_and_csv_give_the_same_estimates(
    runs: tuple[Path, list[SimBatch]], fitted: tuple[FitResult, Problem], cli_fit: Path
) -> None:
    root, batches = runs
    result, problem = fitted
    csvs = [write_csv(b, root / f"{b.name}.csv") for b in batches]
    data = load_batches(csvs, problem.fit, problem.spec)
    from_csv = fit_batches(problem.fit, data, problem.spec, problem)
    for a, b in zip(result.params, from_csv.params, strict=True):
        assert a.name == b.name
        assert b.estimate == pytest.approx(a.estimate, rel=1e-6)
        assert b.se == pytest.approx(a.se, rel=1e-4)
    # and the CLI's fit of the records (two starts) agrees with the library's
    report = json.loads((cli_fit / "fit.json").read_text())
    for p in result.params:
        assert report["parameters"][p.name]["estimate"] == pytest.approx(p.estimate, rel=1e-6)


def test_fitted_twin_predicts_an_unseen_batch_titer_within_10_percent(
    runs: tuple[Path, list[SimBatch]], fitted: tuple[FitResult, Problem]
) -> None:
    root, _ = runs
    result, problem = fitted
    fourth = simulate("b4", root / "unseen" / "b4", truth(TRUE_SEED), noise_seed=99)
    data = load_batches([fourth.directory], problem.fit, problem.spec)[0]
    t, x = simulate_batch(problem.spec, result.all_params, data)
    i = problem.spec.states.index("mAb")
    predicted, actual = x[-1, i], fourth.final_state["mAb"]
    assert t[-1] == pytest.approx(168.0)
    assert abs(predicted / actual - 1.0) < 0.10, (predicted, actual)
    # the model at its nominal parameters, for scale: it misses by more (the truth is a ±20 % draw)
    _, x_nominal = simulate_batch(problem.spec, {}, data)
    assert abs(predicted / actual - 1.0) < abs(x_nominal[-1, i] / actual - 1.0)


def test_a_non_identifiable_pair_is_flagged(runs: tuple[Path, list[SimBatch]]) -> None:
    """q_P and T_ref_qP enter only as q_P·exp(k_qP·(T_ref_qP − T)): the data see their product alone."""
    _, batches = runs
    spec_text = FIT_SPEC.split("[estimate]")[0] + (
        "[estimate]\n"
        "mu_m = { bounds = [0.01, 0.06] }\n"
        "q_P = { bounds = [0.5e-9, 4.0e-9] }\n"
        "T_ref_qP = { bounds = [33.0, 41.0] }\n"
        "[noise]" + FIT_SPEC.split("[noise]")[1].replace("starts = 2", "starts = 1")
    )
    fit = parse_fit_spec(spec_text)
    data = load_batches([b.directory for b in batches], fit, fit.spec())
    result = fit_batches(fit, data)
    by_name = {p.name: p for p in result.params}
    assert by_name["mu_m"].identifiable
    for name in ("q_P", "T_ref_qP"):
        assert not by_name[name].identifiable
        assert any("|corr|" in f for f in by_name[name].flags)
    i, j = fit.names.index("q_P"), fit.names.index("T_ref_qP")
    assert abs(result.correlation[i, j]) > 0.99
    for name in ("q_P", "T_ref_qP"):  # the interval says so too: wider than the estimate itself
        p = by_name[name]
        assert any(f.startswith("huge CI") for f in p.flags), p.flags
        assert p.se / p.estimate > 1.0 / 1.96
        assert p.ci95[0] < 0.2 * p.estimate and p.ci95[1] > 5.0 * p.estimate


def test_estimated_noise_scale(runs: tuple[Path, list[SimBatch]]) -> None:
    """Xv's σ given as 10 % but estimated: the fit finds the assay's real 5 % (scale ≈ 0.5)."""
    _, batches = runs
    spec_text = FIT_SPEC.replace("Xv = { rel_sigma = 0.05 }", "Xv = { rel_sigma = 0.10, estimate = true }")
    fit = parse_fit_spec(spec_text.replace("starts = 2", "starts = 1"))
    result = fit_batches(fit, load_batches([b.directory for b in batches], fit, fit.spec()))
    assert result.success
    assert 0.35 < result.noise_factor["Xv"] < 0.7, result.noise_factor
    assert result.noise_factor["Glc"] == 1.0  # known σ stays as given
    true = truth(TRUE_SEED)
    for p in result.params:
        assert p.ci95[0] <= true[p.name] <= p.ci95[1], p


def test_no_converged_start_exits_1_with_the_status_in_fit_json(runs: tuple[Path, list[SimBatch]]) -> None:
    root, _ = runs
    spec = root / "spec_short.toml"
    spec.write_text(FIT_SPEC.replace("starts = 2", "starts = 1\nmax_iter = 2"), encoding="utf-8")
    out = root / "out_short"
    assert main(["fit", str(spec), "--data", str(root / "runs" / "b1"), "--out", str(out)]) == 1
    report = json.loads((out / "fit.json").read_text())
    assert report["success"] is False
    assert report["solver"]["starts"][0]["status"] == "Maximum_Iterations_Exceeded"
    assert (out / "params.toml").exists()


def test_prediction_band_holds_about_95_percent_of_the_data(fitted: tuple[FitResult, Problem]) -> None:
    result, _ = fitted
    inside = total = 0
    for bf in result.batches:
        for i, s in enumerate(result.signals):
            for k, sample in zip(bf.grid.sample_idx[s], bf.batch.samples[s], strict=True):
                assert bf.grid.tau[k] == pytest.approx(sample.t)
                total += 1
                inside += abs(bf.y[i, k] - sample.value) <= bf.band[i, k]
    assert total == 144
    assert 0.88 <= inside / total <= 1.0, inside / total


def test_a_prior_resolves_the_non_identifiable_pair(runs: tuple[Path, list[SimBatch]]) -> None:
    """With T_ref_qP pinned by a prior (37 ± 0.05 °C), q_P is determined again and holds its truth."""
    _, batches = runs
    spec_text = FIT_SPEC.split("[estimate]")[0] + (
        "[estimate]\n"
        "q_P = { bounds = [0.5e-9, 4.0e-9] }\n"
        "T_ref_qP = { bounds = [33.0, 41.0], prior = { mean = 37.0, sd = 0.05 } }\n"
        "[noise]" + FIT_SPEC.split("[noise]")[1].replace("starts = 2", "starts = 1")
    )
    # the other uncertain parameters at their true values, so q_P's interval is tested on its own
    fixed_truth = {k: v for k, v in truth(TRUE_SEED).items() if k in ESTIMATED and k != "q_P"}
    fixed = "[fixed]\n" + "".join(f"{k} = {v!r}\n" for k, v in fixed_truth.items())
    fit = parse_fit_spec(spec_text.replace("[noise]", fixed + "[noise]"))
    result = fit_batches(fit, load_batches([b.directory for b in batches], fit, fit.spec()))
    by_name = {p.name: p for p in result.params}
    assert by_name["q_P"].identifiable and by_name["T_ref_qP"].identifiable
    assert by_name["T_ref_qP"].se == pytest.approx(0.05, rel=0.05)  # the prior is all there is
    q = by_name["q_P"]
    assert q.ci95[0] <= truth(TRUE_SEED)["q_P"] <= q.ci95[1]
