"""The controller seam: what every controller (NMPC, do-mpc reference, PID, baselines) returns.

Controllers sit below the twin layer, so the protocol lives here and ``twin.interfaces`` re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class ControlStep:
    """What a controller decided at one step.

    Attributes:
        u: inputs to apply, in the ModelSpec's input order.
        status: ``"ok"`` or a solver-specific failure word (then ``fallback`` says what was used).
        compute_s: wall-clock time spent deciding.
        fallback: ``None`` when ``u`` is the fresh solution, else the fallback used.
        predicted_x: predicted state trajectory over the horizon (N+1, nx), if the controller has one.
        planned_u: planned inputs over the horizon (N, nu), if any.
        iterations: solver iterations spent on this step, if the controller iterates.
        feedback_s: wall-clock time from the call until ``u`` was known, when the controller splits
            its work (real-time iteration prepares the next step after ``u`` is known, inside the
            same call, so ``compute_s`` is the whole call and ``feedback_s`` the latency).
    """

    u: FloatArray
    status: str
    compute_s: float
    fallback: str | None = None
    predicted_x: FloatArray | None = field(default=None, repr=False)
    planned_u: FloatArray | None = field(default=None, repr=False)
    iterations: int | None = None
    feedback_s: float | None = None


class Controller(Protocol):
    """Decides the inputs from the current time, state estimate and parameter estimate."""

    name: str

    def step(self, t_s: float, x: FloatArray, p: FloatArray) -> ControlStep:
        """Decide the inputs to apply from now until the next step (``t_s`` in seconds)."""
        ...
