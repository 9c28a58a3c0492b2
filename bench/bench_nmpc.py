"""One NMPC step: ours vs do-mpc on the do-mpc batch_reactor problem, measured in the same run.

Both controllers step through the same 150 states (do-mpc's own closed-loop trajectory, tests/data),
in order, so each sees a realistic warm start.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.budgets import check
from bench.conftest import percentiles_ms
from controllers.config import dompc_example_config
from controllers.dompc import DoMpcController
from controllers.interfaces import Controller
from controllers.nmpc import build_mpc
from plant_models.fedbatch_haldane import fedbatch_haldane

DATA = Path(__file__).parents[1] / "tests" / "data"
_MEDIANS: dict[str, float] = {}


def _stepper(controller: Controller) -> Callable[[], None]:
    states = np.loadtxt(DATA / "dompc_batch_bioreactor_traj.csv", delimiter=",", comments="#")[:, 1:5]
    spec = fedbatch_haldane()
    p = np.array(spec.vector("params", spec.nominal_params))
    ks = itertools.cycle(range(len(states)))

    def step() -> None:
        k = next(ks)
        controller.step(3600.0 * k, states[k], p)

    return step


@pytest.mark.parametrize("which", ["do-mpc", "nmpc"])  # do-mpc first: ours is compared against it
def test_nmpc_step(benchmark: Any, which: str) -> None:
    spec = fedbatch_haldane()
    cfg = dompc_example_config()
    p = np.array(spec.vector("params", spec.nominal_params))
    controller: Controller = DoMpcController(spec, cfg, p) if which == "do-mpc" else build_mpc(spec, cfg)
    benchmark.group = "nmpc_step"
    benchmark.pedantic(_stepper(controller), rounds=150, iterations=1, warmup_rounds=1)
    if benchmark.disabled:
        return
    figures = percentiles_ms(benchmark)
    _MEDIANS[which] = figures["p50_ms"]
    if which == "nmpc":
        if "do-mpc" not in _MEDIANS:
            pytest.fail("the do-mpc reference was not measured in this run: run both parametrisations")
        ratio = _MEDIANS["nmpc"] / _MEDIANS["do-mpc"]
        benchmark.extra_info["ratio_vs_dompc_p50"] = ratio
        benchmark.extra_info["dompc_p50_ms"] = _MEDIANS["do-mpc"]
        check("nmpc_step_p50_ratio_vs_dompc", ratio)
