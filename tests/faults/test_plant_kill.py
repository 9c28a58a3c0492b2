"""Kill -9 the plant server mid-batch and restart it on the same endpoint: the loop rides through.

``bioimp run`` must notice the dead plant (reads and writes time out: ``plant_unreachable``), keep its
period, reconnect by itself when a plant answers on the same endpoint again (ZeroMQ reconnects the DEALER),
and finish the batch with a record that verifies. The restarted simulated plant is a new process: its time
starts again from 0 and it holds its safe values until the first write, as a restarted gateway would.

The other process kills are covered elsewhere: the controller (``bioimp run``) in
tests/twin/test_resume_kill.py, the Modbus PLC and the OPC UA server behind a gateway in
tests/hil/gateway/test_modbus.py::test_driver_loss_is_bad_then_reconnects and
tests/hil/gateway/test_opcua.py::test_server_loss_is_bad_then_reconnects.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hil.launch import spawn_plant_server
from hil.plant_log import read_plant_log
from tests.faults.harness import (
    WALL_PERIOD_S,
    bioimp_run,
    count_so_far,
    event_kinds,
    finish,
    haldane_scenario,
    plant_args,
    query,
)
from tests.hil.gateway.procs import free_port
from twin.batch import new_parts
from twin.interfaces import Measurements
from twin.record_verify import verify_record
from twin.scenario import CHO_SCENARIO, load_scenario

STEPS = 30
KILLS = 2
DOWN_S = 4 * WALL_PERIOD_S  # each outage: about four periods without a plant


def _applied(db: Path) -> int:
    return count_so_far(db, "setpoints", "state = 'applied'")


@pytest.mark.timeout(120)
def test_plant_server_killed_and_restarted_loop_records_the_outage_and_reconnects(tmp_path: Path) -> None:
    scenario = haldane_scenario(tmp_path, STEPS)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    out = tmp_path / "run"
    db = out / "record.sqlite"
    logs = [tmp_path / f"plant{i}.jsonl" for i in range(KILLS + 1)]
    # A watchdog of 4 periods, fed by the run's heartbeat thread, as in production.
    args = [plant_args(scenario, log, watchdog_s=4 * WALL_PERIOD_S, command=endpoint) for log in logs]
    outages = []
    with spawn_plant_server("fedbatch_haldane", clock="realtime", extra_args=args[0]) as first:
        run = bioimp_run(scenario, endpoint, out)
        deadline = time.monotonic() + 30
        while _applied(db) < 4:
            assert time.monotonic() < deadline and run.poll() is None, "the batch did not start"
            time.sleep(0.05)
        first.process.kill()
        first.process.wait(5)
    for i in range(1, KILLS + 1):
        applied_at_kill = _applied(db)
        time.sleep(DOWN_S)
        assert run.poll() is None, "bioimp run died with its plant"
        with spawn_plant_server("fedbatch_haldane", clock="realtime", extra_args=args[i]) as plant:
            back = time.monotonic()
            while _applied(db) <= applied_at_kill:
                assert time.monotonic() - back < 10, "the loop did not reconnect to the restarted plant"
                time.sleep(0.02)
            outages.append(time.monotonic() - back)
            if i < KILLS:
                time.sleep(4 * WALL_PERIOD_S)
                plant.process.kill()
                plant.process.wait(5)
            else:
                err = finish(run)
    print(f"control resumed {', '.join(f'{s:.2f}' for s in outages)} s after each restart")

    assert verify_record(db).ok
    events = event_kinds(db)
    print(f"events: {events}")
    assert events.get("plant_unreachable", 0) >= KILLS  # each outage is in the record
    assert events.get("plant_time_reset", 0) == KILLS  # and each restart (its clock began again at 0)
    assert "Traceback" not in err
    # Each plant process applied writes; the last one until the end of the batch.
    for log in logs:
        assert any(e["op"] == "apply" for e in read_plant_log(log)), log
    steps_controlled = query(db, "SELECT COUNT(DISTINCT step) FROM controls")[0][0]
    assert steps_controlled >= STEPS - KILLS * (DOWN_S / WALL_PERIOD_S + 4)


def test_the_twin_keeps_filtering_when_a_restarted_plant_counts_its_time_from_zero() -> None:
    """A gateway restarted in front of a live culture: same culture, its clock back at zero. The EKF moves
    its history onto the new clock and goes on fusing the probes (before: every later reading was older
    than its history and rejected, to the end of the batch — found by the soak)."""
    scenario = load_scenario(CHO_SCENARIO)
    spec, _, estimator, _ = new_parts(scenario)
    plant = scenario.new_plant(spec)
    period, offset = scenario.loop.period_s, 0.0
    rejected_after: list[str] = []
    for step in range(48):  # 4 h; the "restart" after 2 h
        if step == 24:
            offset = plant.time_s  # from now on the plant reports its time from zero
        readings = {n: replace(r, t_s=r.t_s - offset) for n, r in plant.read().items()}
        est = estimator.update(Measurements(plant.time_s - offset, readings), None)  # inputs held safe
        if step >= 24:
            rejected_after += est.rejected
        assert np.all(np.isfinite(est.x))
        plant.advance(period)
    assert "T" not in rejected_after and "V" not in rejected_after, rejected_after
    iT = spec.states.index("T")
    assert abs(est.x[iT] - plant.true_state[iT]) < 0.5
