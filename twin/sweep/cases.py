"""A sweep expanded into cases: each case is a complete scenario text, so it is a pure function of the sweep.

Settings come from the grid (every combination, in the order the keys are written) or from a random
search (drawn from the sweep's seed). Plant ``j`` gets the seed ``SeedSequence([seed, j])`` for every
setting — common random numbers: settings are compared on the same plants, so a difference between
settings is the controller's, not the draw's. The plant's true parameters, process and sensor noise
follow from that seed (:mod:`twin.plant_setup`); its initial state is drawn here (stream 7 of the seed,
separate from the plant's own streams 0-2) and written into the case's scenario.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import tomllib
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import tomli_w

from plant_models.errors import ScenarioError
from twin.scenario import Scenario, parse_scenario
from twin.sweep.config import RandomRange, SweepConfig, Value

__all__ = [
    "Case",
    "base_data",
    "bounded_states",
    "expand_cases",
    "plant_seed",
    "scenario_for",
    "setting_cases",
    "setting_label",
    "settings_of",
]

_X0_STREAM = 7


@dataclass(frozen=True)
class Case:
    """One closed-loop batch of a sweep.

    Attributes:
        key: sha256 of the case's scenario text (what identifies a finished case on resume).
        setting_index: index of the setting in the sweep's order.
        setting: the setting's label (``controller.horizon=10, objective.delta_u.inp=0.1``).
        settings: varied key -> value.
        plant: index of the Monte Carlo plant (0 .. plants-1).
        seed: the plant's seed.
        scenario_text: the complete scenario of this case (TOML).
        budget_s: the compute budget the scenario gives (not enforced in a sweep: only counted).
        limits: the bounds a true state is judged against: the base scenario's (with the overrides), not
            the setting's — a setting that tightens a bound is a back-off of the controller, and it is
            judged by the plant's real limit.
    """

    key: str
    setting_index: int
    setting: str
    settings: Mapping[str, Value]
    plant: int
    seed: int
    scenario_text: str
    budget_s: float | None = None
    limits: Mapping[str, tuple[float, float]] = field(default_factory=dict)


def plant_seed(sweep_seed: int, plant: int) -> int:
    """The seed of Monte Carlo plant ``plant`` (the same for every setting)."""
    return int(np.random.SeedSequence([sweep_seed, plant]).generate_state(1, dtype=np.uint32)[0])


def setting_label(settings: Mapping[str, Value]) -> str:
    """``key=value, ...`` in the sweep's key order (``nominal`` when nothing is varied)."""
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "nominal"


def _draw(rng: np.random.Generator, spec: Value | RandomRange | tuple[Value, ...]) -> Value:
    if isinstance(spec, RandomRange):
        if spec.integer:
            return int(rng.integers(int(spec.low), int(spec.high) + 1))
        if spec.log:
            return float(math.exp(rng.uniform(math.log(spec.low), math.log(spec.high))))
        return float(rng.uniform(spec.low, spec.high))
    assert isinstance(spec, tuple)
    return spec[int(rng.integers(len(spec)))]


def settings_of(config: SweepConfig) -> list[dict[str, Value]]:
    """The sweep's settings in order: the grid's combinations, or the random search's draws."""
    if config.search == "grid":
        lists = [v for v in config.vary.values() if isinstance(v, tuple)]
        return [dict(zip(config.vary, combo, strict=True)) for combo in itertools.product(*lists)]
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 1]))
    return [{k: _draw(rng, v) for k, v in config.vary.items()} for _ in range(config.trials)]


def _set(data: MutableMapping[str, Any], dotted: str, value: Any, origin: str) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, MutableMapping):
            raise ScenarioError(f'{origin}."{dotted}": {".".join(parents[: i + 1])} is not a table in the scenario')
        node = child
    node[leaf] = value


def _case_data(config: SweepConfig, base: Mapping[str, Any], settings: Mapping[str, Value], seed: int) -> dict:
    data = copy.deepcopy(dict(base))
    for key, value in config.override.items():
        _set(data, key, value, "override")
    for key, value in settings.items():
        _set(data, key, value, "vary")
    unc = config.uncertainty
    plant = data.setdefault("plant", {})
    if not isinstance(plant, MutableMapping):
        raise ScenarioError("scenario: [plant] is not a table")
    plant["seed"] = seed
    plant["uncertainty"] = dict(unc.params) if isinstance(unc.params, Mapping) else unc.params
    if unc.process_noise:
        plant["process_noise"] = dict(unc.process_noise)
    if unc.sensors is not None:
        plant["sensors"] = copy.deepcopy(dict(unc.sensors))
    if unc.x0:
        rng = np.random.default_rng([seed, _X0_STREAM])
        x0 = dict(plant.get("x0", {}))
        for name in sorted(unc.x0):  # sorted: the draw does not depend on the file's key order
            centre = x0.get(name)
            if centre is None:
                raise ScenarioError(f"uncertainty.x0.{name}: the base scenario's [plant] x0 does not set {name}")
            x0[name] = float(centre) * (1.0 + unc.x0[name] * rng.uniform(-1.0, 1.0))
        plant["x0"] = x0
    # Compute budgets would make results depend on the machine's load (a late step falls back): a
    # sweep records compute times but does not enforce the budget (docs/sweeps.md).
    controller = data.get("controller")
    if isinstance(controller, MutableMapping):
        controller.pop("budget_s", None)
    return data


