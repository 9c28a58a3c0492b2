"""The composition example in docs/models.md runs as written and wires what it says."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from plant_models.cho_fedbatch import cho_fedbatch

DOC = Path(__file__).parents[2] / "docs" / "models.md"


def _example() -> ModuleType:
    blocks = [b for b in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S) if "def cho_with_oxygen" in b]
    assert len(blocks) == 1
    module = ModuleType("docs_compose_example")
    exec(compile(blocks[0], str(DOC), "exec"), module.__dict__)
    return module


def test_docs_composition_example_builds_and_wires_cell_density() -> None:
    spec = _example().cho_with_oxygen()
    cho = cho_fedbatch()
    assert spec.states == (*cho.states, "DO") and spec.inputs == cho.inputs
    assert spec.params.count("q_O2") == 1 and set(spec.params) == set(cho.params) | {"kLa", "DO_sat"}
    x = {**spec.x0, "Xv": 5e9, "DO": 0.1}
    u, par = spec.vector("inputs", spec.input_safe), spec.nominal_params
    xdot = dict(zip(spec.states, np.asarray(spec.f(spec.vector("states", x), u, spec.vector("params", par))).ravel(),
                    strict=True))
    expected = par["kLa"] * (par["DO_sat"] - 0.1) - par["q_O2"] * 5e9
    assert xdot["DO"] == pytest.approx(expected, rel=1e-12)
    cho_xdot = np.asarray(cho.f(cho.vector("states", {n: x[n] for n in cho.states}), u,
                                cho.vector("params", cho.nominal_params))).ravel()
    np.testing.assert_allclose([xdot[n] for n in cho.states], cho_xdot, rtol=1e-12)
