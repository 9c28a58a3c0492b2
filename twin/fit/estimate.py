"""Fit shared parameters and per-batch initial states to several batches, with confidence from the
Fisher information.

After the best of several starts, the uncertainty is the linearised (Gauss-Newton) one: with ``J`` the
Jacobian of the weighted residuals ``(y_model - y)/σ`` with respect to θ and the estimated initial
states (single shooting through the same RK4 steps, at the optimum), the Fisher information is
``F = JᵀJ`` (+ ``(dp/dθ / sd)²`` per prior) and the covariance ``F⁻¹``; the parameters' block of it
accounts for the initial states being estimated too. Log-scaled parameters get the asymmetric interval
``p̂·exp(±1.96 s)`` (s the standard error of ln p), linear ones ``p̂ ± 1.96 SE``.

A parameter is flagged practically non-identifiable when its 95 % interval is huge (half-width over
100 % of the estimate: ``1.96·SE/p̂ > 1``) or its correlation with another estimated parameter exceeds
0.95 in absolute value. A direction the data do not see at all (an eigenvalue of F below 1e-12 of the
largest) is given a finite but enormous variance rather than failing the inversion.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from plant_models.errors import SolverFailed
from plant_models.spec import ModelSpec
from twin.fit.data import BatchData
from twin.fit.problem import BatchGrid, Problem, StartResult, build_grid
from twin.fit.spec import FitSpec
from twin.interfaces import FloatArray
from twin.simulator import Simulator, SimulatorConfig

__all__ = ["BatchFit", "FitResult", "ParamEstimate", "fit_batches", "simulate_batch"]

Z95 = 1.959963984540054
CORR_LIMIT = 0.95
_EIG_FLOOR = 1e-12
_SIGMA_ITERATIONS = 6


@dataclass(frozen=True)
class ParamEstimate:
    """One estimated parameter with its uncertainty (model units)."""

    name: str
    unit: str
    estimate: float
    se: float
    ci95: tuple[float, float]
    scale: str
    identifiable: bool
    flags: tuple[str, ...]


@dataclass(frozen=True)
class BatchFit:
    """One batch's fit: its grid, fitted trajectory and 95 % prediction band at the nodes.

    Attributes:
        batch: the data.
        grid: the shooting grid.
        y: fitted signals at the nodes (``nsig x (N+1)``); ``band``: half-width of the 95 % prediction
            band (parameter and initial-state uncertainty plus measurement noise).
        x0: estimated (or fixed) initial state; ``x0_se``: standard errors (0 where fixed).
        residuals: signal -> weighted residuals (model − data)/σ at its samples, in data order.
    """

    batch: BatchData
    grid: BatchGrid
    y: FloatArray
    band: FloatArray
    x0: dict[str, float]
    x0_se: dict[str, float]
    residuals: dict[str, FloatArray]


@dataclass(frozen=True)
class FitResult:
    """Everything ``bioimp fit`` reports."""

    spec: ModelSpec
    fit: FitSpec
    signals: tuple[str, ...]
    params: tuple[ParamEstimate, ...]
    all_params: dict[str, float]
    correlation: FloatArray
    objective: float
    n_data: int
    starts: tuple[StartResult, ...]
    best_start: int
    success: bool
    noise_factor: dict[str, float]
    batches: tuple[BatchFit, ...]
    theta_cov: FloatArray = field(repr=False)

    @property
    def estimates(self) -> dict[str, float]:
        """Estimated parameter name -> value."""
        return {p.name: p.estimate for p in self.params}


def _xscale(spec: ModelSpec, batches: Sequence[BatchData]) -> FloatArray:
    """A typical magnitude per state (initial values and data), so scaled node states are O(1)."""
    out = np.ones(spec.nx)
    for i, s in enumerate(spec.states):
        values = [abs(b.x0[s]) for b in batches] + [abs(x.value) for b in batches for x in b.samples.get(s, ())]
        m = max(values, default=0.0)
        out[i] = m if m > 0 else 1.0
    return out


def _initial_nodes(
    problem: Problem, grid: BatchGrid, batch: BatchData, x0: FloatArray, p: FloatArray
) -> FloatArray:
    """Node states to start from: measured states from the data (interpolated), the rest simulated."""
    spec = problem.spec
    nodes = np.zeros((spec.nx, grid.n + 1))
    nodes[:, 0] = x0
    x = x0.copy()
    for k in range(grid.n):
        x = np.asarray(problem.step(x, grid.u[k], p, grid.tau[k + 1] - grid.tau[k], grid.jump[k]), dtype=float).ravel()
        if not np.all(np.isfinite(x)):
            x = nodes[:, k].copy()
        nodes[:, k + 1] = np.maximum(x, [spec.state_bounds[s][0] for s in spec.states])
    for i, s in enumerate(spec.states):
        data = batch.samples.get(s, ())
        if len(data) >= 2:
            nodes[i, :] = np.interp(grid.tau, [d.t for d in data], [d.value for d in data])
    return nodes


def _starts(problem: Problem, fit: FitSpec, grids: Sequence[BatchGrid], batches: Sequence[BatchData],
            x0s: Sequence[FloatArray], pbase: FloatArray) -> list[tuple[FloatArray, list[FloatArray]]]:
    rng = np.random.default_rng(fit.solver.seed)
    out = []
    for k in range(fit.solver.starts):
        theta0 = np.zeros(problem.ntheta)
        if k > 0:
            theta0 = rng.uniform(-fit.solver.spread, fit.solver.spread, problem.ntheta)
        theta0 = np.clip(theta0, problem.theta_lo, problem.theta_hi)
        p = problem.params(theta0, pbase)
        nodes = [_initial_nodes(problem, g, b, x0, p) for g, b, x0 in zip(grids, batches, x0s, strict=True)]
        out.append((theta0, nodes))
    return out


def _reweighted(grid: BatchGrid, signals: tuple[str, ...], factor: Mapping[str, float]) -> BatchGrid:
    w = grid.weight / np.array([factor[s] for s in signals])[:, None]
    return BatchGrid(grid.tau, grid.u, grid.jump, grid.y, w, grid.sample_idx)


def fit_batches(
    fit: FitSpec, batches: Sequence[BatchData], spec: ModelSpec | None = None, problem: Problem | None = None
) -> FitResult:
    """Estimate the parameters of ``fit`` from ``batches``.

    Args:
        fit: the fit specification.
        batches: the data.
        spec: the model (resolved from ``fit`` when None).
        problem: a built :class:`Problem` to reuse (repeated fits of the same shape build nothing new).

    Raises:
        SolverFailed: the statistics cannot be evaluated at the solution (non-finite Jacobian).
    """
    spec = spec or fit.spec()
    problem = problem or Problem(fit, spec)
    signals = problem.signals
    grids = [build_grid(b, fit, spec, signals) for b in batches]
    pbase = np.array(spec.vector("params", fit.base_params(spec)))
    xscale = _xscale(spec, batches)
    x0s = [np.array(spec.vector("states", b.x0)) for b in batches]
    results = problem.solve(grids, pbase, xscale, x0s, _starts(problem, fit, grids, batches, x0s, pbase))
    ok = [r for r in results if r.success]
    best = min(ok or results, key=lambda r: r.objective)
    factor = dict.fromkeys(signals, 1.0)
    if any(fit.noise[s].estimate for s in signals):
        # Maximum likelihood of each estimated σ scale given the fit, then refit with the new weights,
        # until the scales settle.
        for _ in range(_SIGMA_ITERATIONS):
            fitted = [_residuals(problem, g, best.w, xscale, pbase, i, grids) for i, g in enumerate(grids)]
            changed = False
            for s_i, s in enumerate(signals):
                if not fit.noise[s].estimate:
                    continue
                r = np.concatenate([f[s_i] for f in fitted])
                new = factor[s] * math.sqrt(float(np.mean(r**2))) if r.size else factor[s]
                changed |= abs(new / factor[s] - 1.0) > 1e-3
                factor[s] = new
            if not changed:
                break
            grids = [_reweighted(build_grid(b, fit, spec, signals), signals, factor) for b in batches]
            nodes = problem.nodes_of(best.w, grids, xscale)
            again = problem.solve(grids, pbase, xscale, x0s, [(best.theta, nodes)])[0]
            best = StartResult(best.start, again.status, again.success, again.objective, again.iterations,
                               again.theta, again.w)
    theta = best.theta
    nodes = problem.nodes_of(best.w, grids, xscale)
    nz = len(problem.x0_idx)
    nb = len(grids)
    nxi = problem.ntheta + nb * nz
    jac_rows: list[FloatArray] = []
    shots = []
    for b, (gr, x0, nd) in enumerate(zip(grids, x0s, nodes, strict=True)):
        z0 = nd[problem.x0_idx, 0] / xscale[problem.x0_idx]
        fun = problem.shooting(gr.n)
        ymat, jac, _ = fun(theta, z0, x0, pbase, xscale, np.diff(gr.tau), gr.u.T, gr.jump.T)
        ymat, jac = np.asarray(ymat, dtype=float), np.asarray(jac, dtype=float)
        if not (np.all(np.isfinite(ymat)) and np.all(np.isfinite(jac))):
            raise SolverFailed(f"batch {batches[b].name}: the model is not finite along the fitted trajectory")
        full = np.zeros((jac.shape[0], nxi))
        full[:, : problem.ntheta] = jac[:, : problem.ntheta]
        cols = slice(problem.ntheta + b * nz, problem.ntheta + (b + 1) * nz)
        full[:, cols] = jac[:, problem.ntheta :]
        wflat = gr.weight.ravel(order="F")
        jac_rows.append(wflat[:, None] * full)
        shots.append((ymat, full, z0, cols))
    jw = np.vstack(jac_rows)
    fim = jw.T @ jw
    dp = problem.dp_dtheta(theta)
    for j, e in enumerate(fit.estimated):
        if e.prior_sd is not None:
            fim[j, j] += (dp[j] / e.prior_sd) ** 2
    eigval, eigvec = np.linalg.eigh(fim)
    floor = max(float(eigval.max()), 1e-300) * _EIG_FLOOR
    cov = (eigvec / np.maximum(eigval, floor)) @ eigvec.T
    tcov = cov[: problem.ntheta, : problem.ntheta]
    s_theta = np.sqrt(np.maximum(np.diag(tcov), 0.0))
    denom = np.outer(s_theta, s_theta)
    corr = np.divide(tcov, denom, out=np.eye(problem.ntheta), where=denom > 0)
    p_full = problem.params(theta, pbase)
    estimates = []
    for j, e in enumerate(fit.estimated):
        value = float(p_full[problem.est_idx[j]])
        if e.scale == "log":
            se = value * float(s_theta[j])
            ci = (value * math.exp(-Z95 * s_theta[j]), value * math.exp(min(Z95 * s_theta[j], 700.0)))
        else:
            se = abs(e.guess) * float(s_theta[j])
            ci = (value - Z95 * se, value + Z95 * se)
        flags = []
        if not Z95 * se < abs(value):
            flags.append("huge CI (95 % half-width > 100 % of the estimate)")
        for k, other in enumerate(fit.estimated):
            if k != j and abs(corr[j, k]) > CORR_LIMIT:
                flags.append(f"|corr| with {other.name} = {abs(corr[j, k]):.3f} > {CORR_LIMIT}")
        estimates.append(ParamEstimate(e.name, spec.units[e.name], value, se, ci, e.scale, not flags, tuple(flags)))
    batch_fits = []
    for b, (gr, batch, (ymat, full, _, cols)) in enumerate(zip(grids, batches, shots, strict=True)):
        idx = list(range(problem.ntheta)) + list(range(cols.start, cols.stop))
        sub = cov[np.ix_(idx, idx)]
        jsub = full[:, idx]
        var_param = np.einsum("ij,jk,ik->i", jsub, sub, jsub).reshape(ymat.shape, order="F")
        noise_sd = np.array(
            [[factor[s] * math.hypot(fit.noise[s].sigma, fit.noise[s].rel_sigma * abs(v)) for v in ymat[i]]
             for i, s in enumerate(signals)]
        )
        band = Z95 * np.sqrt(np.maximum(var_param, 0.0) + noise_sd**2)
        x0_fit = dict(zip(spec.states, map(float, nodes[b][:, 0]), strict=True))
        x0_se = dict.fromkeys(spec.states, 0.0)
        for k, i in enumerate(problem.x0_idx):
            x0_se[spec.states[i]] = float(xscale[i] * math.sqrt(max(cov[cols.start + k, cols.start + k], 0.0)))
        res = {}
        for i, s in enumerate(signals):
            k_idx = gr.sample_idx[s]
            res[s] = (ymat[i, k_idx] - gr.y[i, k_idx]) * gr.weight[i, k_idx]
        batch_fits.append(BatchFit(batch, gr, ymat, band, x0_fit, x0_se, res))
    n_data = int(sum(np.count_nonzero(g.weight) for g in grids))
    return FitResult(
        spec=spec,
        fit=fit,
        signals=signals,
        params=tuple(estimates),
        all_params=dict(zip(spec.params, map(float, p_full), strict=True)),
        correlation=corr,
        objective=best.objective,
        n_data=n_data,
        starts=tuple(results),
        best_start=best.start,
        success=best.success,
        noise_factor=factor,
        batches=tuple(batch_fits),
        theta_cov=tcov,
    )


def _residuals(problem: Problem, grid: BatchGrid, w: FloatArray, xscale: FloatArray, pbase: FloatArray,
               b: int, grids: Sequence[BatchGrid]) -> list[FloatArray]:
    """Weighted residuals of each signal at the multiple-shooting solution (node values)."""
    nodes = problem.nodes_of(w, grids, xscale)[b]
    p = problem.params(w[: problem.ntheta], pbase)
    out = []
    model_y = np.array(
        [np.asarray(problem.obs(nodes[:, k], grid.u[min(k, grid.n - 1)], p), dtype=float).ravel()
         for k in range(grid.n + 1)]
    ).T
    for i in range(len(problem.signals)):
        mask = grid.weight[i] > 0
        out.append((model_y[i, mask] - grid.y[i, mask]) * grid.weight[i, mask])
    return out


def simulate_batch(spec: ModelSpec, params: Mapping[str, float], batch: BatchData, t_end: float | None = None,
                   x0: Mapping[str, float] | None = None) -> tuple[FloatArray, FloatArray]:
    """Simulate a batch with CVODES (tight tolerances): its inputs, sample removals and initial state.

    Returns:
        (times, states ``len(times) x nx``) at 0, every input change, removal and sample time, and ``t_end``.
    """
    sim = Simulator(spec, SimulatorConfig(1e-9, 1e-9))
    p = np.array(spec.vector("params", {**spec.nominal_params, **params}))
    end = batch.t_end if t_end is None else t_end
    times = sorted({0.0, end, *(float(t) for t in batch.input_t if 0 < t < end),
                    *(t for t, _, _ in batch.removals if t < end),
                    *(s.t for ss in batch.samples.values() for s in ss if s.t < end)})
    x = np.array(spec.vector("states", {**batch.x0, **(x0 or {})}))
    out = [x.copy()]
    for a, b in itertools.pairwise(times):
        for t, state, amount in batch.removals:
            if abs(t - a) < 1e-6:
                x[spec.states.index(state)] -= amount
        x = sim.step(x, batch.inputs_at(a), p, b - a)
        out.append(x.copy())
    return np.array(times), np.array(out)
