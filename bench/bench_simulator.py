"""One plant-simulator step (CVODES, 1e-10, one hour of the Haldane fed-batch)."""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.budgets import check
from bench.conftest import percentiles_ms
from plant_models.fedbatch_haldane import fedbatch_haldane
from twin.simulator import Simulator


def test_simulator_step(benchmark: Any) -> None:
    spec = fedbatch_haldane()
    sim = Simulator(spec)
    p = np.array(spec.vector("params", spec.nominal_params))
    x0 = np.array([1.0, 0.5, 0.0, 120.0])
    u = np.array([0.03])
    benchmark.group = "simulator"
    x1 = benchmark.pedantic(sim.step, args=(x0, u, p, 1.0), rounds=300, iterations=1)
    assert abs(x1[3] - 120.03) < 1e-9  # the volume integrates the feed: the step really ran
    if not benchmark.disabled:
        check("simulator_step_p50_ms", percentiles_ms(benchmark)["p50_ms"])
