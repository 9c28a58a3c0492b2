"""The fit specification (``bioimp fit SPEC.toml``): which model, which parameters, which noise.

A TOML file in, a validated frozen :class:`FitSpec` out; every error is one line naming the key
(:class:`~plant_models.errors.ScenarioError`, exit 2), read with the scenario reader's strict tables::

    model = "cho_fedbatch"

    [estimate]                       # the parameters to estimate (shared by every batch)
    mu_m   = { bounds = [0.01, 0.08] }                        # guess: the model's nominal value
    q_P    = { bounds = [5e-10, 5e-9], guess = 1.5e-9 }
    Y_XGlc = { bounds = [5e7, 5e8], prior = { mean = 1.7e8, sd = 0.5e8 } }
    K_Glc  = { bounds = [-1, 1], scale = "linear" }            # log unless a bound is <= 0

    [fixed]                          # other parameters: nominal unless given here
    T_spread = 4.6

    [noise]                          # one entry per signal used (a model state or output)
    Xv  = { rel_sigma = 0.05 }                                # sd = hypot(sigma, rel_sigma * |y|)
    mAb = { rel_sigma = 0.03, sigma = 0.5 }
    Lac = { rel_sigma = 0.03, estimate = true }               # the sd's scale is estimated

    [initial]                        # per-batch initial states estimated (default: every measured state)
    estimate = ["Xv", "Glc"]

    [solver]
    starts = 3          # initial guesses: the guess, then draws around it
    seed = 0
    spread = 0.3        # half-width of the draws (log parameters: ±30 %)
    max_interval = 4.0  # longest shooting interval (model time units)
    substeps = 4        # RK4 steps per shooting interval
    max_iter = 300
    tol = 1e-8
    expand = false      # true: SX evaluation, ~3x faster solves, tens of seconds to build
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from plant_models.errors import ModelError, ScenarioError
from plant_models.registry import resolve_model
from plant_models.spec import ModelSpec

__all__ = ["EstimatedParam", "FitSpec", "NoiseModel", "SolverOptions", "load_fit_spec", "parse_fit_spec"]

Scale = Literal["log", "linear"]


@dataclass(frozen=True)
class EstimatedParam:
    """One estimated parameter.

    Attributes:
        name: the model parameter.
        lower, upper: bounds (model units).
        guess: the first initial guess and the reference of the scaling.
        scale: ``log`` (estimate ln(p/guess): positive parameters spanning decades) or ``linear``
            (estimate (p - guess)/|guess|).
        prior_mean, prior_sd: optional Gaussian prior on p (model units).
    """

    name: str
    lower: float
    upper: float
    guess: float
    scale: Scale = "log"
    prior_mean: float | None = None
    prior_sd: float | None = None


@dataclass(frozen=True)
class NoiseModel:
    """Measurement noise of one signal: sd = hypot(sigma, rel_sigma * |value|).

    With ``estimate`` the shape is kept and its scale (one factor per signal) is estimated from the
    residuals (maximum likelihood: the factor is the weighted residuals' RMS).
    """

    sigma: float = 0.0
    rel_sigma: float = 0.0
    estimate: bool = False


@dataclass(frozen=True)
class SolverOptions:
    """Multiple shooting and ipopt settings (see the module docstring)."""

    starts: int = 3
    seed: int = 0
    spread: float = 0.3
    max_interval: float = 4.0
    substeps: int = 4
    max_iter: int = 300
    tol: float = 1e-8
    expand: bool = False


@dataclass(frozen=True)
class FitSpec:
    """A validated fit specification.

    Attributes:
        model: model name (built in or ``package.module:function``).
        estimated: the estimated parameters, in file order.
        fixed: overrides of the nominal values of other parameters.
        noise: signal -> noise model; only these signals are fitted.
        initial: states whose per-batch initial value is estimated.
        solver: numerical options.
        source: where the spec came from (for messages and fit.json).
    """

    model: str
    estimated: tuple[EstimatedParam, ...]
    fixed: Mapping[str, float]
    noise: Mapping[str, NoiseModel]
    initial: tuple[str, ...]
    solver: SolverOptions = field(default_factory=SolverOptions)
    source: str = "<fit spec>"

    def spec(self) -> ModelSpec:
        """The model."""
        return resolve_model(self.model)

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the estimated parameters."""
        return tuple(e.name for e in self.estimated)

    def base_params(self, spec: ModelSpec) -> dict[str, float]:
        """Every parameter: nominal, then ``[fixed]``, then each estimated parameter's guess."""
        return {**spec.nominal_params, **self.fixed, **{e.name: e.guess for e in self.estimated}}


def _number(key: str, value: object, *, positive: bool = False, nonneg: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ScenarioError(f"{key}: expected a finite number, got {value!r}")
    value = float(value)
    if positive and value <= 0:
        raise ScenarioError(f"{key}: must be > 0, got {value}")
    if nonneg and value < 0:
        raise ScenarioError(f"{key}: must be >= 0, got {value}")
    return value


def _integer(key: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ScenarioError(f"{key}: expected an integer >= {minimum}, got {value!r}")
    return value


def _boolean(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ScenarioError(f"{key}: expected true or false, got {value!r}")
    return value


def _table(key: str, value: object, allowed: tuple[str, ...]) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise ScenarioError(f"{key}: expected a table, got {value!r}")
    for k in value:
        if k not in allowed:
            raise ScenarioError(f"{key}.{k}: unknown key (known: {', '.join(allowed)})")
    return value


def _estimated(name: str, raw: object, spec: ModelSpec, fixed: Mapping[str, float]) -> EstimatedParam:
    key = f"estimate.{name}"
    if name not in spec.params:
        raise ScenarioError(f"{key}: model {spec.name!r} has no parameter {name!r}")
    t = _table(key, raw, ("bounds", "guess", "scale", "prior"))
    bounds = t.get("bounds")
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise ScenarioError(f"{key}.bounds: expected [min, max], got {bounds!r}")
    lo, hi = (_number(f"{key}.bounds", b) for b in bounds)
    if not lo < hi:
        raise ScenarioError(f"{key}.bounds: min {lo} must be < max {hi}")
    guess = _number(f"{key}.guess", t["guess"]) if "guess" in t else float(fixed.get(name, spec.nominal_params[name]))
    if not lo <= guess <= hi:
        raise ScenarioError(f"{key}.guess: {guess} is outside the bounds [{lo}, {hi}]")
    default_scale: Scale = "log" if lo > 0 else "linear"
    scale = t.get("scale", default_scale)
    if scale not in ("log", "linear"):
        raise ScenarioError(f'{key}.scale: expected "log" or "linear", got {scale!r}')
    if scale == "log" and lo <= 0:
        raise ScenarioError(f"{key}.scale: log scaling needs a positive lower bound, got {lo}")
    if scale == "linear" and guess == 0:
        raise ScenarioError(f"{key}.guess: linear scaling is relative to the guess; give a non-zero guess")
    mean = sd = None
    if "prior" in t:
        prior = _table(f"{key}.prior", t["prior"], ("mean", "sd"))
        if "mean" not in prior or "sd" not in prior:
            raise ScenarioError(f"{key}.prior: give mean and sd")
        mean = _number(f"{key}.prior.mean", prior["mean"])
        sd = _number(f"{key}.prior.sd", prior["sd"], positive=True)
    return EstimatedParam(name, lo, hi, guess, "log" if scale == "log" else "linear", mean, sd)


def parse_fit_spec(text: str, origin: str = "<fit spec>") -> FitSpec:
    """Validate fit-spec TOML text.

    Raises:
        ScenarioError: one line naming the offending key (or the TOML syntax error).
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{origin}: invalid TOML: {exc}") from None
    root = _table("", data, ("model", "estimate", "fixed", "noise", "initial", "solver", "description"))
    model = root.get("model")
    if not isinstance(model, str):
        raise ScenarioError(f"{origin}: model: required, a model name")
    try:
        spec = resolve_model(model)
    except ModelError as exc:
        raise ScenarioError(f"model: {exc}") from None

    fixed_raw = _table("fixed", root.get("fixed", {}), spec.params)
    fixed = {k: _number(f"fixed.{k}", v) for k, v in fixed_raw.items()}
    est_raw = root.get("estimate", {})
    if not isinstance(est_raw, Mapping) or not est_raw:
        raise ScenarioError("estimate: give at least one parameter to estimate")
    estimated = tuple(_estimated(n, v, spec, fixed) for n, v in est_raw.items())
    both = sorted(set(fixed) & {e.name for e in estimated})
    if both:
        raise ScenarioError(f"fixed.{both[0]}: the parameter is also estimated")

    signals = tuple(dict.fromkeys(spec.states + spec.outputs))
    noise_raw = root.get("noise", {})
    if not isinstance(noise_raw, Mapping) or not noise_raw:
        raise ScenarioError("noise: give the noise model of at least one measured signal")
    noise: dict[str, NoiseModel] = {}
    for name, raw in noise_raw.items():
        key = f"noise.{name}"
        if name not in signals:
            raise ScenarioError(f"{key}: model {spec.name!r} has no state or output {name!r}")
        t = _table(key, raw, ("sigma", "rel_sigma", "estimate"))
        sigma = _number(f"{key}.sigma", t.get("sigma", 0.0), nonneg=True)
        rel = _number(f"{key}.rel_sigma", t.get("rel_sigma", 0.0), nonneg=True)
        estimate = t.get("estimate", False)
        if not isinstance(estimate, bool):
            raise ScenarioError(f"{key}.estimate: expected true or false, got {estimate!r}")
        if sigma == 0 and rel == 0:
            raise ScenarioError(f"{key}: give sigma and/or rel_sigma (with estimate = true: the shape)")
        noise[name] = NoiseModel(sigma, rel, estimate)

    init_t = _table("initial", root.get("initial", {}), ("estimate",))
    measured_states = tuple(n for n in spec.states if n in noise)
    initial_raw = init_t.get("estimate", list(measured_states))
    if not isinstance(initial_raw, list) or not all(isinstance(s, str) for s in initial_raw):
        raise ScenarioError(f"initial.estimate: expected a list of state names, got {initial_raw!r}")
    for s in initial_raw:
        if s not in spec.states:
            raise ScenarioError(f"initial.estimate: model {spec.name!r} has no state {s!r}")
    initial = tuple(n for n in spec.states if n in initial_raw)

    s_t = _table("solver", root.get("solver", {}), tuple(SolverOptions.__dataclass_fields__))
    d = SolverOptions()
    solver = SolverOptions(
        starts=_integer("solver.starts", s_t.get("starts", d.starts), 1),
        seed=_integer("solver.seed", s_t.get("seed", d.seed), 0),
        spread=_number("solver.spread", s_t.get("spread", d.spread), nonneg=True),
        max_interval=_number("solver.max_interval", s_t.get("max_interval", d.max_interval), positive=True),
        substeps=_integer("solver.substeps", s_t.get("substeps", d.substeps), 1),
        max_iter=_integer("solver.max_iter", s_t.get("max_iter", d.max_iter), 1),
        tol=_number("solver.tol", s_t.get("tol", d.tol), positive=True),
        expand=_boolean("solver.expand", s_t.get("expand", d.expand)),
    )
    return FitSpec(
        model=model,
        estimated=estimated,
        fixed=MappingProxyType(fixed),
        noise=MappingProxyType(noise),
        initial=initial,
        solver=solver,
        source=origin,
    )


def load_fit_spec(path: str | Path) -> FitSpec:
    """Read and validate a fit spec file.

    Raises:
        ScenarioError: the file cannot be read or is invalid.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read fit spec: {exc}") from None
    try:
        return parse_fit_spec(text, str(path))
    except ScenarioError as exc:
        msg = str(exc)
        raise ScenarioError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
