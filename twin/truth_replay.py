"""The true plant replayed while the batch runs: :func:`twin.batch_figure.replay_truth`, step by step.

After a batch against the scenario's own simulated plant, the batch figure and the harvest show the
plant's true states: the plant rebuilt from the scenario (same seed) with the record's applied setpoints
replayed period by period (:func:`~twin.batch_figure.replay_truth`). Done after the loop, that replay is
the longest part of finishing a 14-day CHO batch (4032 periods of the plant's integrator).

Here the same replay runs in a child process (``python -m twin.truth_replay``) *while* the loop runs:
:class:`ReplayTap`, a :class:`~twin.record.Recorder` wrapper, forwards each recorded ``applied``
setpoint row to it; the child replays a period as soon as a later step's row shows that period's
setpoints are final. The loop's process only pickles one small row per write; the child works on the
second core, which the loop and its plant server leave mostly idle (they take turns). When the loop ends,
:meth:`TruthReplay.result` replays the last periods and returns exactly what ``replay_truth`` would
return from the record: the same plant, the same inputs in the same order.

The loop never sees the truth: the child only receives what the record receives, and only the run
directory's figure and harvest read its answer.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import numpy as np

from plant_models.errors import BioimpError
from twin.interfaces import FloatArray
from twin.record import Recorder, RecorderTap, SetpointRow
from twin.scenario import Scenario, parse_scenario

__all__ = ["ReplayError", "ReplayTap", "TruthReplay", "serve"]


class ReplayError(BioimpError, RuntimeError):
    """The replay process failed or went away (the message holds its error)."""


class TruthReplay:
    """A child process replaying the scenario's simulated plant on the applied setpoints; a context manager.

    Started on entry with the scenario (its TOML text); :meth:`applied` sends it one applied setpoint
    row; :meth:`result` ends the replay after ``steps`` periods and returns ``(t_s, x)`` as
    :func:`twin.batch_figure.replay_truth` does. Leaving the block stops the child.
    """

    def __init__(self, scenario: Scenario, *, nice: int = 10) -> None:
        """Args: scenario: the batch's scenario (its ``[plant]`` is what is replayed); nice: the child's
        niceness increment (it has the whole batch to keep up; the loop and its plant come first)."""
        self._source = scenario.source
        self._nice = nice
        self._proc: subprocess.Popen[bytes] | None = None
        self._gone = False

    def __enter__(self) -> TruthReplay:
        """Start the child process and give it the scenario."""
        root = str(Path(__file__).resolve().parents[1])  # the child imports this same twin package
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))}
        argv = [sys.executable, "-m", "twin.truth_replay", *(["--nice", str(self._nice)] if self._nice else [])]
        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self._send(("scenario", self._source))
        return self

    def _send(self, message: tuple[Any, ...]) -> None:
        # Never raises: a replay that went away must not stop the batch; result() reports it.
        assert self._proc is not None and self._proc.stdin is not None, "use TruthReplay as a context manager"
        if self._gone:
            return
        try:
            pickle.dump(message, self._proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self._proc.stdin.flush()
        except OSError:  # BrokenPipeError: the child exited (its error, if any, is waiting on its stdout)
            self._gone = True

    def applied(self, step: int, values: dict[str, float]) -> None:
        """The setpoints the plant applied at ``step`` (rows in step order, as the record has them)."""
        self._send(("applied", step, dict(values)))

    def result(self, steps: int) -> tuple[FloatArray, FloatArray]:
        """The true ``(t_s, x)`` after ``steps`` periods: one row per step plus the final state.

        Raises:
            ReplayError: the child failed (its message) or exited.
        """
        self._send(("end", steps))
        assert self._proc is not None and self._proc.stdout is not None
        try:
            reply = pickle.load(self._proc.stdout)
        except (EOFError, OSError, pickle.UnpicklingError):
            raise ReplayError(f"the replay process exited (code {self._proc.wait()})") from None
        if reply[0] != "truth":
            raise ReplayError(str(reply[1]))
        return reply[1], reply[2]

    def __exit__(self, *exc: object) -> None:
        """Close the child's input (it exits at once) and reap it."""
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ReplayTap(RecorderTap):
    """A :class:`Recorder` that records through ``inner`` and sends each applied setpoint row to ``replay``."""

    def __init__(self, inner: Recorder, replay: TruthReplay) -> None:
        """Args: inner: where rows go; replay: the running replay."""
        super().__init__(inner)
        self.replay = replay

    def setpoint(self, row: SetpointRow) -> None:
        """Record the row, then (an applied one, once it is recorded) send it to the replay."""
        self.inner.setpoint(row)
        if row.state == "applied":
            self.replay.applied(row.step, dict(row.values))


def serve(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    """The child's loop: replay periods as their setpoints become final; answer ``end`` with the truth.

    The same arithmetic as :func:`twin.batch_figure.replay_truth`: period ``k`` applies the last applied
    row of step ``k`` (if any), then advances one loop period.
    """
    sim = None
    period_s = 0.0
    applied: dict[int, dict[str, float]] = {}
    t: list[float] = []
    x: list[FloatArray] = []
    done = 0  # periods replayed

    def replay_to(steps: int) -> None:
        nonlocal done
        assert sim is not None
        while done < steps:
            if done in applied:
                sim.apply(applied.pop(done))
            sim.advance(period_s)
            t.append(sim.time_s)
            x.append(sim.true_state.copy())
            done += 1

    while True:
        try:
            message = pickle.load(stdin)
        except EOFError:
            return
        try:
            if message[0] == "scenario":
                scenario = parse_scenario(message[1], "<replayed scenario>")
                sim = scenario.new_plant(scenario.spec())
                period_s = scenario.loop.period_s
                t.append(sim.time_s)
                x.append(sim.true_state.copy())
            elif message[0] == "applied":
                step = message[1]
                if step < done:
                    raise ValueError(f"setpoints of step {step} arrived after it was replayed (step {done})")
                replay_to(step)  # every earlier period's setpoints are final now
                applied[step] = message[2]
            else:  # ("end", steps)
                replay_to(message[1])
                reply: tuple[Any, ...] = ("truth", np.array(t), np.array(x))
                pickle.dump(reply, stdout, protocol=pickle.HIGHEST_PROTOCOL)
                stdout.flush()
        except Exception as exc:  # answered at "end": the parent raises it as a ReplayError
            error = f"{type(exc).__name__}: {exc}".replace("\n", " ")
            pickle.dump(("error", error), stdout, protocol=pickle.HIGHEST_PROTOCOL)
            stdout.flush()
            return


if __name__ == "__main__":
    if sys.argv[1:2] == ["--nice"]:
        os.nice(int(sys.argv[2]))
    # Through the module, not this __main__ copy (one set of classes).
    from twin.truth_replay import serve as _serve_module

    _serve_module(sys.stdin.buffer, sys.stdout.buffer)
