"""Simulated CHO batches for the fit tests: the project's simulated plant with the documented assays.

Each batch is the ``cho_fedbatch`` plant (true parameters drawn once from the documented uncertainty)
seen through daily assays with the documented noise (Xv 5 %, metabolites and titer 3 %; docs/models.md),
each sample removing 2 mL, driven open loop by a feed and temperature schedule. The batch is written as a
real batch record (``twin.batch_record.BatchRecord``: run row with the scenario text, samples as the
loop reads them every 2 h, applied setpoints) and, on request, as the equivalent fit CSV + sidecar.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plant_models.cho_fedbatch import CHO_UNCERTAINTY, cho_fedbatch
from plant_models.spec import ModelSpec
from twin.batch_record import RECORD_FILE, BatchRecord, RecordConfig, RunMeta
from twin.interfaces import Measurements
from twin.plant_setup import PlantMismatch, true_params
from twin.record import SetpointRow
from twin.sensors import SensorConfig, SensorDevice
from twin.simulated_plant import SimulatedPlant

PERIOD_S = 7200.0
ASSAYS = {"Xv": 0.05, "Glc": 0.03, "Gln": 0.03, "Lac": 0.03, "Amm": 0.03, "mAb": 0.03}
ESTIMATED = ("mu_m", "Y_XGlc", "Y_XGln", "Y_AmmGln", "q_P")

#: (time h, F L/h, T degC) changes of each batch's schedule: different feeds and temperature shifts.
SCHEDULES: dict[str, tuple[tuple[float, float, float], ...]] = {
    "b1": ((0.0, 0.0, 36.5), (48.0, 0.0015, 36.5)),
    "b2": ((0.0, 0.0, 36.5), (48.0, 0.0025, 36.5), (96.0, 0.0025, 33.0)),
    "b3": ((0.0, 0.0, 36.5), (24.0, 0.002, 36.5), (72.0, 0.002, 35.0)),
    "b4": ((0.0, 0.0, 36.5), (48.0, 0.002, 36.5), (72.0, 0.002, 34.0)),
}

SCENARIO = """\
name = "fit_{name}"
description = "simulated CHO batch for the fit tests (open loop schedule)"
model = "cho_fedbatch"

[plant.sensors]
online_period_s = 3600.0
assay_period_s = 86400.0
assay_first_s = 0.0
assay_delay_s = 7200.0
assay_volume = 0.002

[plant.sensors.assays]
Xv_assay = {{ measures = "Xv", rel_sigma = 0.05 }}
Glc_assay = {{ measures = "Glc", rel_sigma = 0.03 }}
Gln_assay = {{ measures = "Gln", rel_sigma = 0.03 }}
Lac_assay = {{ measures = "Lac", rel_sigma = 0.03 }}
Amm_assay = {{ measures = "Amm", rel_sigma = 0.03 }}
mAb_assay = {{ measures = "mAb", rel_sigma = 0.03 }}

[estimator]
kind = "ekf"

[loop]
steps = {steps}
period_s = {period}
"""

FIT_SPEC = """\
model = "cho_fedbatch"

[estimate]
mu_m = { bounds = [0.01, 0.06] }
Y_XGlc = { bounds = [0.6e8, 4.0e8] }
Y_XGln = { bounds = [3.0e8, 2.5e9] }
Y_AmmGln = { bounds = [0.2, 1.5] }
q_P = { bounds = [0.5e-9, 4.0e-9] }

[noise]
Xv = { rel_sigma = 0.05 }
Glc = { rel_sigma = 0.03 }
Gln = { rel_sigma = 0.03 }
Lac = { rel_sigma = 0.03 }
Amm = { rel_sigma = 0.03 }
mAb = { rel_sigma = 0.03 }

[initial]
estimate = ["Xv", "Glc", "Gln", "Lac", "Amm"]

[solver]
starts = 2
"""


def truth(seed: int) -> dict[str, float]:
    """The plant's true parameters: the documented ±20 % draw (seed) around the nominal ones."""
    spec = cho_fedbatch()
    return true_params(spec, {}, PlantMismatch(seed=seed, uncertainty=CHO_UNCERTAINTY))


