"""The soak: an accelerated CHO batch under a seeded random schedule of faults, with resource figures.

Three kinds of process on loopback: ``bioimp plant serve`` (the CHO scenario's plant, real-time clock
accelerated ``TIME_SCALE`` times), the fault proxy (a thread of this process) and ``bioimp run``. While
the batch runs, the schedule injects:

* link faults all along (drop, duplicate, reorder, delay up to two periods, each ``LINK_RATE``);
* per day, one short partition (a third of the watchdog) and one long one (twice the watchdog: the plant
  goes to fail-safe; the operator re-arms it a few periods after the link heals);
* per day, sensor faults in the plant: a NaN and a +15 % spike (40 min each) on the temperature probe, the probe
  frozen for 2 h, the load cell drifting +10 mL/h for 6 h;
* once per batch, the plant server killed (SIGKILL) and restarted on the same endpoint (a simulated
  plant restarts from its initial state: the culture is not the point here, the loop's survival is).

Figures: the controller's (``bioimp run``) resident memory and open file descriptors at the start,
middle and end of the batch; unhandled exceptions (a traceback or a non-zero exit of any process); and,
for every scheduled fault, the record's event that shows it.

The CHO batch runs with the daily-bolus planner (the NMPC's ~1 s solves every hour would overrun a
0.1 s wall period; solver faults have their own test) and the heater PID on the EKF twin.

``make soak`` runs 14 days (~10 min); ``make test`` runs 1 day (tests/faults/test_soak.py).
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hil.client import ZmqPlant
from hil.launch import read_ready_line
from tests.faults.harness import count_so_far, query
from tests.faults.proxy import FaultProxy, LinkFaults
from tests.hil.gateway.procs import free_port
from twin.record_verify import verify_record
from twin.scenario import CHO_SCENARIO

PLANT_PERIOD_S = 300.0  # the CHO loop's period (5 min of plant time)
WALL_PERIOD_S = 0.15
TIME_SCALE = PLANT_PERIOD_S / WALL_PERIOD_S
WATCHDOG_S = 1.5  # ten periods of wall time
CLIENT_TIMEOUT_S = WALL_PERIOD_S / 4
LINK_RATE = 0.02
HOUR = 3600.0
DAY = 24 * HOUR


@dataclass
class Fault:
    """One scheduled fault: its kind, when (plant time from the batch start, s), and how it showed."""

    kind: str
    at_s: float
    length_s: float = 0.0
    seen: str = ""
    plant: int = 0  # which plant server instance (0, then 1 after the restart) and whose clock at_s is on


@dataclass
class SoakReport:
    """What the soak measured."""

    days: float
    seed: int
    wall_s: float = 0.0
    steps: int = 0
    exit_code: int | None = None
    tracebacks: int = 0
    rss_mb: dict[str, float] = field(default_factory=dict)
    fds: dict[str, int] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    events: dict[str, int] = field(default_factory=dict)
    link: dict[str, int] = field(default_factory=dict)
    record_ok: bool = False
    record_rows: int = 0

    @property
    def unseen(self) -> list[Fault]:
        """Scheduled faults the record does not show."""
        return [f for f in self.faults if not f.seen]


def sensor_faults(days: float, rng: random.Random) -> tuple[list[Fault], str]:
    """Per day: NaN, spike, a 2 h frozen probe, a 3 h drift; as faults and as the scenario's TOML."""
    faults = []
    for d in range(int(days + 0.999)):
        base = d * DAY
        plan = [
            # From 4 h: the plant's clock starts when it does, the loop's some seconds (hours) later.
            # NaN and spike last 40 min: the loop reads every 5 min, the probe samples every minute, and
            # a short partition (17 min of plant time) must not hide a fault entirely (the 14-day soak
            # once scheduled one over a 10-min NaN: the loop never read it).
            ("sensor_nan", base + rng.uniform(4, 6) * HOUR, 2400.0),
            ("sensor_spike", base + rng.uniform(6.5, 8.5) * HOUR, 2400.0),
            ("sensor_stuck", base + rng.uniform(9, 12) * HOUR, 2 * HOUR),
            # +10 mL/h for 6 h: the EKF follows a drift (one load cell cannot tell it from a real volume
            # change); it shows when the drift stops and the reading jumps back 60 mL (30 sigma).
            ("sensor_drift", base + rng.uniform(12.5, 13.5) * HOUR, 6 * HOUR),
        ]
        for kind, at, length in plan:
            at = round(at / 60.0) * 60.0  # on a probe sample
            if at + length >= days * DAY - HOUR:
                continue
            faults.append(Fault(kind, at, length))
    return faults, "\n" + "\n".join(_fault_toml(f) for f in faults)


_FAULT_BODY = {
    "sensor_nan": 'device = "T"\nvalue = nan',
    "sensor_spike": 'device = "T"\nfactor = 1.15',
    "sensor_stuck": 'device = "T"\nstuck = true',
    "sensor_drift": f'device = "V"\ndrift_per_s = {0.01 / HOUR}',
}


