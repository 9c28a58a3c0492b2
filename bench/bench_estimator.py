"""Estimator step: the EKF and the MHE on the CHO estimation scenario (3 days of real loop data).

The loop is run once in-process (tests/twin/cho_drive.py: fixed feed, heater law, online probes every
minute, daily assays two hours late) and its measurement stream is replayed into a fresh estimator of
each kind; every ``update`` is timed. The figures are per-update percentiles.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from bench.budgets import check
from tests.twin.cho_drive import run, scenario
from twin.estimator_config import build_estimator
from twin.runner import twin_params

HOURS = 72  # three assays, one of them late enough to re-filter


@pytest.fixture(scope="module")
def stream() -> Any:
    return run(scenario(), HOURS)


@pytest.mark.parametrize("kind", ["ekf", "mhe"])
def test_estimator_step(benchmark: Any, stream: Any, kind: str) -> None:
    sc = stream.scenario
    config = replace(sc.estimator, kind=kind)
    times_ms: list[float] = []

    def replay() -> np.ndarray:
        estimator = build_estimator(stream.spec, twin_params(stream.spec, sc), config, sc.plant.sensors)
        x = np.empty(0)
        for meas, u, _ in stream.tap.log:
            t0 = time.perf_counter()
            x = estimator.update(meas, u).x
            times_ms.append((time.perf_counter() - t0) * 1e3)
        return x

    benchmark.group = "estimator"
    x = benchmark.pedantic(replay, rounds=1 if benchmark.disabled else 3, iterations=1)
    # The replay reproduces the loop's own estimate (same stream, same filter) for the EKF.
    if kind == "ekf":
        assert np.allclose(x, stream.tap.log[-1][2].x, rtol=1e-9)
    figures = {"p50_ms": float(np.percentile(times_ms, 50)), "p99_ms": float(np.percentile(times_ms, 99))}
    benchmark.extra_info.update(figures)
    if not benchmark.disabled:
        check(f"{kind}_update_p99_ms", figures["p99_ms"])
