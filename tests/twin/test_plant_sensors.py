"""The simulated plant is not the model: seeded mismatch, instruments, assays, and their configuration."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hil.client import ZmqPlant
from hil.handler import ProtocolHandler
from hil.inprocess import InProcessPlant
from hil.launch import spawn_plant_server
from plant_models.cho_fedbatch_thermal import UNCERTAINTY
from plant_models.errors import ScenarioError
from tests.hil.conftest import REPO
from tests.twin.cho_drive import SCENARIO_PATH, new_plant, relative_errors, run, scenario
from twin.conformance import check_plant
from twin.scenario import PlantConfig
from twin.simulated_plant import SimulatedPlant

HOUR = 3600.0
SC = scenario()
SPEC = SC.spec()


def _drive(plant: SimulatedPlant, hours: int) -> list[dict[str, tuple[float | None, float, int]]]:
    """Hold a feed and some heat for ``hours`` one-hour periods; every reading after each."""
    plant.apply({"F": 0.002, "P_heater": 10.0})
    out = []
    for _ in range(hours):
        plant.advance(HOUR)
        out.append({n: (r.value, r.t_s, r.seq) for n, r in plant.read().items()})
    return out


def test_the_same_seed_gives_the_same_plant_and_readings_another_seed_does_not() -> None:
    a, b = new_plant(SC), new_plant(SC)
    np.testing.assert_array_equal(a.true_params, b.true_params)
    assert _drive(a, 30) == _drive(b, 30)
    np.testing.assert_array_equal(a.true_state, b.true_state)
    other = new_plant(replace(SC, plant=_with_seed(8)))
    assert not np.array_equal(other.true_params, a.true_params)


def _with_seed(seed: int) -> PlantConfig:
    assert SC.plant.mismatch is not None
    return replace(SC.plant, mismatch=replace(SC.plant.mismatch, seed=seed))


def test_true_parameters_lie_within_the_documented_uncertainty() -> None:
    plant = new_plant(SC)
    for name, r in UNCERTAINTY.relative.items():
        ratio = plant.true_params[SPEC.params.index(name)] / SPEC.nominal_params[name]
        assert 1 - r <= ratio <= 1 + r
    drawn = [n for n in UNCERTAINTY.relative if plant.true_params[SPEC.params.index(n)] != SPEC.nominal_params[n]]
    assert drawn == list(UNCERTAINTY.relative)
    exact = [n for n in SPEC.params if n not in UNCERTAINTY.relative]
    assert all(plant.true_params[SPEC.params.index(n)] == SPEC.nominal_params[n] for n in exact)


def test_each_assay_removes_its_sample_volume() -> None:
    sensors = SC.plant.sensors
    assert sensors is not None
    plant = new_plant(SC)  # feed stopped: only the samples change the volume
    iV = SPEC.states.index("V")
    v0 = plant.true_state[iV] + sensors.assay_volume  # the day-0 sample was drawn at construction
    for _ in range(50):
        plant.advance(HOUR)
    assert plant.assay_times_s == [0.0, 24 * HOUR, 48 * HOUR]
    assert math.isclose(plant.true_state[iV], v0 - 3 * sensors.assay_volume, rel_tol=1e-9)
    # The volume probe sees it (within its noise, 5 sigma).
    v_read = plant.read(("V",))["V"].value
    assert v_read is not None and abs(v_read - plant.true_state[iV]) < 5 * 0.002


def test_a_late_assay_carries_its_sample_time_and_a_new_seq_and_is_held_until_the_next() -> None:
    plant = new_plant(SC)
    readings = _drive(plant, 51)
    xv = [r["Xv_assay"] for r in readings]  # after 1 h, 2 h, ... 51 h
    assert xv[0] == (None, 0.0, 0)  # sampled at 0 h, not reported yet
    assert xv[1][1:] == (0.0, 1) and xv[1][0] is not None  # reported at 2 h, sample time 0 h
    assert all(r == xv[1] for r in xv[2:25])  # held, same seq, until the next report at 26 h
    assert xv[25][1:] == (24 * HOUR, 2)
    assert xv[49][1:] == (48 * HOUR, 3)
    t = [r["T"] for r in readings]
    assert [s for _, _, s in t[:3]] == [61, 121, 181]  # online: every minute, the latest at each read
    assert all(ts == (k + 1) * HOUR for k, (_, ts, _) in enumerate(t))
    # Noise is there and of the stated size: VCD within 5 sigma (5 %) of the truth at each sample.
    assert xv[25][0] is not None


def test_the_instrumented_plant_conforms_to_the_protocol_over_a_long_advance() -> None:
    # Assay devices report once a day: only an advance past a report gives every sensor a new sample.
    check_plant(InProcessPlant(ProtocolHandler(new_plant(SC))), dt_s=100_000.0)


BAD = [
    ('[plant.sensors.assays]\nXv_assay = { measures = "Xvv" }', "plant.sensors.assays.Xv_assay.measures"),
    ("[plant.sensors]\nassay_period_s = 0", "plant.sensors.assay_period_s"),
    ('[plant.sensors.online]\nT = { measures = "T", noise = 1 }', "plant.sensors.online.T.noise"),
    ('[[plant.sensors.faults]]\ndevice = "pH"\nat_s = 1.0\nvalue = nan', "plant.sensors.faults[0].device"),
    ('[plant]\nuncertainty = "wide"', "plant.uncertainty"),
    ("[plant]\nuncertainty = { mu_m = 1.5 }", "plant.uncertainty"),
    ("[plant]\nseed = -1", "plant.seed"),
    ("[plant]\nprocess_noise = { Xv = -0.1 }", "plant.process_noise.Xv"),
    ('[estimator]\nkind = "ukf"', "estimator.kind"),
    ('[estimator]\naugment = ["mu_max"]', "estimator.augment"),
    ("[estimator]\nprocess_noise = { Q = 0.1 }", "estimator.process_noise.Q"),
    ("[estimator]\nreject_sigma = 0", "estimator.reject_sigma"),
    ("[estimator]\nhorizon = 1", "estimator.horizon"),
    ("[estimator]\ngain = 1", "estimator.gain"),
    ('[estimator]\nkind = "measured"', "estimator.kind"),
]


def _replace_table(text: str, snippet: str) -> str:
    """The scenario with the snippet's table (and its sub-tables) in place of the original ones."""
    header = snippet.splitlines()[0]
    lines, out, skip = text.splitlines(), [], False
    for line in lines:
        if line.startswith("["):
            skip = line.split("#")[0].strip() == header.strip()
        if not skip:
            out.append(line)
    body = "\n".join(snippet.splitlines()[1:])
    if header.startswith("[["):
        return "\n".join(out) + "\n" + snippet + "\n"
    # Put the snippet's keys at the top of its table (keep the original table's other keys out).
    return "\n".join(out) + "\n" + header + "\n" + body + "\n"


