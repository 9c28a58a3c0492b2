"""Estimation accuracy over plant draws: the CHO estimation scenario with seeds FIRST..LAST.

For each seed (a different true plant and noise), the 14-day batch runs in-process with the scenario's
estimator (tests/twin/cho_drive.py: fixed feed, heater law) and the worst relative error of the
estimated VCD and titer after the second assay is printed. Not a pytest module (it takes ~5 s a seed):

    PYTHONPATH=. .venv/bin/python bench/estimation_seeds.py 1 20
"""

from __future__ import annotations

import sys
from dataclasses import replace

from tests.twin.cho_drive import relative_errors, run, scenario


def main(first: int, last: int) -> None:
    """Print one line per seed and the count within 10 %."""
    base = scenario()
    sensors, mismatch = base.plant.sensors, base.plant.mismatch
    assert sensors is not None and mismatch is not None
    known = sensors.assay_first_s + sensors.assay_period_s + sensors.assay_delay_s
    ok = 0
    for seed in range(first, last + 1):
        sc = replace(base, plant=replace(base.plant, mismatch=replace(mismatch, seed=seed)))
        r = run(sc, sc.loop.steps)
        xv, mab = max(relative_errors(r, "Xv", known)), max(relative_errors(r, "mAb", known))
        ok += xv <= 0.1 and mab <= 0.1
        print(f"seed {seed:3d}  worst |error| after the 2nd assay: VCD {xv:6.1%}  titer {mab:6.1%}", flush=True)
    print(f"{ok} of {last - first + 1} seeds within 10 % at every step")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
