"""Memory of a whole closed-loop run as the batch gets longer (issue 5): the peak RSS of the controller
process must stay flat — a 28-day CHO batch may use no more than 1.2× the memory of a 14-day one.

Each run is its own process (``python -m bench.bench_memory DAYS``): the default CHO scenario cut or
stretched to DAYS days, run as ``bioimp run`` runs it (the plant a ``bioimp plant serve`` process of the
same scenario, over ZeroMQ, the batch recorded to SQLite, outputs written), then its own peak RSS
(``ru_maxrss``) is printed. The plant server's memory is not counted: it is the simulated plant.
Quick mode (``make test``): 6 h against 12 h, same ratio asserted.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.budgets import check

REPO = Path(__file__).resolve().parent.parent


def run_days(days: float) -> dict[str, float]:
    """Run the CHO batch for ``days`` in this process; return its peak RSS (MB) and steps."""
    from hil.client import ZmqPlant
    from hil.launch import spawn_plant_server
    from twin.batch import BatchSetup, run_batch
    from twin.scenario import CHO_SCENARIO, load_scenario

    scenario = load_scenario(CHO_SCENARIO)
    steps = round(days * 86400.0 / scenario.loop.period_s)
    scenario = replace(scenario, loop=replace(scenario.loop, steps=steps))
    tolerances = ["--rtol", repr(scenario.plant.rtol), "--atol", repr(scenario.plant.atol)]
    with (
        tempfile.TemporaryDirectory() as out,
        spawn_plant_server(
            scenario.model,
            x0=dict(scenario.plant.x0),
            params=dict(scenario.plant.params),
            extra_args=[*tolerances, "--scenario", str(CHO_SCENARIO), "--watchdog", "0"],
        ) as server,
        ZmqPlant(server.command) as plant,
    ):
        run_batch(scenario, plant, Path(out) / "run", BatchSetup("bench", server.command, "00"))
    return {"steps": steps, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _measure(days: float) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_memory", repr(days)],
        cwd=REPO, capture_output=True, text=True, check=True, timeout=3600,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_peak_memory_stays_flat_as_the_batch_gets_longer(benchmark: Any) -> None:
    short_days, long_days = (0.25, 0.5) if benchmark.disabled else (14.0, 28.0)
    runs: dict[str, dict[str, float]] = {}

    def run() -> None:
        runs["short"], runs["long"] = _measure(short_days), _measure(long_days)

    benchmark.group = "memory"
    benchmark.pedantic(run, rounds=1, iterations=1)
    ratio = runs["long"]["peak_rss_mb"] / runs["short"]["peak_rss_mb"]
    short, long = runs["short"], runs["long"]
    benchmark.extra_info.update({"short_rss_mb": short["peak_rss_mb"], "long_rss_mb": long["peak_rss_mb"]})
    benchmark.extra_info["rss_ratio"] = ratio
    print(
        f"CHO batch peak RSS: {short_days:g} d ({short['steps']:.0f} steps) {short['peak_rss_mb']:.0f} MB, "
        f"{long_days:g} d ({long['steps']:.0f} steps) {long['peak_rss_mb']:.0f} MB: ratio {ratio:.3f}"
    )
    assert long["steps"] == 2 * short["steps"]
    check("peak_rss_ratio_double_batch", ratio)  # not a timing: asserted in every mode


if __name__ == "__main__":
    print(json.dumps(run_days(float(sys.argv[1]))))