@pytest.mark.parametrize(("snippet", "key"), BAD)
def test_bad_plant_sensor_and_estimator_config_is_one_line_naming_the_key(snippet: str, key: str) -> None:
    text = SCENARIO_PATH.read_text()
    header = snippet.splitlines()[0]
    if header == "[plant]":
        # Keys of [plant] go right after its header (a second [plant] table is a TOML error).
        text = text.replace("[plant]\n", snippet + "\n", 1)
        for k in ("seed", "uncertainty", "process_noise"):
            if f"\n{k} =" in snippet:
                text = "\n".join(
                    line for i, line in enumerate(text.splitlines()) if not (line.startswith(f"{k} =") and i > 8)
                )
    else:
        text = _replace_table(text, snippet)
    from twin.scenario import parse_scenario

    with pytest.raises(ScenarioError) as err:
        parse_scenario(text)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(key), message


def test_bioimp_plant_serve_scenario_runs_the_ekf_over_zeromq(tmp_path: Path) -> None:
    """The scenario's plant behind ``bioimp plant serve`` (own process), with a NaN and a spike mid-batch:
    the same readings as in-process, the faults rejected and recorded, the bound met."""
    from tests.twin.test_estimation import FAULTS

    steps = 80
    faulty = tmp_path / "faulty.toml"
    faulty.write_text(SCENARIO_PATH.read_text() + FAULTS)
    sc = scenario(FAULTS)
    local = run(sc, steps)
    serve = spawn_plant_server(sc.model, extra_args=["--scenario", str(faulty), "--watchdog", "0"])
    with serve as server, ZmqPlant(server.command) as plant:
        remote = run(sc, steps, plant=plant)
    for (m_local, _, e_local), (m_remote, _, e_remote) in zip(local.tap.log, remote.tap.log, strict=True):
        assert m_remote.time_s == m_local.time_s
        for name, r in m_local.values.items():
            assert m_remote.values[name] == r  # same seed, same plant: identical readings over the wire
        np.testing.assert_allclose(e_remote.x, e_local.x, rtol=1e-12)
    rejected = [(e.t_s, e.message.split(":")[0]) for e in remote.record.events if e.kind == "measurement_rejected"]
    assert rejected == [(50 * HOUR, "T"), (60 * HOUR, "T"), (74 * HOUR, "Xv_assay")]
    # So the remote run meets the bound too (against the in-process run's truth).
    remote.drive.truth = local.drive.truth
    for state in ("Xv", "mAb"):
        assert max(relative_errors(remote, state, 26 * HOUR)) <= 0.10