@dataclass(frozen=True)
class SimBatch:
    """A simulated batch: where its record is, and the true final state."""

    name: str
    directory: Path
    final_state: dict[str, float]
    samples: dict[float, dict[str, float]]  # sample time (h) -> signal -> value


def _schedule_at(name: str, t_h: float) -> dict[str, float]:
    row = [r for r in SCHEDULES[name] if r[0] <= t_h + 1e-9][-1]
    return {"F": row[1], "T": row[2]}


def simulate(name: str, out: Path, params: Mapping[str, float], noise_seed: int, days: int = 7) -> SimBatch:
    """Run one batch open loop and write its record to ``out/record.sqlite``."""
    spec: ModelSpec = cho_fedbatch()
    sensors = SensorConfig(
        assays=tuple(SensorDevice(f"{s}_assay", s, rel_sigma=r) for s, r in ASSAYS.items()),
        online_period_s=3600.0,
        assay_delay_s=7200.0,
        assay_volume=0.002,
    )
    plant = SimulatedPlant(spec, params, sensors=sensors, seed=noise_seed)
    end_s = days * 86400.0 + sensors.assay_delay_s  # the last assay is reported 2 h after it is drawn
    steps = math.ceil(end_s / PERIOD_S)
    source = SCENARIO.format(name=name, steps=steps, period=PERIOD_S)
    meta = RunMeta(
        operator="test", scenario_name=f"fit_{name}", scenario_sha256=hashlib.sha256(source.encode()).hexdigest(),
        scenario_source=source, software={}, model="cho_fedbatch", controller="schedule",
        plant_endpoint="inproc", plant_client_id="00", plant_hello={}, states=spec.states, inputs=spec.inputs,
        params=spec.params, period_s=PERIOD_S, steps=steps,
    )
    record = BatchRecord.create(out / RECORD_FILE, meta, RecordConfig(period_s=PERIOD_S))
    samples: dict[float, dict[str, float]] = {}
    try:
        for step in range(steps + 1):
            t_s = plant.time_s
            readings = plant.read()
            record.measurements(step, Measurements(t_s, readings))
            for device, r in readings.items():
                if device.endswith("_assay") and r.value is not None:
                    samples.setdefault(r.t_s / 3600.0, {})[device.removesuffix("_assay")] = r.value
            if step == steps:
                break
            sp = _schedule_at(name, t_s / 3600.0)
            record.setpoint(SetpointRow(step, step + 1, t_s, "intended", sp))
            applied = plant.apply(sp)
            record.setpoint(SetpointRow(step, step + 1, t_s, "applied", applied))
            plant.advance(PERIOD_S)
    finally:
        record.close()
    final = dict(zip(spec.states, map(float, plant.true_state), strict=True))
    return SimBatch(name, out, final, dict(sorted(samples.items())))


def write_csv(batch: SimBatch, path: Path) -> Path:
    """The batch as a fit CSV (assay rows only) with its sidecar TOML (inputs, sample volume)."""
    signals = list(ASSAYS)
    lines = ["t," + ",".join(signals)]
    for t, values in batch.samples.items():
        lines.append(f"{t!r}," + ",".join(repr(values[s]) if s in values else "" for s in signals))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = SCHEDULES[batch.name]
    ts = ", ".join(repr(r[0]) for r in rows)
    fs = ", ".join(repr(r[1]) for r in rows)
    temps = ", ".join(repr(r[2]) for r in rows)
    path.with_suffix(".toml").write_text(
        f"inputs = {{ t = [{ts}], F = [{fs}], T = [{temps}] }}\nsample_volume = 0.002\n", encoding="utf-8"
    )
    return path


def simulate_set(
    root: Path, params: Mapping[str, float], rep: int, names: tuple[str, ...] = ("b1", "b2", "b3")
) -> list[SimBatch]:
    """Simulate the named batches under ``root`` (noise seeds from ``rep`` and the batch's position)."""
    return [simulate(n, root / n, params, noise_seed=1000 * rep + i) for i, n in enumerate(names)]


__all__ = ["ESTIMATED", "FIT_SPEC", "SCHEDULES", "SimBatch", "np", "simulate", "simulate_set", "truth", "write_csv"]
