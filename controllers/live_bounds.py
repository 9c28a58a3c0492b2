"""Changing a controller's bound while a batch runs (an operator action, audited by the caller).

The NMPCs hold their bounds as numeric vectors over the stage-wise decision vector, filled once at build
time from ``MpcConfig.bounds``; the symbolic problem does not depend on them, so a bound can change
between two steps by writing new numbers into those vectors. A controller that can do this implements
:class:`AdjustableBounds`; any other controller (PID, do-mpc, the cascade, the robust NMPC) cannot, and
the operator's request is refused.

Whether the new bound lies within the model's physical limits is the caller's check (it knows the
``ModelSpec``): a bound may only be tightened inside ``spec.state_bounds``/``spec.input_bounds``.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

from controllers.interfaces import FloatArray
from plant_models.errors import ScenarioError
from plant_models.spec import ModelSpec

__all__ = ["AdjustableBounds", "set_stage_bounds"]


@runtime_checkable
class AdjustableBounds(Protocol):
    """A controller whose state and input bounds can change between two steps."""

    def set_bounds(self, name: str, lo: float, hi: float) -> tuple[float, float]:
        """Bound state or input ``name`` to ``[lo, hi]`` from the next step on; return the old bounds.

        Raises:
            ScenarioError: ``name`` is neither a state nor an input, or ``[lo, hi]`` admits no value.
        """
        ...


def set_stage_bounds(
    lbw: FloatArray,
    ubw: FloatArray,
    spec: ModelSpec,
    name: str,
    bounds: tuple[float, float],
    *,
    horizon: int,
    block: int,
    input_offset: int,
) -> tuple[float, float]:
    """Write ``bounds`` into ``lbw``/``ubw`` (in place) wherever stage-wise vector ``w`` holds ``name``.

    ``w`` is ``horizon`` blocks of ``block`` entries, each starting with the state ``x_k`` and holding the
    input ``u_k`` at ``input_offset``, then the terminal state. The state of stage 0 is pinned to the
    estimate and stays unbounded (a slightly out-of-bounds estimate must not make the problem infeasible).

    Returns:
        The old bounds (those of the first stage that holds ``name``).

    Raises:
        ScenarioError: an unknown name, or bounds that admit no value.
    """
    lo, hi = bounds
    if not (lo <= hi) or lo == math.inf or hi == -math.inf:
        raise ScenarioError(f"bounds.{name}: [{lo}, {hi}] admits no value")
    if name in spec.states:
        j = spec.states.index(name)
        slots = [k * block + j for k in range(1, horizon + 1)]
    elif name in spec.inputs:
        j = spec.inputs.index(name)
        slots = [k * block + input_offset + j for k in range(horizon)]
    else:
        raise ScenarioError(f"{name!r}: model {spec.name!r} has no such state or input")
    old = (float(lbw[slots[0]]), float(ubw[slots[0]]))
    lbw[slots] = lo
    ubw[slots] = hi
    return old