def test_plant_serve_rejects_a_bad_scenario_in_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.toml"
    bad.write_text(SCENARIO_PATH.read_text().replace('kind = "ekf"', 'kind = "ukf"'))
    proc = subprocess.run(
        [sys.executable, "-m", "hil.cli", "plant", "serve", "--scenario", str(bad), "--seed", "3"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "estimator.kind: unknown estimator 'ukf'" in proc.stderr


def test_the_documented_plant_and_estimator_tables_are_valid() -> None:
    """docs/models.md's [plant] example and docs/architecture.md's [estimator] example parse as written."""
    import re

    from twin.scenario import parse_scenario

    docs = REPO / "docs"
    (plant,) = [
        b for b in re.findall(r"```toml\n(.*?)```", (docs / "models.md").read_text(), re.S) if "[plant.sensors]" in b
    ]
    (estimator,) = re.findall(r"```toml\n(\[estimator\].*?)```", (docs / "architecture.md").read_text(), re.S)
    head = 'name = "doc"\nmodel = "cho_fedbatch_thermal"\n[loop]\nsteps = 1\nperiod_s = 3600.0\n'
    sc = parse_scenario(head + plant + estimator)
    assert sc.plant.sensors is not None and [d.name for d in sc.plant.sensors.assays] == [
        "Xv_assay",
        "Glc_assay",
        "mAb_assay",
    ]
    assert sc.plant.sensors.faults[0].value is not None and math.isnan(sc.plant.sensors.faults[0].value)
    assert sc.estimator.kind == "ekf" and "mu_m" in sc.estimator.augment


def test_process_noise_moves_the_truth_by_its_stated_size_and_the_totalizer_counts_the_feed() -> None:
    assert SC.plant.mismatch is not None
    quiet = new_plant(replace(SC, plant=replace(SC.plant, mismatch=replace(SC.plant.mismatch, process_noise={}))))
    noisy = new_plant(SC)
    readings = _drive(quiet, 24)
    _drive(noisy, 24)
    s = SC.plant.mismatch.process_noise["Xv"]
    iX = SPEC.states.index("Xv")
    log_ratio = math.log(noisy.true_state[iX] / quiet.true_state[iX])
    # A geometric random walk of s per sqrt(h) over 24 one-hour steps: |log ratio| ~ s·sqrt(24), not 0.
    assert 1e-6 < abs(log_ratio) < 5 * s * math.sqrt(24)
    # Volume is given no noise (and does not depend on the cells): the same in both.
    assert noisy.true_state[SPEC.states.index("V")] == pytest.approx(quiet.true_state[SPEC.states.index("V")])
    # The feed totalizer is the integral of the applied feed (0.002 L/h for 24 h), exact.
    assert readings[-1]["F_total"][:2] == (pytest.approx(0.048, rel=1e-12), 24 * HOUR)


def test_an_advance_that_fails_part_way_leaves_the_plant_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    """The protocol promises that time does not move on a failed advance: a 2-day advance crosses an
    assay and many online samples; its integrator fails on the 3rd segment. Afterwards the plant is
    exactly where it was (readings, state, time), and it goes on as if the failure had never happened."""
    failing, twin = new_plant(SC), new_plant(SC)
    for plant in (failing, twin):
        _drive(plant, 5)
    before = {n: (r.value, r.t_s, r.seq) for n, r in failing.read().items()}
    state, t = failing.true_state.copy(), failing.time_s
    real_step, calls = failing._sim.step, [0]

    def step_failing_on_the_third_segment(*args: object) -> object:
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("integrator failure (injected)")
        return real_step(*args)

    monkeypatch.setattr(failing._sim, "step", step_failing_on_the_third_segment)
    with pytest.raises(RuntimeError, match="injected"):
        failing.advance(48 * HOUR)
    assert calls[0] == 3
    assert failing.time_s == t
    np.testing.assert_array_equal(failing.true_state, state)
    assert {n: (r.value, r.t_s, r.seq) for n, r in failing.read().items()} == before
    monkeypatch.setattr(failing._sim, "step", real_step)
    assert _drive(failing, 30) == _drive(twin, 30)  # same noise draws, assays, totals: nothing half-done
    np.testing.assert_array_equal(failing.true_state, twin.true_state)
