"""Fixtures for the hil tests: real plant server processes (one per kind, shared by the session).

The shared servers run without a watchdog (``--watchdog 0``): tests far apart in the session write to
them, and a fail-safe left by one test must not refuse another's writes. The watchdog has its own tests,
each with its own server.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.launch import PlantProcess, spawn_plant_server

REPO = Path(__file__).resolve().parents[2]
TWO_INPUT_MODEL = "tests.hil.two_input_model:two_input"
NO_WATCHDOG = ("--watchdog", "0")


def env_with_test_models() -> dict[str, str]:
    """This process's environment with the repository on PYTHONPATH (so ``tests.hil...`` imports)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


@pytest.fixture(scope="session")
def fedbatch_server() -> Iterator[PlantProcess]:
    """``bioimp plant serve --model fedbatch_haldane`` (virtual clock) in its own process."""
    with spawn_plant_server("fedbatch_haldane", extra_args=NO_WATCHDOG) as server:
        yield server


@pytest.fixture(scope="session")
def two_input_server() -> Iterator[PlantProcess]:
    """The two-actuator test plant served in its own process (virtual clock)."""
    with spawn_plant_server(TWO_INPUT_MODEL, env=env_with_test_models(), extra_args=NO_WATCHDOG) as server:
        yield server


@pytest.fixture(scope="session")
def realtime_server() -> Iterator[PlantProcess]:
    """fedbatch_haldane on a real-time clock publishing ``meas`` every 0.05 s."""
    args = ["--sample-period", "0.05", *NO_WATCHDOG]
    with spawn_plant_server("fedbatch_haldane", clock="realtime", extra_args=args) as server:
        yield server
