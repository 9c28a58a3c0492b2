"""cho_fedbatch: equations, parameter fidelity, mass balances, mechanisms, a 14-day batch."""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from plant_models import ModelError
from plant_models.cho_fedbatch import PARAMETERS, PLAIN_XING, TEMPERATURE_SETS, cho_fedbatch
from plant_models.spec import ModelSpec
from twin.simulator import Simulator, SimulatorConfig

DATA = Path(__file__).parents[1] / "data"
Array = np.ndarray


def _table(name: str) -> list[dict[str, str]]:
    with (DATA / name).open() as fh:
        return list(csv.DictReader(line for line in fh if not line.startswith("#")))


def _p(spec: ModelSpec, **overrides: float) -> Array:
    return np.array(spec.vector("params", {**spec.nominal_params, **overrides}))


def _f(spec: ModelSpec, x: dict[str, float], F: float, T: float, p: Array | None = None) -> dict[str, float]:
    xdot = np.asarray(spec.f(spec.vector("states", x), [F, T], _p(spec) if p is None else p)).ravel()
    return dict(zip(spec.states, xdot, strict=True))


# Reference symbol (tests/data/cho_xing2010_parameters.csv) -> our parameter name and unit factor.
FIDELITY = {
    "mu_m": ("mu_m", 1.0), "mu_dm": ("mu_dm", 1.0), "K_S": ("K_Glc", 1.0), "K_G": ("K_Gln", 1.0),
    "KI_L": ("KI_Lac", 1.0), "KI_A": ("KI_Amm", 1.0), "KD_L": ("KD_Lac", 1.0), "KD_A": ("KD_Amm", 1.0),
    "m_S": ("m_Glc", 1.0), "a_1": ("a_1", 1.0), "a_2": ("a_2", 1.0), "d_G": ("d_Gln", 1.0),
    "r_A": ("r_Amm", 1.0), "Y_XS": ("Y_XGlc", 1.0), "Y_XG": ("Y_XGln", 1.0), "Y_AG": ("Y_AmmGln", 1.0),
    "q_O2": ("q_O2", 1.0), "Q_mAb": ("q_P", 1e3),  # g/cell/h -> mg/cell/h
    "q_lac_max": ("q_Lac_max", 1.0), "glc_lac_uptake_threshold": ("K_shift", 1.0),
    "T_opt": ("T_opt", 1.0), "oxycaloric": ("dH_O2", 1.0),  # kJ/mol = J/mmol
}


def test_parameters_match_the_reference_table() -> None:
    ref = {row["symbol"]: float(row["value"]) for row in _table("cho_xing2010_parameters.csv")}
    nominal = cho_fedbatch().nominal_params
    for symbol, (ours, factor) in FIDELITY.items():
        assert nominal[ours] == pytest.approx(ref[symbol] * factor, rel=1e-12), symbol
    # Xing's fixed lactate yield is not a parameter here: the overflow yield equals it at 30 mM glucose.
    y30 = nominal["Y_LacGlc_max"] * 30.0 / (30.0 + nominal["K_ov"])
    assert y30 == pytest.approx(ref["Y_LS"], rel=1e-3)
    assert TEMPERATURE_SETS["carcano"]["T_spread"] == ref["T_spread"]
    assert len({n for n, _ in FIDELITY.values()}) == len(FIDELITY)  # one-to-one


def test_every_parameter_has_a_source_and_assumptions_are_flagged() -> None:
    spec = cho_fedbatch()
    assert set(PARAMETERS) <= set(spec.params)
    assert all(p.source and p.unit == spec.units[n] for n, p in PARAMETERS.items())
    flagged = {n for n, p in PARAMETERS.items() if p.assumption}
    assert {"K_ov", "K_LacUp", "K_AmmRm", "T_spread", "k_qP"} <= flagged
    assert not flagged & {n for n, _ in FIDELITY.values()}  # a published value is never marked ours


