"""The worked example in docs/models.md runs as written (so the docs stay true)."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.handler import ProtocolHandler
from hil.inprocess import InProcessPlant
from twin.runner import run_scenario
from twin.scenario import load_scenario
from twin.simulated_plant import SimulatedPlant

DOC = Path(__file__).parents[1] / "docs" / "models.md"


@pytest.fixture
def user_package(tmp_path: Path) -> Iterator[Path]:
    text = DOC.read_text()
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "models.py").write_text(re.findall(r"```python\n(.*?)```", text, re.S)[0])
    (tmp_path / "my_study.toml").write_text(re.findall(r"```toml\n(.*?)```", text, re.S)[0])
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
        del sys.modules[name]


def test_models_md_worked_example_runs_closed_loop(user_package: Path) -> None:
    scenario = load_scenario(user_package / "my_study.toml")
    spec = scenario.spec()
    plant = InProcessPlant(ProtocolHandler(SimulatedPlant(spec, scenario.plant.params, scenario.plant.x0)))
    result = run_scenario(scenario, plant)
    summary = result.summary
    assert summary["steps"] == 48
    assert summary["refused_writes"] == 0 and summary["controller"]["fallbacks"] == 0  # type: ignore[index]
    # Volume is capped at 2 L (bound 1e-6 relative for solver tolerance) and biomass grew from 0.5 g/L.
    final = summary["final_states"]
    assert final["V"] <= 2.0 * (1 + 1e-6)  # type: ignore[index]
    assert final["X"] > 5.0  # type: ignore[index]
