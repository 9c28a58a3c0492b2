"""ZeroMQ write round trip: the loop's client to a plant server in another process, over loopback TCP."""

from __future__ import annotations

import itertools
from typing import Any

from bench.budgets import check
from bench.conftest import percentiles_ms
from hil.client import ZmqPlant
from hil.launch import spawn_plant_server


def test_zmq_write_roundtrip(benchmark: Any) -> None:
    with spawn_plant_server("fedbatch_haldane") as server, ZmqPlant(server.command) as plant:
        plant.hello()  # connect before timing
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