@pytest.mark.parametrize("row", _table("cho_temperature_factor.csv"), ids=lambda r: r["T_degC"])
def test_carcano_growth_factor_matches_the_reference_table(row: dict[str, str]) -> None:
    spec = cho_fedbatch("carcano")
    x = dict(spec.x0)
    T, factor = float(row["T_degC"]), float(row["factor"])
    # With F = 0 and no death at this state's tiny Lac x Amm, dXv/dt/Xv is µ(T) (up to death, cancelled).
    p_no_death = _p(spec, mu_dm=0.0)
    mu = _f(spec, x, 0.0, T, p_no_death)["Xv"] / x["Xv"]
    mu_opt = _f(spec, x, 0.0, spec.nominal_params["T_opt"], p_no_death)["Xv"] / x["Xv"]
    assert mu / mu_opt == pytest.approx(factor, abs=6e-4)  # the table is rounded to 3 decimals


def test_rhs_matches_hand_computed_equations() -> None:
    spec = cho_fedbatch()
    P = spec.nominal_params
    x = {"Xv": 4.0e9, "Glc": 3.0, "Gln": 1.5, "Lac": 12.0, "Amm": 3.0, "mAb": 400.0, "V": 1.2}
    F, T = 0.004, 33.0
    mu = (P["mu_m"] * 3.0 / (P["K_Glc"] + 3.0) * 1.5 / (P["K_Gln"] + 1.5) * P["KI_Lac"] / (P["KI_Lac"] + 12.0)
          * P["KI_Amm"] / (P["KI_Amm"] + 3.0) * math.exp(-(((T - P["T_opt"]) / P["T_spread"]) ** 2)))
    mu_d = P["mu_dm"] * 12.0 / (P["KD_Lac"] + 12.0) * 3.0 / (P["KD_Amm"] + 3.0)
    q_glc = mu / P["Y_XGlc"] + P["m_Glc"] * 3.0 / (P["K_Glc"] + 3.0)
    q_gln = mu / P["Y_XGln"] + P["a_1"] * 1.5 / (P["a_2"] + 1.5)
    shift = P["K_shift"] ** 4 / (P["K_shift"] ** 4 + 3.0**4)
    q_lac = (P["Y_LacGlc_max"] * 3.0 / (P["K_ov"] + 3.0) * q_glc
             - P["q_Lac_max"] * shift * 12.0 / (P["K_LacUp"] + 12.0))
    q_amm = P["Y_AmmGln"] * mu / P["Y_XGln"] - P["r_Amm"] * 3.0 / (P["K_AmmRm"] + 3.0)
    q_p = P["q_P"] * math.exp(P["k_qP"] * (P["T_ref_qP"] - T))
    D = F / 1.2
    expected = {
        "Xv": (mu - mu_d - D) * 4.0e9,
        "Glc": -q_glc * 4.0e9 + D * (P["Glc_f"] - 3.0),
        "Gln": -q_gln * 4.0e9 - P["d_Gln"] * 1.5 + D * (P["Gln_f"] - 1.5),
        "Lac": q_lac * 4.0e9 - D * 12.0,
        "Amm": q_amm * 4.0e9 + P["d_Gln"] * 1.5 - D * 3.0,
        "mAb": q_p * 4.0e9 - D * 400.0,
        "V": F,
    }
    got = _f(spec, x, F, T)
    for n in spec.states:
        assert got[n] == pytest.approx(expected[n], rel=1e-12), n
    q_met = float(spec.h(spec.vector("states", x), [F, T], _p(spec))[spec.outputs.index("Q_met")])
    assert q_met == pytest.approx(P["dH_O2"] * P["q_O2"] * 4.0e9 * 1.2 / 3600.0, rel=1e-12)
    assert q_met / (4.0e9 * 1.2) == pytest.approx(41e-12, rel=0.01)  # reference §3.2: about 41 pW per cell


def _run(spec: ModelSpec, p: Array, feed: list[tuple[float, float, float]], x0: dict[str, float] | None = None,
         ) -> tuple[Array, Array]:
    """Integrate piecewise-constant (duration h, F, T) segments; return the states after each segment."""
    sim = Simulator(spec, SimulatorConfig(rtol=1e-10, atol=1e-12))
    x = np.array(spec.vector("states", {**spec.x0, **(x0 or {})}))
    xs = [x]
    for dt, F, T in feed:
        x = sim.step(x, np.array([F, T]), p, dt)
        xs.append(x)
    return np.array(xs), np.cumsum([0.0] + [dt * F for dt, F, _ in feed])


