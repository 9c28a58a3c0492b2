"""What one 5-min step of the default CHO batch costs on the plant's side of the wire.

The plant server of the default scenario (``bioimp plant serve --scenario cho_fedbatch.toml``, its own
process, loopback TCP) is driven the way ``bioimp run``'s loop drives it, without the loop's own work,
in three forms interleaved chunk by chunk (so that the load of a shared machine falls on all three):

* ``read_write_advance``: what the loop does today, three exchanges and three waits per step;
* ``write_advance_and_read``: :meth:`hil.client.ZmqPlant.advance_and_read`, the same three requests
  but two waits (advance and read are sent together);
* ``write_advance``: two requests, no read: the least a step could cost if the advance's reply carried
  the readings (a combined op, not in protocol v1).

Reported in ``extra_info`` (no budget): the median wall time per step of each form, and the CPU time
per step of this client process and of the server process. Quick mode (``--benchmark-disable``) runs
one short chunk of each.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hil.client import ZmqPlant
from hil.launch import spawn_plant_server
from twin.scenario import CHO_SCENARIO, load_scenario

PERIOD_S = 300.0


def _cpu_s(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads), s."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_plant_exchanges_per_cho_step(benchmark: Any) -> None:
    scenario = load_scenario(CHO_SCENARIO)
    extra = ("--scenario", str(CHO_SCENARIO), "--rtol", repr(scenario.plant.rtol), "--atol", repr(scenario.plant.atol))
    chunk, chunks = (5, 1) if benchmark.disabled else (100, 12)
    with spawn_plant_server(scenario.model, extra_args=extra) as server, ZmqPlant(server.command) as plant:
        info = plant.hello()
        # A quarter of each actuator's range: a feed and a heater that keep the culture changing.
        setpoints = {d.name: 0.25 * (d.max or 0.0) for d in info.devices if d.kind == "actuator"}
        state = {"seq": 0, "t_s": plant.read().time_s}

        def write() -> None:
            state["seq"] += 1
            plant.write(setpoints, state["seq"], valid_until_s=state["t_s"] + PERIOD_S)

        def read_write_advance() -> None:
            state["t_s"] = plant.read().time_s
            write()
            plant.advance(PERIOD_S)

        def write_advance_and_read() -> None:
            write()
            state["t_s"] = plant.advance_and_read(PERIOD_S)[1].time_s

        def write_advance() -> None:
            write()
            state["t_s"] = plant.advance(PERIOD_S)

        forms: dict[str, Callable[[], None]] = {
            "read_write_advance": read_write_advance,
            "write_advance_and_read": write_advance_and_read,
            "write_advance": write_advance,
        }
        wall: dict[str, list[float]] = {name: [] for name in forms}
        cpu: dict[str, list[tuple[float, float]]] = {name: [] for name in forms}

        def run() -> None:
            for _ in range(chunks):
                for name, step in forms.items():
                    t0, c0, s0 = time.perf_counter(), time.process_time(), _cpu_s(server.process.pid)
                    for _ in range(chunk):
                        step()
                    wall[name].append((time.perf_counter() - t0) / chunk)
                    cpu[name].append(((time.process_time() - c0) / chunk, (_cpu_s(server.process.pid) - s0) / chunk))

        benchmark.pedantic(run, rounds=1, iterations=1)
        assert plant.read().time_s == chunks * chunk * len(forms) * PERIOD_S  # every advance was served once
    for name in forms:
        figures = {
            "step_median_us": 1e6 * statistics.median(wall[name]),
            "client_cpu_us": 1e6 * statistics.mean(c for c, _ in cpu[name]),
            "server_cpu_us": 1e6 * statistics.mean(s for _, s in cpu[name]),
        }
        benchmark.extra_info[name] = figures
        print(name, {k: round(v) for k, v in figures.items()})