def _fault_toml(f: Fault) -> str:
    until = f"\nuntil_s = {f.at_s + f.length_s}" if f.length_s else ""
    return f"[[plant.sensors.faults]]\nat_s = {f.at_s}{until}\n{_FAULT_BODY[f.kind]}\n"


def wall_faults(days: float, rng: random.Random) -> list[Fault]:
    """Per day one short and one long partition; one plant kill per batch (plant time of injection)."""
    out = []
    for d in range(int(days + 0.999)):
        for kind, lo, hi, length in (
            ("partition_short", 2, 10, WATCHDOG_S / 3),
            ("partition_long", 13, 20, 2 * WATCHDOG_S),
        ):
            at = d * DAY + rng.uniform(lo, hi) * HOUR
            if at < days * DAY - 4 * HOUR:
                out.append(Fault(kind, at, length))
    # Late in a day, after that day's sensor faults and partitions (a fault cut short by the kill would
    # not be a fault of its own), about half-way through the batch.
    kill_day = min(int(days * 0.55), int(days + 0.999) - 1)
    out.append(Fault("plant_kill", kill_day * DAY + rng.uniform(21.0, 22.0) * HOUR, 4 * WALL_PERIOD_S))
    return sorted(out, key=lambda f: f.at_s)


def soak_scenario(folder: Path, days: float, sensors_toml: str, name: str = "soak") -> Path:
    """The CHO scenario for ``days``, daily-bolus planner, with the scheduled sensor faults."""
    steps = round(days * DAY / PLANT_PERIOD_S)
    text = CHO_SCENARIO.read_text().replace('name = "cho_fedbatch"', 'name = "soak"', 1)
    text = text.replace("steps = 4032 ", f"steps = {steps} ", 1).replace('planner = "nmpc" ', 'planner = "bolus"', 1)
    assert f"steps = {steps} " in text and 'planner = "bolus"' in text
    path = folder / f"{name}.toml"
    path.write_text(text + sensors_toml)
    return path


def _steps_recorded(db: Path) -> int:
    """Steps with a controller decision in the record so far (0 while it is being created)."""
    return count_so_far(db, "controls")


def _resources(pid: int) -> tuple[float, int]:
    """Resident memory (MB) and open file descriptors of a process (Linux /proc)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return rss_kb / 1024.0, len(os.listdir(f"/proc/{pid}/fd"))


class _Plant:
    """``bioimp plant serve`` on a fixed endpoint, restartable."""

    def __init__(self, scenario: Path, endpoint: str, folder: Path) -> None:
        self.argv = [
            sys.executable, "-m", "hil.cli", "plant", "serve", "--scenario", str(scenario),
            "--command", endpoint, "--telemetry", "tcp://127.0.0.1:*", "--clock", "realtime",
            "--time-scale", repr(TIME_SCALE), "--sample-period", repr(WALL_PERIOD_S),
            "--watchdog", repr(WATCHDOG_S),
        ]  # fmt: skip
        self.folder = folder
        self.starts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr: list[Path] = []
        self.t0 = 0.0

    def start(self) -> None:
        err = self.folder / f"plant{self.starts}.stderr"
        self.stderr.append(err)
        self.starts += 1
        with err.open("wb") as f:
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=f, stdin=subprocess.DEVNULL)
        line = read_ready_line(self.proc, 60.0)
        assert line.startswith("ready "), f"plant server did not start: {line!r}"
        self.t0 = time.monotonic()  # its plant time is (now - t0) × TIME_SCALE

    def time_s(self) -> float:
        """This instance's plant time now (s)."""
        return (time.monotonic() - self.t0) * TIME_SCALE

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code