def test_volume_is_start_plus_integral_of_feed() -> None:
    spec = cho_fedbatch()
    feed = [(5.0, 0.0, 36.5), (3.0, 0.02, 36.5), (10.0, 0.005, 34.0), (2.5, 0.1, 32.0), (24.0, 0.0, 32.0)]
    xs, fed = _run(spec, _p(spec), feed)
    V = xs[:, spec.states.index("V")]
    np.testing.assert_allclose(V, spec.x0["V"] + fed, rtol=1e-10, atol=0)


def test_dilution_alone_conserves_amounts() -> None:
    """With all kinetics off, the feed only dilutes: cells x volume is invariant, and every dissolved
    species' amount grows by exactly what the feed brings."""
    spec = cho_fedbatch()
    off = dict(mu_m=0.0, mu_dm=0.0, m_Glc=0.0, a_1=0.0, d_Gln=0.0, r_Amm=0.0, q_Lac_max=0.0, q_P=0.0)
    feed = [(4.0, 0.05, 36.5), (6.0, 0.01, 36.5), (2.0, 0.1, 36.5)]
    x0 = {"mAb": 250.0, "Lac": 8.0, "Amm": 2.0}
    xs, fed = _run(spec, _p(spec, **off), feed, x0)
    i = {n: spec.states.index(n) for n in spec.states}
    V = xs[:, i["V"]]
    assert V[-1] > 1.4 * V[0]  # the dilution is not trivial
    amount = lambda n: xs[:, i[n]] * V  # noqa: E731
    np.testing.assert_allclose(amount("Xv"), spec.x0["Xv"] * V[0], rtol=1e-9)
    np.testing.assert_allclose(amount("mAb"), 250.0 * V[0], rtol=1e-9)
    np.testing.assert_allclose(amount("Lac"), 8.0 * V[0], rtol=1e-9)
    np.testing.assert_allclose(amount("Amm"), 2.0 * V[0], rtol=1e-9)
    P = spec.nominal_params
    np.testing.assert_allclose(amount("Glc"), spec.x0["Glc"] * V[0] + P["Glc_f"] * fed, rtol=1e-9)
    np.testing.assert_allclose(amount("Gln"), spec.x0["Gln"] * V[0] + P["Gln_f"] * fed, rtol=1e-9)


def test_lactate_overflow_rises_with_glucose_and_reverses_when_glucose_runs_low() -> None:
    spec = cho_fedbatch()
    base = {"Xv": 5e9, "Gln": 2.0, "Lac": 20.0, "Amm": 3.0, "mAb": 0.0, "V": 1.0}

    def per_glucose(glc: float) -> float:
        d = _f(spec, {**base, "Glc": glc}, 0.0, 36.5, _p(spec, q_Lac_max=0.0))
        return -d["Lac"] / d["Glc"]  # mol lactate made per mol glucose taken up

    yields = [per_glucose(g) for g in (2.0, 10.0, 30.0, 60.0)]
    assert all(a < b for a, b in itertools.pairwise(yields))
    assert yields[0] < 0.25 and yields[2] == pytest.approx(1.23, rel=1e-3) and yields[-1] < 2.0
    # Glucose nearly gone: the cells take lactate up; at glucose-rich conditions they make it.
    assert _f(spec, {**base, "Glc": 0.1}, 0.0, 36.5)["Lac"] < -0.5  # mM/h
    assert _f(spec, {**base, "Glc": 20.0}, 0.0, 36.5)["Lac"] > 0.5


