"""The fit spec: the example in docs/fit.md parses as written; mistakes name their key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from plant_models.errors import ScenarioError
from tests.twin.fit.batches import FIT_SPEC
from twin.fit.spec import parse_fit_spec

DOC = Path(__file__).parents[3] / "docs" / "fit.md"


def test_docs_example_spec_parses() -> None:
    text = re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.S)[0]
    fit = parse_fit_spec(text)
    assert fit.names == ("mu_m", "Y_XGlc", "Y_XGln", "Y_AmmGln", "q_P")
    assert fit.estimated[2].guess == 1.0e9 and fit.estimated[3].prior_sd == 0.2
    assert fit.noise["Lac"].estimate and fit.noise["mAb"].sigma == 0.5
    assert fit.fixed["T_spread"] == 4.6 and fit.solver.starts == 3
    assert all(e.scale == "log" for e in fit.estimated)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("mu_m = { bounds = [0.01, 0.06] }", "mu_m = { bounds = [0.06, 0.01] }", "estimate.mu_m.bounds: min 0.06"),
        ("mu_m = { bounds = [0.01, 0.06] }", "mu_m = { bounds = [0.01, 0.06], guess = 0.1 }", "estimate.mu_m.guess"),
        ("mu_m = { bounds = [0.01, 0.06] }", "mu_m = { bounds = [0.01, 0.06], scal = 1 }", "mu_m.scal: unknown"),
        ("Xv = { rel_sigma = 0.05 }", "Xv = { }", "noise.Xv: give sigma"),
        ("Xv = { rel_sigma = 0.05 }", "Glucose = { rel_sigma = 0.05 }", "noise.Glucose: model 'cho_fedbatch' has no"),
        ('estimate = ["Xv",', 'estimate = ["Xvv",', "initial.estimate: model 'cho_fedbatch' has no state 'Xvv'"),
        ("starts = 2", "starts = 0", "solver.starts: expected an integer >= 1"),
        ("[initial]", "[fixed]\nmu_m = 0.03\n[initial]", "fixed.mu_m: the parameter is also estimated"),
    ],
)
def test_spec_mistake_names_the_key(old: str, new: str, message: str) -> None:
    assert old in FIT_SPEC
    with pytest.raises(ScenarioError, match=re.escape(message)):
        parse_fit_spec(FIT_SPEC.replace(old, new, 1))
