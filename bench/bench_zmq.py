"""ZeroMQ write round trip: the loop's client to a plant server in another process, over loopback TCP,
in the clear and with CurveZMQ (encryption and client authentication)."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import Any

import pytest

from bench.budgets import check
from bench.conftest import percentiles_ms
from hil.client import ZmqPlant
from hil.launch import spawn_plant_server
from hil.security import ClientKeys, generate_keys


@pytest.mark.parametrize("security", ["none", "curve"])
def test_zmq_write_roundtrip(benchmark: Any, security: str, tmp_path: Path) -> None:
    server_args: list[str] = []
    keys = None
    if security == "curve":
        generate_keys(tmp_path, ("server", "client"))
        (tmp_path / "allowed").mkdir()
        shutil.copy(tmp_path / "client.key", tmp_path / "allowed")
        server_args = ["--server-key", str(tmp_path / "server.key_secret"), "--allow", str(tmp_path / "allowed")]
        keys = ClientKeys.load(tmp_path / "client.key_secret", tmp_path / "server.key")
    with (
        spawn_plant_server("fedbatch_haldane", extra_args=server_args) as server,
        ZmqPlant(server.command, keys=keys) as plant,
    ):
        plant.hello()  # connect (and, with CURVE, authenticate) before timing
        seqs = itertools.count(1)

        def write() -> float:
            seq = next(seqs)
            return plant.write({"inp": 0.001 * (seq % 100)}, seq).applied["inp"]

        benchmark.group = "zmq"
        applied = benchmark.pedantic(write, rounds=2000, iterations=1, warmup_rounds=50)
        assert 0.0 <= applied <= 0.2
        assert plant.read().values["inp"].value == applied  # the last write is what the plant holds
    if not benchmark.disabled:
        check("zmq_write_roundtrip_p99_ms", percentiles_ms(benchmark)["p99_ms"])
