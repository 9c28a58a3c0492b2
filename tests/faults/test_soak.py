"""The soak (tests/faults/soak.py): zero unhandled exceptions, memory and file descriptors flat, every
fault in the record. ``make test`` runs 1 day of the CHO batch (about a minute); ``make soak`` runs
14 days (``BIOIMP_SOAK_DAYS=14``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.faults.soak import run_soak

DAYS = float(os.environ.get("BIOIMP_SOAK_DAYS", "1"))
SEED = int(os.environ.get("BIOIMP_SOAK_SEED", "1"))


@pytest.mark.timeout(int(600 + DAYS * 120))
def test_soak_no_unhandled_exception_flat_resources_every_fault_recorded(tmp_path: Path) -> None:
    report = run_soak(DAYS, SEED, tmp_path)
    print(f"soak {DAYS} days, seed {SEED}: {report.wall_s} s wall, {report.steps} steps with readings")
    print(f"RSS MB {report.rss_mb}, fds {report.fds}")
    print(f"events {report.events}")
    print(f"link {report.link}")
    for fault in report.faults:
        print(f"  {fault.kind:16s} at {fault.at_s / 3600:7.2f} h: {fault.seen or 'NOT IN THE RECORD'}")
    assert report.exit_code == 0 and report.tracebacks == 0
    assert report.record_ok
    assert not report.unseen, report.unseen
    assert set(report.rss_mb) == {"start", "middle", "end"}
    # Flat: from the middle to the end (the start includes the first imports and JIT'd solvers) less
    # than 10 % of growth in memory, no file descriptor gained.
    assert report.rss_mb["end"] <= 1.10 * report.rss_mb["middle"]
    assert report.fds["end"] <= report.fds["start"]
