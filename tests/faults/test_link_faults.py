"""Link faults through the fault proxy: 10 % drop, 10 % duplication, 10 % reordering, delays up to two
sample periods — the batch completes, the plant applies every seq once and in order, within limits, and
the KPIs stay within 5 % of the fault-free run of the same batch.

Three processes on loopback: ``bioimp plant serve`` (real-time clock, accelerated), the relay
(:mod:`tests.faults.proxy`, a thread of this process) and ``bioimp run``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hil.launch import spawn_plant_server
from tests.faults.harness import (
    WALL_PERIOD_S,
    bioimp_run,
    check_plant_log_against_record,
    event_kinds,
    finish,
    haldane_scenario,
    kpis_at_batch_end,
    plant_args,
    summary,
)
from tests.faults.proxy import FaultProxy, LinkFaults
from twin.record_verify import verify_record

STEPS = 30
FAULTS = LinkFaults(
    drop=0.10,
    duplicate=0.10,
    reorder=0.10,
    delay=0.10,
    delay_max_s=2 * WALL_PERIOD_S,
    seed=int(os.environ.get("BIOIMP_FAULT_SEED", "8")),
)
KPI_TOLERANCE = 0.05


def _batch(tmp_path: Path, name: str, faults: LinkFaults) -> tuple[dict[str, object], Path, Path, FaultProxy]:
    scenario = haldane_scenario(tmp_path, STEPS)
    log, out = tmp_path / f"{name}.jsonl", tmp_path / name
    # A watchdog of 4 periods: the heartbeat (its own client, through the same faulty link) keeps it fed.
    with (
        spawn_plant_server(
            "fedbatch_haldane", clock="realtime", extra_args=plant_args(scenario, log, watchdog_s=4 * WALL_PERIOD_S)
        ) as plant,
        FaultProxy(plant.command, faults) as proxy,
    ):
        finish(bioimp_run(scenario, proxy.endpoint, out))
    return summary(out), out / "record.sqlite", log, proxy


@pytest.mark.timeout(180)
def test_drop_duplicate_reorder_delay_batch_completes_applies_each_seq_once_kpis_within_5_percent(
    tmp_path: Path,
) -> None:
    # The two batches side by side (each mostly sleeps between its periods): half the wall time.
    with ThreadPoolExecutor(2) as pool:
        ref_run = pool.submit(_batch, tmp_path, "ref", LinkFaults())
        faulty_run = pool.submit(_batch, tmp_path, "faulty", FAULTS)
        ref, ref_db, ref_log, _ = ref_run.result()
        got, db, log, proxy = faulty_run.result()

    # The faults really happened, at about the rates asked for.
    stats = proxy.stats
    print(f"proxy: {dict(stats)}")
    assert stats["messages"] > 4 * STEPS
    for fault in ("dropped", "duplicated", "reordered", "delayed"):
        assert 0.04 < stats[fault] / stats["messages"] < 0.18, (fault, dict(stats))

    assert got["steps"] == STEPS
    assert verify_record(db).ok
    applied = check_plant_log_against_record(log, db)
    assert applied >= 0.7 * STEPS  # most periods still got their setpoint
    check_plant_log_against_record(ref_log, ref_db)
    events = event_kinds(db)
    print(f"events under faults: {events}; applied {applied}/{STEPS}")

    # KPIs: the titer and the feed used at the batch's end, against the fault-free batch.
    k_ref, k_got = kpis_at_batch_end(ref_db, STEPS), kpis_at_batch_end(db, STEPS)
    deviation = {k: abs(k_got[k] - k_ref[k]) / abs(k_ref[k]) for k in k_ref}
    print(
        f"KPIs fault-free {k_ref}, under faults {k_got}: deviation "
        + ", ".join(f"{k} {100 * v:.2f} %" for k, v in deviation.items())
    )
    for name, dev in deviation.items():
        assert dev <= KPI_TOLERANCE, (name, k_ref, k_got)
    assert got["constraint_violation_max"] <= ref["constraint_violation_max"] + 1e-6  # type: ignore[operator]
