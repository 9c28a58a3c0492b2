"""Configuration of an optimal-control problem, shared by every MPC implementation.

One ``MpcConfig`` describes the problem (horizon, sample period, objective, bounds); the solver path
(ours or do-mpc's) is a separate choice, so the same config can be solved by both and compared.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from plant_models.errors import ScenarioError
from plant_models.spec import Bounds, ModelSpec

#: Ipopt started from a previous primal-dual solution (a shifted plan, the last re-plan): start the barrier
#: small and keep the iterate near the previous active set instead of pushing it into the interior.
IPOPT_WARM_START: Mapping[str, object] = MappingProxyType(
    {
        "warm_start_init_point": "yes",
        "warm_start_bound_push": 1e-9,
        "warm_start_bound_frac": 1e-9,
        "warm_start_slack_bound_frac": 1e-9,
        "warm_start_slack_bound_push": 1e-9,
        "warm_start_mult_bound_push": 1e-9,
        "mu_init": 1e-6,
    }
)

SOLVERS = ("ipopt", "sqp-hpipm")
MODES = ("converged", "rti")


def _empty() -> Mapping[str, float]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Objective:
    """An economic objective to **minimise**, built from linear weights on named signals.

    ``J = sum_k sum_i stage[i] * z_i(x_k) + sum_i terminal[i] * z_i(x_N)
          + sum_k sum_j delta_u[j] * (u_j,k - u_j,k-1)^2``

    where ``z`` are states or model outputs by name and ``u_-1`` is the input applied before the
    horizon (do-mpc's ``lterm``, ``mterm`` and ``rterm``). Maximising product is a negative weight.
    """

    stage: Mapping[str, float] = field(default_factory=_empty)
    terminal: Mapping[str, float] = field(default_factory=_empty)
    delta_u: Mapping[str, float] = field(default_factory=_empty)


@dataclass(frozen=True)
class MpcConfig:
    """A validated NMPC problem.

    Attributes:
        horizon: number of control intervals N.
        step_s: sample period (seconds of plant time); one control interval.
        objective: what to minimise.
        state_bounds: bounds per state (override the model's; unnamed states keep the model's).
        input_bounds: bounds per input (override the model's).
        substeps: integrator substeps (RK4) per interval for our multiple-shooting discretisation.
        max_iter: solver iteration limit per step.
        tol: solver convergence tolerance (Ipopt's ``tol``; for ``sqp-hpipm`` the largest step,
            in the infinity norm, at which the SQP iteration counts as converged).
        solver: ``"ipopt"`` (general sparse interior point) or ``"sqp-hpipm"`` (our SQP on the
            stage-wise structure, each QP solved by HPIPM's Riccati-based interior point).
        mode: ``"converged"`` (iterate to ``tol``) or ``"rti"`` (real-time iteration: one SQP step
            per sample, linearised before the measurement arrives; ``sqp-hpipm`` only).
        budget_s: compute budget per step (wall seconds); when a solve would exceed it the
            controller returns its best iterate or the shifted previous plan and says so.
        compiled: generate C for the SQP's derivative functions, compile it once with the system C
            compiler and cache it on disk; falls back to the interpreted functions without one.
        cache_dir: where compiled functions are cached (default ``$BIOIMP_CACHE_DIR`` or
            ``~/.cache/bioimp``).
    """

    horizon: int = 20
    step_s: float = 3600.0
    objective: Objective = field(default_factory=Objective)
    state_bounds: Mapping[str, Bounds] = field(default_factory=lambda: MappingProxyType({}))
    input_bounds: Mapping[str, Bounds] = field(default_factory=lambda: MappingProxyType({}))
    substeps: int = 2
    max_iter: int = 200
    tol: float = 1e-8
    solver: str = "ipopt"
    mode: str = "converged"
    budget_s: float | None = None
    compiled: bool = False
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ScenarioError(f"controller.horizon must be >= 1, got {self.horizon}")
        if not (math.isfinite(self.step_s) and self.step_s > 0):
            raise ScenarioError(f"controller.step_s must be a positive number, got {self.step_s}")
        if self.substeps < 1:
            raise ScenarioError(f"controller.substeps must be >= 1, got {self.substeps}")
        if self.max_iter < 1 or not (math.isfinite(self.tol) and self.tol > 0):
            raise ScenarioError("controller.max_iter must be >= 1 and controller.tol a positive number")
        if self.solver not in SOLVERS:
            raise ScenarioError(f"controller.solver: unknown solver {self.solver!r} (known: {', '.join(SOLVERS)})")
        if self.mode not in MODES:
            raise ScenarioError(f"controller.mode: unknown mode {self.mode!r} (known: {', '.join(MODES)})")
        if self.mode == "rti" and self.solver != "sqp-hpipm":
            raise ScenarioError(f"controller.mode: 'rti' needs solver 'sqp-hpipm', got {self.solver!r}")
        if self.budget_s is not None and not (math.isfinite(self.budget_s) and self.budget_s > 0):
            raise ScenarioError(f"controller.budget_s must be a positive number, got {self.budget_s}")
        if self.compiled and self.solver != "sqp-hpipm":
            raise ScenarioError(f"controller.compiled: needs solver 'sqp-hpipm', got {self.solver!r}")
        for bounds in (self.state_bounds, self.input_bounds):
            for name, (lo, hi) in bounds.items():
                if not lo <= hi or lo == math.inf or hi == -math.inf:
                    raise ScenarioError(f"bounds.{name}: [{lo}, {hi}] admits no value")
        for part in ("stage", "terminal", "delta_u"):
            for name, weight in getattr(self.objective, part).items():
                if not math.isfinite(weight):
                    raise ScenarioError(f"objective.{part}.{name}: weight must be finite, got {weight}")

    def check_against(self, spec: ModelSpec) -> None:
        """Check that every name this config uses exists in ``spec``.

        Raises:
            ScenarioError: naming the first unknown key.
        """
        signals = set(spec.states) | set(spec.outputs)
        for part in ("stage", "terminal"):
            for name in getattr(self.objective, part):
                if name not in signals:
                    raise ScenarioError(f"objective.{part}.{name}: model {spec.name!r} has no such signal")
        for name in self.objective.delta_u:
            if name not in spec.inputs:
                raise ScenarioError(f"objective.delta_u.{name}: model {spec.name!r} has no such input")
        for name in self.state_bounds:
            if name not in spec.states:
                raise ScenarioError(f"bounds.{name}: model {spec.name!r} has no such state")
        for name in self.input_bounds:
            if name not in spec.inputs:
                raise ScenarioError(f"bounds.{name}: model {spec.name!r} has no such input")

    def bounds(self, spec: ModelSpec) -> tuple[list[Bounds], list[Bounds]]:
        """Effective (state, input) bounds in vector order: the model's, overridden by this config."""
        xb = [self.state_bounds.get(n, spec.state_bounds.get(n, (-math.inf, math.inf))) for n in spec.states]
        ub = [self.input_bounds.get(n, spec.input_bounds[n]) for n in spec.inputs]
        return xb, ub

    def dt_model(self, spec: ModelSpec) -> float:
        """The sample period in model time units."""
        return self.step_s / spec.seconds_per_time_unit


def dompc_example_config() -> MpcConfig:
    """The do-mpc batch_reactor example's problem (horizon 20, 1 h, -P_s stage and terminal, Δu 1.0)."""
    return MpcConfig(
        horizon=20,
        step_s=3600.0,
        objective=Objective(
            stage=MappingProxyType({"P_s": -1.0}),
            terminal=MappingProxyType({"P_s": -1.0}),
            delta_u=MappingProxyType({"inp": 1.0}),
        ),
        state_bounds=MappingProxyType(
            {"X_s": (0.0, 3.7), "S_s": (-0.01, math.inf), "P_s": (0.0, 3.0)}
        ),
        input_bounds=MappingProxyType({"inp": (0.0, 0.2)}),
    )


def scenario_overrides(
    spec: ModelSpec, uncertainty: Mapping[str, Sequence[float]]
) -> list[tuple[tuple[int, float], ...]]:
    """Scenarios as ``(param index, value)`` overrides, in ``itertools.product`` order (do-mpc's).

    Raises:
        ScenarioError: an unknown parameter name or an empty list of values.
    """
    for name, values in uncertainty.items():
        if name not in spec.params:
            raise ScenarioError(f"uncertainty.{name}: model {spec.name!r} has no such parameter")
        if len(values) == 0:
            raise ScenarioError(f"uncertainty.{name}: needs at least one value (the nominal one)")
    names = list(uncertainty)
    return [
        tuple((spec.params.index(n), float(v)) for n, v in zip(names, combo, strict=True))
        for combo in itertools.product(*(uncertainty[n] for n in names))
    ]
