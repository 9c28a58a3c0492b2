"""Network partitions between ``bioimp run`` and the plant, through the fault proxy.

Scaling (docs/reliability.md): the issue's 1 s and 10 s partitions under a plant watchdog are scaled
with the watchdog. Here ``watchdog_s`` = WATCHDOG_S = 3 s of wall time and the partitions last 1/30,
1/3 and 1.5 watchdogs (0.1 s, 1 s, 4.5 s): a 30 s watchdog with 1 s, 10 s and 45 s partitions, at 1/10
of the time. The proxy *holds* what is sent during a partition and delivers it when the link heals, as
a stalled TCP connection does, so the setpoints queued during the outage do reach the plant — late.

Promises checked: the two short partitions are ridden through (retries, lost periods; no fail-safe);
the long one puts the plant in fail-safe within 2 × watchdog_s of its last feed; after the link heals no
queued (stale) setpoint is applied; control resumes only after ``arm``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from hil.client import ZmqPlant
from hil.launch import spawn_plant_server
from hil.plant_log import read_plant_log
from tests.faults.harness import (
    WALL_PERIOD_S,
    bioimp_run,
    check_plant_log_against_record,
    count_so_far,
    event_kinds,
    finish,
    haldane_scenario,
    plant_args,
    query,
)
from tests.faults.proxy import FaultProxy
from tests.hil.rawclient import RawClient
from twin.record_verify import verify_record

WATCHDOG_S = 3.0
SHORT_PARTITIONS_S = (WATCHDOG_S / 30, WATCHDOG_S / 3)
LONG_PARTITION_S = 1.5 * WATCHDOG_S
STEPS = 48  # 19 s of wall time: room for the three partitions, the fail-safe and the re-arm
LATENCY_SAMPLES = 20


def _applied_count(db: Path) -> int:
    return count_so_far(db, "setpoints", "state = 'applied'")


@pytest.mark.timeout(120)
def test_short_partitions_ridden_through_long_one_failsafe_no_stale_setpoint_resume_after_arm(tmp_path: Path) -> None:
    scenario = haldane_scenario(tmp_path, STEPS)
    log, out = tmp_path / "plant.jsonl", tmp_path / "run"
    db = out / "record.sqlite"
    with spawn_plant_server(
        "fedbatch_haldane", clock="realtime", extra_args=plant_args(scenario, log, watchdog_s=WATCHDOG_S)
    ) as plant:
        direct = ZmqPlant(plant.command, timeout_s=2.0)  # the test's own line to the plant, not via the proxy
        try:
            with FaultProxy(plant.command) as proxy:
                run = bioimp_run(scenario, proxy.endpoint, out)
                deadline = time.monotonic() + 30
                while _applied_count(db) < 3:  # control is under way
                    assert time.monotonic() < deadline and run.poll() is None, "the batch did not start"
                    time.sleep(0.05)
                for length in SHORT_PARTITIONS_S:
                    proxy.partition(length)
                    time.sleep(length + 2 * WALL_PERIOD_S)
                    assert direct.hello().state == "armed", f"a {length} s partition tripped the watchdog"
                applied_before = _applied_count(db)
                t_cut = direct.read().time_s
                proxy.partition(LONG_PARTITION_S)
                time.sleep(LONG_PARTITION_S + 3 * WALL_PERIOD_S)  # healed; the loop has met the fail-safe
                hello = direct.hello()
                assert hello.state == "failsafe"
                t_arm, state = direct.arm()
                assert state == "armed"
                err = finish(run)
            latency = failsafe_latency(plant.command)
        finally:
            direct.close()
    print(f"fail-safe latency {latency:.3f} s (watchdog {WATCHDOG_S} s); proxy {dict(proxy.stats)}")
    assert WATCHDOG_S <= latency <= 2 * WATCHDOG_S

    assert verify_record(db).ok
    check_plant_log_against_record(log, db)
    events = event_kinds(db)
    print(f"events: {events}")
    assert events.get("plant_failsafe", 0) >= 1 and events.get("plant_armed", 0) == 1
    # The heartbeat's replies showed the fail-safe and the re-arm too (the record has them even when no
    # write of the loop is refused in between).
    states = [m for (m,) in query(db, "SELECT message FROM events WHERE kind = 'plant_state' ORDER BY rec")]
    assert states == ["the heartbeat found the plant failsafe", "the heartbeat found the plant armed"], states
    assert applied_before > 3  # the short partitions did not stop control

    entries = read_plant_log(log)
    safe_at = [e["t"] for e in entries if e["op"] == "apply_safe" and e["t"] > 0]
    # One fail-safe during the batch (the long partition) and one when the server stopped.
    assert len(safe_at) == 2 and t_cut <= safe_at[0] < t_arm, (safe_at, t_cut, t_arm)
    applies = [e["t"] for e in entries if e["op"] == "apply"]
    # Nothing applied between the fail-safe and the arm: the writes held during the partition arrived
    # after it healed and were refused (fail-safe, and stale by valid_until); control resumed after arm.
    assert not [t for t in applies if safe_at[0] <= t < t_arm]
    assert [t for t in applies if t >= t_arm], "control did not resume after arm"
    refused = query(db, "SELECT reply FROM setpoints WHERE state = 'refused'")
    assert refused and all("failsafe" in r[0] or "stale" in r[0] for r in refused), refused
    assert "Traceback" not in err


def failsafe_latency(endpoint: str) -> float:
    """The plant's own measure (``hello``'s ``last_failsafe_latency_s``): last feed to safe values, s."""
    raw = RawClient(endpoint)
    try:
        value = raw.call({"id": 1, "op": "hello"})["last_failsafe_latency_s"]
    finally:
        raw.close()
    assert value is not None, "the plant reports no fail-safe latency"
    return float(value)


@pytest.mark.timeout(120)
def test_failsafe_latency_p99_within_twice_the_watchdog(tmp_path: Path) -> None:
    """A heartbeating client is cut off by a partition LATENCY_SAMPLES times; each time the plant reports
    the delay from the last feed to safe values applied (``last_failsafe_latency_s``)."""
    watchdog_s = 0.2
    scenario = haldane_scenario(tmp_path, 1)
    latencies = []
    with (
        spawn_plant_server(
            "fedbatch_haldane",
            clock="realtime",
            extra_args=plant_args(scenario, tmp_path / "p.jsonl", watchdog_s=watchdog_s),
        ) as plant,
        FaultProxy(plant.command) as proxy,
        ZmqPlant(plant.command, timeout_s=2.0) as direct,
        ZmqPlant(proxy.endpoint, timeout_s=0.5, retries=2) as controller,
    ):
        for _ in range(LATENCY_SAMPLES):
            direct.arm()
            for _ in range(3):
                controller.heartbeat()
                time.sleep(watchdog_s / 4)
            proxy.partition(1.5 * watchdog_s)
            while direct.hello().state != "failsafe":
                time.sleep(0.01)
            latencies.append(failsafe_latency(plant.command))
            time.sleep(proxy.partition_left_s + 0.05)
    p99 = float(np.percentile(latencies, 99))
    print(
        f"fail-safe latency over {len(latencies)} partitions: p50 {np.median(latencies):.3f} s, "
        f"p99 {p99:.3f} s, max {max(latencies):.3f} s (watchdog {watchdog_s} s)"
    )
    assert len(latencies) == LATENCY_SAMPLES
    assert min(latencies) >= watchdog_s
    assert p99 <= 2 * watchdog_s
