"""Scenario files: the shipped one loads; every kind of mistake is one line naming the key."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from plant_models import ScenarioError
from twin.scenario import CHO_SCENARIO, HALDANE_SCENARIO, load_scenario, parse_scenario

REPO = Path(__file__).parents[2]
BASE = HALDANE_SCENARIO.read_text()


def test_default_scenario_is_the_cho_fed_batch() -> None:
    sc = load_scenario()
    assert sc.source == CHO_SCENARIO.read_text()
    assert sc.model == "cho_fedbatch_thermal" and sc.cascade is not None
    assert sc.loop.steps * sc.loop.period_s == 14 * 86400.0


def test_shipped_haldane_scenario_is_the_builtin_one() -> None:
    assert (REPO / "scenarios" / "fedbatch_haldane.toml").read_text() == BASE
    sc = load_scenario(HALDANE_SCENARIO)
    assert sc.model == "fedbatch_haldane"
    assert sc.loop.steps == 150 and sc.loop.period_s == 3600.0
    mpc = sc.controller.mpc
    assert mpc.horizon == 20 and mpc.step_s == 3600.0
    assert dict(mpc.objective.stage) == {"P_s": -1.0} and dict(mpc.objective.delta_u) == {"inp": 1.0}
    assert mpc.state_bounds["S_s"] == (-0.01, math.inf)
    assert mpc.input_bounds["inp"] == (0.0, 0.2)
    assert len(sc.sha256) == 64 and sc.source == BASE
    # The default scenario runs the fastest mode that keeps final P_s within 0.2 % of do-mpc's.
    assert (mpc.solver, mpc.mode, mpc.compiled, mpc.budget_s) == ("sqp-hpipm", "rti", True, 1.0)
    assert sc.controller.budget_s == 1.0


def test_solver_keys_default_to_converged_ipopt() -> None:
    text = BASE
    for line in ('solver = "sqp-hpipm"', 'mode = "rti"', "compiled = true"):
        text = "\n".join(row for row in text.splitlines() if not row.startswith(line))
    mpc = parse_scenario(text).controller.mpc
    assert (mpc.solver, mpc.mode, mpc.compiled) == ("ipopt", "converged", False)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("horizon = 20", "horizn = 20", r"^controller\.horizn: unknown key$"),
        ("horizon = 20", 'horizon = "twenty"', r"^controller\.horizon: expected an integer, got 'twenty'$"),
        ("horizon = 20", "horizon = 0", r"^controller\.horizon: must be >= 1, got 0$"),
        ("steps = 150", "steps = true", r"^loop\.steps: expected an integer, got True$"),
        ("period_s = 3600.0", "period_s = -1.0", r"^loop\.period_s: must be a positive number"),
        ('model = "fedbatch_haldane"', 'model = "nope"', r"^model: unknown model 'nope'"),
        ("X_s = [0.0, 3.7]", "X_s = [3.7, 0.0]", r"^bounds\.X_s: \[3\.7, 0\.0\] admits no value$"),
        ("X_s = [0.0, 3.7]", "Q_s = [0.0, 3.7]", r"^bounds\.Q_s: model 'fedbatch_haldane' has no state or input"),
        ("inp = [0.0, 0.2]", "inp = [0.0, 5.0]", r"^bounds\.inp: \[0\.0, 5\.0\] exceeds the actuator's range"),
        ("X_s = [0.0, 3.7]", "X_s = [0.0]", r"^bounds\.X_s: expected \[min, max\]"),
        ("stage = { P_s = -1.0 }", "stage = { Q = -1.0 }", r"^objective\.stage\.Q: unknown name"),
        ('kind = "nmpc"', 'kind = "pid"', r"^controller\.kind: unknown controller 'pid'"),
        ("[loop]", "[lop]", r"^lop: unknown key$|^loop\.steps: required key is missing$"),
        (
            "params = { Y_x = 0.5, S_in = 200.0 }   #",
            "params = { Y_x = nan, S_in = 200.0 }   #",
            r"^plant\.params\.Y_x: must not be NaN$",
        ),
        ("rtol = 1e-10", "rtol = 1e-10\nfoo = 1", r"^plant\.foo: unknown key$"),
        ("X_s = [0.0, 3.7]", "X_s = [inf, inf]", r"^bounds\.X_s: \[inf, inf\] admits no value$"),
        ('name = "fedbatch_haldane"', 'name = "../elsewhere"', r"^name: use letters, digits"),
        ("stage = { P_s = -1.0 }", "stage = { P_s = inf }", r"^objective\.stage\.P_s: must be finite, got inf$"),
        ("V_s = 120.0 }", "V_s = 0.0 }", r"^plant\.params / plant\.x0: the model's derivative is not finite"),
        (
            "[twin]                   # what the controller believes\nparams = { Y_x = 0.5,",
            "[twin]\nparams = { Y_x = 0.0,",
            r"^twin\.params / plant\.x0: the model's derivative is not finite",
        ),
        ("[controller]", "[controller", r"invalid TOML"),
        ('solver = "sqp-hpipm"', 'solver = "fatrop"', r"^controller\.solver: unknown solver 'fatrop' \(known: ipopt, "),
        ('solver = "sqp-hpipm"', "solver = 1", r"^controller\.solver: expected a string, got 1$"),
        ('mode = "rti"', 'mode = "fast"', r"^controller\.mode: unknown mode 'fast' \(known: converged, rti\)$"),
        ('solver = "sqp-hpipm"', 'solver = "ipopt"', r"^controller\.mode: 'rti' needs solver 'sqp-hpipm', got 'ipo"),
        ("compiled = true", 'compiled = "yes"', r"^controller\.compiled: expected true or false, got 'yes'$"),
        ("budget_s = 1.0", "budget_s = 0.0", r"^controller\.budget_s: must be a positive number, got 0\.0$"),
    ],
)
def test_invalid_scenarios_name_the_key(old: str, new: str, message: str) -> None:
    assert old in BASE
    with pytest.raises(ScenarioError, match=message) as info:
        parse_scenario(BASE.replace(old, new, 1))
    assert "\n" not in str(info.value)


def test_unreadable_file_is_a_scenario_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read scenario"):
        load_scenario(tmp_path / "missing.toml")