def run_soak(days: float, seed: int, folder: Path, log: Callable[[str], None] = print) -> SoakReport:
    """Run the soak for ``days`` of plant time in ``folder``; return the figures (see the module doc)."""
    rng = random.Random(seed)
    report = SoakReport(days, seed)
    sensor, toml = sensor_faults(days, rng)
    scheduled = wall_faults(days, rng)
    report.faults = sorted(sensor + scheduled, key=lambda f: f.at_s)
    scenario = soak_scenario(folder, days, toml)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    plant = _Plant(scenario, endpoint, folder)
    plant.start()
    link = LinkFaults(LINK_RATE, LINK_RATE, LINK_RATE, LINK_RATE, 2 * WALL_PERIOD_S, seed)
    out = folder / "run"
    with FaultProxy(endpoint, link) as proxy:
        argv = [sys.executable, "-m", "hil.cli", "run", str(scenario), "--plant", proxy.endpoint, "--out", str(out)]
        argv += ["--timeout", repr(CLIENT_TIMEOUT_S)]
        err_path = folder / "run.stderr"
        with err_path.open("w") as err:
            run = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, text=True)
        db = out / "record.sqlite"
        t0, plant0 = time.monotonic(), plant.t0
        # The schedule's clock: the first plant's time, continued through its restart (the restarted
        # plant's own clock starts again at zero).
        now_s: Callable[[], float] = lambda: (time.monotonic() - plant0) * TIME_SCALE  # noqa: E731
        marks = {"middle": 0.5, "end": 0.97}  # and "start": once the loop has made ten steps
        pending = [f for f in scheduled]
        arm_at: float | None = None
        plant_index = 0
        while run.poll() is None:
            t = now_s()
            if "start" not in report.rss_mb and _steps_recorded(db) >= 10:
                rss, fds = _resources(run.pid)
                report.rss_mb["start"], report.fds["start"] = round(rss, 1), fds
                log(f"start: t = {t / HOUR:.1f} h, RSS {rss:.1f} MB, {fds} fds")
            for name, frac in list(marks.items()):
                if t >= frac * days * DAY:
                    rss, fds = _resources(run.pid)
                    report.rss_mb[name], report.fds[name] = round(rss, 1), fds
                    log(f"{name}: t = {t / HOUR:.1f} h, RSS {rss:.1f} MB, {fds} fds")
                    del marks[name]
            while pending and t >= pending[0].at_s:
                fault = pending.pop(0)
                fault.at_s, fault.plant = plant.time_s(), plant_index  # as the record shows it: the plant's clock
                log(f"{fault.kind} at batch {t / HOUR:.1f} h, plant {fault.at_s / HOUR:.1f} h")
                if fault.kind.startswith("partition"):
                    proxy.partition(fault.length_s)
                    if fault.kind == "partition_long":  # the operator re-arms a few periods after it heals
                        arm_at = time.monotonic() + fault.length_s + 5 * WALL_PERIOD_S
                elif fault.kind == "plant_kill":
                    plant.kill()
                    killed_at = fault.at_s
                    # The new plant counts from zero: the sensor faults still to come, on its clock.
                    later = [f for f in sensor if f.at_s > killed_at]
                    for f in later:
                        f.at_s, f.plant = f.at_s - killed_at, 1
                    plant.argv[plant.argv.index("--scenario") + 1] = str(
                        soak_scenario(
                            folder, days, "\n" + "\n".join(_fault_toml(f) for f in later), name="soak_restart"
                        )
                    )
                    time.sleep(fault.length_s)
                    plant.start()
                    plant_index = 1
            if arm_at is not None and time.monotonic() >= arm_at:
                with ZmqPlant(endpoint, timeout_s=2.0) as direct:
                    direct.arm()
                arm_at = None
            time.sleep(0.01)
        report.wall_s = round(time.monotonic() - t0, 1)
        report.exit_code = run.returncode
        report.link = {k: int(v) for k, v in proxy.stats.items()}
    plant_codes = [plant.stop()]
    texts = [err_path.read_text()] + [p.read_text(errors="replace") for p in plant.stderr]
    report.tracebacks = sum(t.count("Traceback") for t in texts) + sum(1 for c in plant_codes if c != 0)
    check = verify_record(db)
    report.record_ok = check.ok
    report.record_rows = query(db, "SELECT MAX(rec) FROM events")[0][0] or 0
    report.steps = query(db, "SELECT COUNT(DISTINCT step) FROM samples")[0][0]
    report.events = {k: n for k, n in query(db, "SELECT kind, COUNT(*) FROM events GROUP BY kind")}
    _match_faults(report, db)
    (folder / "soak.json").write_text(json.dumps(asdict(report), indent=1))
    return report


def _match_faults(report: SoakReport, db: Path) -> None:
    """Find each fault in the record's events, on the clock of the plant instance it happened in (the
    restarted plant's starts at zero; its events follow the record's ``plant_time_reset``)."""
    rows = query(db, "SELECT t_s, kind, message FROM events ORDER BY rec")
    reset = next((i for i, (_, kind, _) in enumerate(rows) if kind == "plant_time_reset"), len(rows))
    by_plant = {0: rows[:reset], 1: rows[reset:]}

    def near(plant: int, kinds: tuple[str, ...], device: str | None, lo: float, hi: float, says: str = "") -> str:
        for t, kind, message in by_plant[plant]:
            if t is None or kind not in kinds or not lo <= t <= hi or says not in message:
                continue
            if device is None or message.startswith(device + ":"):
                return f"{kind} at {t / HOUR:.2f} h" + (" (restarted plant)" if plant else "")
        return ""

    for f in report.faults:
        lo, hi = f.at_s - HOUR, f.at_s + f.length_s * TIME_SCALE + 2 * HOUR
        if f.kind == "plant_kill":
            f.seen = near(1, ("plant_time_reset",), None, 0.0, math.inf)
        elif f.kind == "partition_short":
            f.seen = near(f.plant, ("plant_unreachable", "period_overrun", "gap"), None, lo, hi)
        elif f.kind == "partition_long":
            # The loop's write refused (plant_failsafe), or the heartbeat's reply (plant_state): a
            # fail-safe re-armed before the loop's next write got through shows only in the latter.
            f.seen = near(f.plant, ("plant_failsafe",), None, lo, hi) or near(
                f.plant, ("plant_state",), None, lo, hi, says="failsafe"
            )
        else:
            hi = f.at_s + f.length_s + 2 * HOUR
            device = "V" if f.kind == "sensor_drift" else "T"
            f.seen = near(f.plant, ("measurement_rejected",), device, f.at_s - 1.0, hi)
