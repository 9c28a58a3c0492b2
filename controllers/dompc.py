"""do-mpc as a reference controller: the MpcConfig problem, set up the way do-mpc's examples do it.

This is the yardstick our own NMPC (``controllers.nmpc``) is measured against, for correctness and for
speed, so it is deliberately a plain, idiomatic do-mpc setup (as in do-mpc's ``batch_reactor`` example)
rather than a tuned one:

* a continuous-time ``do_mpc.model.Model`` with one ``_x`` / ``_u`` / ``_p`` variable per ModelSpec
  name and ``set_rhs`` from ``spec.f`` evaluated on those symbols;
* orthogonal collocation on finite elements (Radau, ``collocation_deg`` / ``collocation_ni``);
* ``lterm`` / ``mterm`` / ``rterm`` from the config's ``Objective``; state and input bounds;
* the model's parameters as do-mpc ``_p`` (uncertain) variables, fed through do-mpc's low-level
  ``get_p_template`` / ``set_p_fun`` API so the estimate passed to ``step`` is used at every step,
  and optionally several scenarios per parameter for robust multi-stage MPC (``n_robust``).

Differences from our NMPC that are do-mpc's, kept on purpose: collocation instead of RK4 multiple
shooting (``MpcConfig.substeps`` is not used), the Lagrange term evaluated at the start of every
interval and the Mayer term at the end, no shifting of the warm start (do-mpc re-uses the previous
solution as it is), state bounds not applied to the terminal state (do-mpc's ``use_terminal_bounds``
defaults to off), and ``u_-1`` for the move penalty is the input do-mpc itself returned last.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import casadi as ca
import numpy as np

from controllers.config import MpcConfig, scenario_overrides
from controllers.interfaces import ControlStep, FloatArray
from controllers.ipopt import single_threaded_blas
from plant_models.errors import ModelError, ScenarioError
from plant_models.spec import ModelSpec

with warnings.catch_warnings():
    # do-mpc announces its optional extras (ONNX, OPC UA, approximate MPC) at import time.
    warnings.simplefilter("ignore", UserWarning)
    import do_mpc

__all__ = ["DoMpcController"]


class DoMpcController:
    """The problem of an ``MpcConfig`` solved by do-mpc's ``MPC`` class, behind ``Controller``.

    Built once (model, collocation NLP and solver); each :meth:`step` sets the parameter values and
    calls ``mpc.make_step(x)``, which warm-starts from the previous solution.

    On solver failure do-mpc still returns the last iterate's first input; this controller returns it
    too, with ``status`` set to IPOPT's return status (e.g. ``"Maximum_Iterations_Exceeded"``) instead of
    ``"ok"`` and ``fallback=None``: choosing a fallback is the loop's business. If that iterate is not
    finite, the next step re-initialises the guess from the state it is given (do-mpc would otherwise
    warm-start from NaN forever).

    Attributes:
        name: ``"do-mpc"``.
        spec: the model.
        config: the problem.
        mpc: the underlying ``do_mpc.controller.MPC`` (set up), for do-mpc's own plots and data.
        n_scenarios: number of parameter combinations given to do-mpc (1 without ``uncertainty``).
    """

    name = "do-mpc"

    def __init__(
        self,
        spec: ModelSpec,
        config: MpcConfig,
        p: FloatArray | None = None,
        *,
        collocation_degree: int = 2,
        collocation_elements: int = 2,
        uncertainty: Mapping[str, Sequence[float]] | None = None,
        n_robust: int = 0,
    ) -> None:
        """Build the do-mpc model and controller for ``spec`` and ``config``.

        Args:
            spec: the plant model.
            config: horizon, sample period, objective, bounds, IPOPT iteration limit and tolerance.
            p: parameter values for the first step's scenario template (default: the model's nominal
                parameters); every ``step`` overrides them with the ``p`` it is given.
            collocation_degree: degree of the Radau collocation polynomial (do-mpc ``collocation_deg``).
            collocation_elements: finite elements per control interval (do-mpc ``collocation_ni``).
            uncertainty: optional parameter name → candidate values for robust multi-stage MPC, as in
                do-mpc's ``set_uncertainty_values``: every combination is a scenario and the first
                combination is the nominal one. These values are absolute and fixed; parameters not
                named here follow the ``p`` given to ``step``.
            n_robust: robust horizon (do-mpc ``n_robust``): number of stages over which the scenario
                tree branches. With 0, only the nominal scenario is used.

        Raises:
            ScenarioError: the config names unknown signals, a weight or setting is invalid, or the
                terminal objective depends on the inputs (do-mpc's ``mterm`` cannot).
        """
        config.check_against(spec)
        if collocation_degree < 1 or collocation_elements < 1:
            raise ScenarioError("collocation_degree and collocation_elements must be >= 1")
        if n_robust < 0:
            raise ScenarioError(f"n_robust must be >= 0, got {n_robust}")
        for name, weight in config.objective.delta_u.items():
            # do-mpc only warns (and sleeps 2 s) about this; a negative move weight rewards chattering.
            if weight < 0:
                raise ScenarioError(f"objective.delta_u.{name}: weight must be >= 0, got {weight}")
        self.spec = spec
        self.config = config
        self._uncertain = scenario_overrides(spec, uncertainty or {})
        self.n_scenarios = len(self._uncertain)
        p0 = np.asarray(spec.vector("params", spec.nominal_params) if p is None else p, dtype=float)
        self._check_length("p", p0, spec.np)

        single_threaded_blas()  # the reference runs as our Ipopt solvers do (controllers.ipopt)
        model = self._build_model()
        self.mpc = mpc = do_mpc.controller.MPC(model)
        settings = mpc.settings
        settings.n_horizon = config.horizon
        settings.t_step = config.dt_model(spec)
        settings.n_robust = n_robust
        settings.open_loop = False
        settings.state_discretization = "collocation"
        settings.collocation_type = "radau"
        settings.collocation_deg = collocation_degree
        settings.collocation_ni = collocation_elements
        # The plan is read from mpc.opt_x_num_unscaled after each solve; keeping every step's full
        # solution and multipliers in mpc.data would only grow memory over long or repeated runs.
        settings.store_full_solution = False
        settings.store_lagr_multiplier = False
        settings.nlpsol_opts = {
            "ipopt.linear_solver": "mumps",
            "ipopt.max_iter": config.max_iter,
            "ipopt.tol": config.tol,
        }
        settings.supress_ipopt_output()  # sic: do-mpc's spelling

        x_sym = model.x.cat
        u_sym = model.u.cat
        p_sym = model.p.cat if spec.np else ca.SX(0, 1)
        lterm = self._weighted(dict(config.objective.stage), x_sym, u_sym, p_sym)
        mterm = self._weighted(dict(config.objective.terminal), x_sym, u_sym, p_sym)
        if spec.nu and ca.depends_on(mterm, u_sym):
            raise ScenarioError(
                "objective.terminal: uses a model output that depends on the inputs; "
                "do-mpc's terminal cost may only depend on states and parameters"
            )
        mpc.set_objective(lterm=lterm, mterm=mterm)
        # Always call set_rterm: without it do-mpc warns and sleeps for 2 s during setup().
        mpc.set_rterm(**{n: float(config.objective.delta_u.get(n, 0.0)) for n in spec.inputs})

        xb, ub = config.bounds(spec)
        for kind, names, bounds in (("_x", spec.states, xb), ("_u", spec.inputs, ub)):
            for n, (lo, hi) in zip(names, bounds, strict=True):
                if math.isfinite(lo):
                    mpc.bounds["lower", kind, n] = lo
                if math.isfinite(hi):
                    mpc.bounds["upper", kind, n] = hi

        if spec.np:
            # Low-level scenario API: one template, refilled in place before every make_step, which
            # calls p_fun(t) each time. set_uncertainty_values would freeze the values at setup.
            self._p_template = mpc.get_p_template(self.n_scenarios)
            self._fill_p(p0)
            template = self._p_template
            mpc.set_p_fun(lambda t_now: template)
        with warnings.catch_warnings():
            # do-mpc's setup calls numpy on casadi DMs (np.any in its bound check), which casadi 3.8
            # answers with a once-per-process FutureWarning about its legacy numpy mode.
            warnings.filterwarnings("ignore", message=r"\s*casadi: a numpy function", category=FutureWarning)
            mpc.setup()

        self._u_safe = np.array([spec.input_safe[n] for n in spec.inputs], dtype=float)
        self._needs_guess = True

    def _build_model(self) -> Any:
        """A continuous-time do-mpc model with the spec's states, inputs and parameters by name."""
        spec = self.spec
        model = do_mpc.model.Model("continuous", "SX")
        x = ca.vertcat(*(model.set_variable("_x", n) for n in spec.states))
        u = ca.vertcat(*(model.set_variable("_u", n) for n in spec.inputs))
        p = ca.vertcat(*(model.set_variable("_p", n) for n in spec.params)) if spec.np else ca.SX(0, 1)
        xdot = spec.f(x, u, p)
        for i, n in enumerate(spec.states):
            model.set_rhs(n, xdot[i])
        model.setup()
        return model

    def _weighted(self, weights: dict[str, float], x: ca.SX, u: ca.SX, p: ca.SX) -> ca.SX:
        """``sum_i w_i * z_i`` over states (by name) and model outputs (through ``spec.h``)."""
        spec = self.spec
        y = spec.h(x, u, p)
        expr = ca.SX(0)
        for name, w in weights.items():
            signal = x[spec.states.index(name)] if name in spec.states else y[spec.outputs.index(name)]
            expr += w * signal
        return expr

    def _fill_p(self, p: FloatArray) -> None:
        """Write ``p`` into every scenario, overridden by that scenario's uncertain values."""
        for i, overrides in enumerate(self._uncertain):
            values = p.copy()
            for idx, value in overrides:
                values[idx] = value
            self._p_template["_p", i] = ca.DM(values)

    @staticmethod
    def _check_length(what: str, v: FloatArray, n: int) -> None:
        if v.shape != (n,):
            raise ModelError(f"{what} must be a vector of {n} values, got shape {v.shape}")

    def step(self, t_s: float, x: FloatArray, p: FloatArray) -> ControlStep:
        """Solve from state ``x`` with parameters ``p`` (model units) and return the first input.

        Args:
            t_s: current plant time in seconds (kept in do-mpc's ``t0`` for its data log).
            x: state estimate, in the spec's state order.
            p: parameter estimate, in the spec's parameter order.

        Returns:
            The first input, ``status`` (``"ok"`` or IPOPT's return status), the wall time of
            ``make_step`` and the nominal scenario's plan: ``predicted_x`` (N+1, nx) at the interval
            boundaries and ``planned_u`` (N, nu).

        Raises:
            ModelError: ``x`` or ``p`` has the wrong length.
        """
        spec, mpc = self.spec, self.mpc
        x = np.asarray(x, dtype=float).ravel()
        p = np.asarray(p, dtype=float).ravel()
        self._check_length("x", x, spec.nx)
        self._check_length("p", p, spec.np)
        if spec.np:
            self._fill_p(p)
        mpc.t0 = float(t_s / spec.seconds_per_time_unit)
        if self._needs_guess:
            # do-mpc's initial guess: x and u held constant over the horizon. Before the first step
            # the plant sits in fail-safe, so the safe inputs are also u_-1 for the move penalty.
            mpc.x0 = x
            if not mpc.flags["initial_run"]:
                mpc.u0 = self._u_safe
            mpc.set_initial_guess()
            if mpc.flags["initial_run"]:
                mpc.lam_x_num = ca.DM.zeros(mpc.n_opt_x)
                mpc.lam_g_num = ca.DM.zeros(mpc.n_opt_lagr)
            self._needs_guess = False

        start = time.perf_counter()
        u = np.asarray(mpc.make_step(x.reshape(-1, 1)), dtype=float).ravel()
        compute_s = time.perf_counter() - start

        stats = mpc.solver_stats
        status = "ok" if stats.get("success", False) else str(stats.get("return_status", "unknown"))
        sol = mpc.opt_x_num_unscaled
        n = self.config.horizon
        predicted_x = np.hstack([np.asarray(sol["_x", k, 0, -1]) for k in range(n + 1)]).T
        planned_u = np.hstack([np.asarray(sol["_u", k, 0]) for k in range(n)]).T
        if not np.all(np.isfinite(u)):
            self._needs_guess = True
        return ControlStep(
            u=u,
            status=status,
            compute_s=compute_s,
            predicted_x=predicted_x.astype(float),
            planned_u=planned_u.astype(float),
        )