def test_temperature_shift_raises_specific_productivity_and_lowers_growth() -> None:
    spec = cho_fedbatch()
    x = {"Xv": 3e9, "Glc": 5.0, "Gln": 2.0, "Lac": 10.0, "Amm": 2.0, "mAb": 300.0, "V": 1.2}
    hot, cold = _f(spec, x, 0.0, 36.5), _f(spec, x, 0.0, 32.0)
    assert cold["mAb"] / hot["mAb"] > 1.5
    assert cold["Xv"] < 0.5 * hot["Xv"]
    # Over a batch: the same culture shifted to 32 degC on day 5 grows less and makes more per cell.
    p = _p(spec)
    day5 = [(24.0, 0.5 / 336, 36.5)] * 5
    runs = {T: _run(spec, p, [*day5, *[(24.0, 0.5 / 336, T)] * 4])[0] for T in (36.5, 32.0)}
    i_x, i_p, i_v = (spec.states.index(n) for n in ("Xv", "mAb", "V"))

    def after_shift(xs: Array) -> tuple[float, float]:
        cells = xs[5:, i_x] * xs[5:, i_v]
        made = xs[-1, i_p] * xs[-1, i_v] - xs[5, i_p] * xs[5, i_v]  # mg
        ivc = float(np.sum((cells[1:] + cells[:-1]) / 2 * 24.0))  # integral of viable cells (cell h)
        return made / ivc, cells[-1] / cells[0]

    qp_hot, growth_hot = after_shift(runs[36.5])
    qp_cold, growth_cold = after_shift(runs[32.0])
    assert qp_cold > 1.4 * qp_hot and growth_cold < growth_hot


def test_plain_xing_overrides_make_lactate_a_fixed_share_of_glucose() -> None:
    spec = cho_fedbatch()
    p = _p(spec, **PLAIN_XING)
    for glc in (0.05, 0.5, 5.0, 50.0):
        x = {"Xv": 5e9, "Glc": glc, "Gln": 2.0, "Lac": 20.0, "Amm": 3.0, "mAb": 0.0, "V": 1.0}
        d = _f(spec, x, 0.0, 32.0, p)
        assert -d["Lac"] / d["Glc"] == pytest.approx(1.23, rel=1e-6)


def test_no_temperature_set_is_the_plain_structure() -> None:
    spec = cho_fedbatch("none")
    x = dict(spec.x0)
    for T in (30.0, 33.0, 39.0):
        for n in ("Xv", "mAb", "Glc"):
            assert _f(spec, x, 0.0, T)[n] == pytest.approx(_f(spec, x, 0.0, 36.5)[n], rel=1e-6)


def test_fourteen_day_batch_stays_finite_and_physical() -> None:
    spec = cho_fedbatch()
    for shift in (False, True):
        feed = [(1.0, 0.5 / 336, 32.0 if shift and k >= 168 else 36.5) for k in range(336)]
        xs, _ = _run(spec, _p(spec), feed)
        assert np.all(np.isfinite(xs))
        assert np.min(xs) >= -1e-9  # concentrations, cells and volume stay non-negative (solver tolerance)
        final = dict(zip(spec.states, xs[-1], strict=True))
        assert final["V"] == pytest.approx(1.5, rel=1e-9)
        assert final["Xv"] > spec.x0["Xv"] and final["mAb"] > 0.0
        assert np.max(xs[:, spec.states.index("Xv")]) < 5e10  # below any CHO culture ever reported


def test_starved_culture_cannot_drive_substrates_negative() -> None:
    """At zero glucose, glutamine, lactate and ammonia no rate may be negative (Xing's plain maintenance
    and ammonia-removal terms would be)."""
    spec = cho_fedbatch()
    x = {"Xv": 1e10, "Glc": 0.0, "Gln": 0.0, "Lac": 0.0, "Amm": 0.0, "mAb": 100.0, "V": 1.0}
    d = _f(spec, x, 0.0, 36.5)
    assert min(d["Glc"], d["Gln"], d["Lac"], d["Amm"]) >= 0.0


@pytest.mark.parametrize("temperature_set", sorted(TEMPERATURE_SETS))
@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_default_state_is_inside_bounds_and_the_model_finite_there(temperature_set: str, scale: float) -> None:
    spec = cho_fedbatch(temperature_set, scale)
    for n in spec.states:
        lo, hi = spec.state_bounds[n]
        assert lo <= spec.x0[n] <= hi, n
    assert spec.input_safe["F"] == 0.0 and spec.input_bounds["F"] == (0.0, 0.1 * scale)
    xdot = np.asarray(spec.f(spec.vector("states", spec.x0), spec.vector("inputs", spec.input_safe), _p(spec)))
    assert np.all(np.isfinite(xdot))


def test_bad_factory_arguments_are_refused() -> None:
    with pytest.raises(ModelError, match="unknown temperature set 'hot'"):
        cho_fedbatch("hot")
    with pytest.raises(ModelError, match="scale must be a positive volume"):
        cho_fedbatch(scale=0.0)
