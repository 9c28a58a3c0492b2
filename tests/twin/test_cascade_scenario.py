"""The [cascade] table: the shipped CHO scenario parses as documented; mistakes are one line naming the key."""

from __future__ import annotations

from dataclasses import replace

import pytest

from plant_models.errors import ScenarioError
from twin.scenario import CHO_SCENARIO, load_scenario, parse_scenario

TEXT = CHO_SCENARIO.read_text()


def test_shipped_cho_scenario() -> None:
    sc = load_scenario(CHO_SCENARIO)
    assert sc.model == "cho_fedbatch_thermal" and sc.controller.kind == "cascade"
    assert sc.loop.steps * sc.loop.period_s == 14 * 86400.0
    assert sc.estimator.kind == "ekf" and sc.plant.mismatch is not None and sc.plant.mismatch.seed == 7
    c = sc.cascade
    assert c is not None
    assert c.model == "cho_fedbatch" and c.planner == "nmpc" and c.heater == "P_heater"
    assert c.slow_period_s == 3600.0 and c.replan_s == 4 * 3600.0
    assert dict(c.objective.terminal) == {"mAb*V": -1.0}
    # The planner keeps a back-off under the plant's hard lactate limit, which [bounds] holds.
    assert c.state_bounds["Lac"] == (0.0, 38.0) and sc.controller.mpc.state_bounds["Lac"] == (0.0, 40.0)
    assert c.input_bounds["T"] == (31.0, 37.0)
    assert c.bolus_target == 11.0 and c.pid.out_max == 200.0 and c.volume_max == 1.494


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('planner = "nmpc"', 'planner = "magic"', r"^cascade\.planner: unknown planner 'magic'"),
        ('grid = "batch"', 'grid = "daily"', r"^cascade\.grid: unknown grid 'daily' \(known: remaining, batch\)$"),
        ("slow_period_s = 3600.0", "slow_period_s = 1000.0", r"^cascade\.slow_period_s: must be a multiple"),
        ('terminal = { "mAb*V" = -1.0 }', 'terminal = { "mAb*Q" = -1.0 }', r"^cascade\.objective\.terminal\.mAb\*Q:"),
        ("Amm = [0.0, 8.0] ", "Ammo = [0.0, 8.0] ", r"^cascade\.bounds\.Ammo: model 'cho_fedbatch' has no state"),
        ("F = [0.0, 0.1] ", "F = [0.0, 5.0] ", r"^cascade\.bounds\.F: \[0\.0, 5\.0\] exceeds the input's range"),
        ('kind = "cascade"', 'kind = "nmpc"', r"^controller\.kind: 'cascade' and a \[cascade\] table go together$"),
        ("pid = { kp = 20.0,", "pid = { kp = -2.0,", r"^cascade\.pid: pid\.kp: must be a non-negative number"),
    ],
)
def test_cascade_mistakes_are_one_line(old: str, new: str, message: str) -> None:
    assert old in TEXT
    with pytest.raises(ScenarioError, match=message):
        parse_scenario(TEXT.replace(old, new, 1))


def test_the_grid_chooses_the_nmpc_intervals_and_its_resolves() -> None:
    c = load_scenario(CHO_SCENARIO).cascade
    assert c is not None and c.grid == "batch"
    nmpc = c.ocp_config(336.0)
    assert nmpc.batch_length == 336.0 and nmpc.warm_mu_strategy == "adaptive" and nmpc.warm_max_iter == 200
    # The offline optima (open loop, oracle) solve from the start: no batch length, the default re-solves.
    offline = c.ocp_config()
    assert offline == replace(nmpc, batch_length=None, warm_mu_strategy="monotone", warm_max_iter=40)
    moving = parse_scenario(TEXT.replace('grid = "batch"', 'grid = "remaining"', 1)).cascade
    assert moving is not None and moving.ocp_config(336.0) == offline