def bounded_states(scenario: Scenario, states: Sequence[str]) -> dict[str, tuple[float, float]]:
    """State name -> (lo, hi): the scenario's ``[cascade.bounds]`` on the plant's ``states``, overridden by
    its ``[bounds]``."""
    cascade = dict(scenario.cascade.state_bounds) if scenario.cascade is not None else {}
    merged = {**cascade, **scenario.controller.mpc.state_bounds}
    return {k: v for k, v in merged.items() if k in states}


def limits_of(config: SweepConfig, base: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """The real limits of the study: the bounded states of the base scenario with the overrides applied.

    Raises:
        ScenarioError: the overrides make an invalid scenario.
    """
    data = copy.deepcopy(dict(base))
    for key, value in config.override.items():
        _set(data, key, value, "override")
    try:
        scenario = parse_scenario(tomli_w.dumps(data), "<base>")
    except ScenarioError as exc:
        raise ScenarioError(f"override: {exc}") from None
    return bounded_states(scenario, scenario.spec().states)


def _check_kpi(config: SweepConfig, scenario: Scenario, bounded: Mapping[str, tuple[float, float]]) -> None:
    states = scenario.spec().states
    for name in config.kpi.main.split("*"):
        if name != "objective" and name not in states:
            raise ScenarioError(f"kpi.main: {name!r} is not a state of model {scenario.model!r} nor objective")
    for name in config.kpi.constraints:
        if name not in bounded:
            known = ", ".join(bounded) or "none"
            raise ScenarioError(f"kpi.constraints: {name!r} has no bounds in the base scenario (bounded: {known})")


def scenario_for(config: SweepConfig, settings: Mapping[str, Value], name: str) -> str:
    """The base scenario with the sweep's overrides and ``settings`` applied, as TOML (for ``bioimp run``).

    Unlike a case, its plant is the base scenario's and its compute budget is kept.

    Raises:
        ScenarioError: the result is not a valid scenario.
    """
    data = tomllib.loads(config.scenario_text)
    data["name"] = name
    for key, value in {**config.override, **settings}.items():
        _set(data, key, value, "vary")
    text = tomli_w.dumps(data)
    parse_scenario(text, "<best>")
    return text


def _budget(config: SweepConfig, base: Mapping[str, Any], settings: Mapping[str, Value]) -> float | None:
    """``controller.budget_s`` of the setting (the base's unless overridden or varied)."""
    budget = {**config.override, **settings}.get("controller.budget_s", base.get("controller", {}).get("budget_s"))
    return float(budget) if isinstance(budget, int | float) and not isinstance(budget, bool) else None


def base_data(config: SweepConfig) -> dict[str, Any]:
    """The base scenario as TOML data.

    Raises:
        ScenarioError: it is not valid TOML.
    """
    try:
        return tomllib.loads(config.scenario_text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"scenario: {config.scenario_path}: invalid TOML: {exc}") from None


def setting_cases(
    config: SweepConfig,
    base: Mapping[str, Any],
    index: int,
    settings: Mapping[str, Value],
    limits: Mapping[str, tuple[float, float]],
) -> list[Case]:
    """The cases of one setting (one per Monte Carlo plant), the setting validated as a scenario.

    Raises:
        ScenarioError: the setting or an override makes an invalid scenario (the message names the
            setting and the scenario key).
    """
    label = setting_label(settings)
    budget = _budget(config, base, settings)
    cases = []
    for plant in range(config.plants):
        seed = plant_seed(config.seed, plant)
        text = tomli_w.dumps(_case_data(config, base, settings, seed))
        if plant == 0:  # one validation per setting: the plants differ only in seed and x0
            where = f"vary: {label}" if settings else "override"
            try:
                scenario = parse_scenario(text, "<case>")
            except ScenarioError as exc:
                raise ScenarioError(f"{where}: {exc}") from None
            _check_kpi(config, scenario, limits)
        key = hashlib.sha256(text.encode()).hexdigest()
        cases.append(Case(key, index, label, settings, plant, seed, text, budget, dict(limits)))
    return cases


def corner_settings(config: SweepConfig) -> list[dict[str, Value]]:
    """The lowest and the highest setting of every key (what an adaptive search validates up front)."""

    def pick(spec: tuple[Value, ...] | RandomRange, end: int) -> Value:
        if isinstance(spec, RandomRange):
            value = spec.low if end == 0 else spec.high
            return int(value) if spec.integer else value
        return spec[end]

    return [{k: pick(v, end) for k, v in config.vary.items()} for end in (0, -1)]


def expand_cases(config: SweepConfig) -> list[Case]:
    """All cases of a grid or random sweep: settings × plants, every setting validated as a scenario.

    For an adaptive (optuna) sweep the settings are not known in advance: this validates its corner
    settings and returns no cases (:mod:`twin.sweep.bayes` makes them trial by trial).

    Raises:
        ScenarioError: a setting or override makes an invalid scenario (the message names the setting
            and the scenario key), or the base scenario is invalid.
    """
    base = base_data(config)
    limits = limits_of(config, base)
    if config.search == "optuna":
        for settings in corner_settings(config):
            setting_cases(replace(config, plants=1), base, 0, settings, limits)
        return []
    cases = []
    for index, settings in enumerate(settings_of(config)):
        cases.extend(setting_cases(config, base, index, settings, limits))
    return cases


def canonical(settings: Mapping[str, Value]) -> str:
    """The settings as canonical JSON (a column of the results table)."""
    return json.dumps(dict(settings), sort_keys=True)
