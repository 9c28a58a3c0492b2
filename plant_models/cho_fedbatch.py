"""CHO fed-batch culture: Xing et al. 2010 structure with lactate overflow/shift and a temperature effect.

Core (Xing, Bishop, Leister & Li 2010, Biotechnol Prog 26:208-219, parameter set as in the kkiviat
``of-compartments`` implementation; 11 of its values are confirmed by Kornecki & Strube 2018, Table 2):
Monod growth on glucose and glutamine with non-competitive lactate and ammonia inhibition, death driven
by lactate and ammonia, glucose maintenance, glutamine maintenance and degradation, ammonia removal.

Two mechanisms the plain structure lacks (without them feeding has almost nothing to control):

1. Lactate overflow and the metabolic shift (after Möller et al. 2020, Comput Chem Eng 134:106693, as
   implemented in Culture Biosciences' ``insilicho``): the lactate made per glucose consumed rises with
   the glucose concentration, and cells consume lactate once glucose falls below about 0.5 mM.
2. Temperature (Gaussian growth factor of Carcano 2010 as used by Möller et al. 2020; specific
   productivity rising as temperature falls): a parameter set, see ``TEMPERATURE_SETS``.

Units: cells/L, mM (mmol/L), mg/L, L, h, °C. Every value, its source and whether it is our assumption is
in ``PARAMETERS`` (and docs/models.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType

import casadi as ca

from plant_models.errors import ModelError
from plant_models.parameters import Param, spec_params
from plant_models.spec import ModelSpec, Symbols, build_spec
from plant_models.uncertainty import ParameterUncertainty

XING = "Xing et al. 2010 (kkiviat/of-compartments parameter set)"
XING_KS = XING + "; = Kornecki & Strube 2018 Table 2"
MOLLER = "Möller et al. 2020 (insilicho parameters.py)"

# Hill exponent of the smoothed glucose switch for lactate uptake. Möller et al. switch uptake on with a
# step at Glc < 0.5 mM; a step is not differentiable (NMPC, CVODES), so we use K^n/(K^n + Glc^n) with
# n = 4: 94 % on at 0.25 mM, 50 % at 0.5 mM, 6 % at 1 mM. Our choice, not a published value.
SHIFT_HILL = 4

PARAMETERS: Mapping[str, Param] = MappingProxyType(
    {
        # --- Xing et al. 2010 growth, death, uptake and by-product kinetics ---
        "mu_m": Param(0.029, "1/h", XING),
        "mu_dm": Param(0.016, "1/h", XING),
        "K_Glc": Param(0.084, "mM", XING),
        "K_Gln": Param(0.047, "mM", XING_KS),
        "KI_Lac": Param(43.0, "mM", XING_KS),
        "KI_Amm": Param(6.51, "mM", XING_KS),
        "KD_Lac": Param(45.8, "mM", XING_KS),
        "KD_Amm": Param(6.51, "mM", XING_KS),
        "m_Glc": Param(6.92e-11, "mmol/cell/h", XING_KS),
        "a_1": Param(3.2e-12, "mmol/cell/h", XING_KS),
        "a_2": Param(2.1, "mM", XING_KS),
        "d_Gln": Param(7.2e-3, "1/h", XING),
        "r_Amm": Param(6.3e-12, "mmol/cell/h", XING_KS),
        "Y_XGlc": Param(1.69e8, "cells/mmol", XING),
        "Y_XGln": Param(9.74e8, "cells/mmol", XING_KS),
        "Y_AmmGln": Param(0.67, "mol/mol", XING_KS),
        # --- lactate overflow (production) and shift (uptake) ---
        # Glycolysis makes at most 2 lactate per glucose: the overflow yield saturates there.
        "Y_LacGlc_max": Param(2.0, "mol/mol", "glycolytic stoichiometry (1 glucose -> 2 lactate)"),
        # Chosen so that Y_LacGlc_max * Glc/(Glc + K_ov) equals Xing's fixed Y_LS = 1.23 at 30 mM glucose
        # (a glucose-rich medium): K_ov = 30 * (2/1.23 - 1). The saturating form is ours.
        "K_ov": Param(18.78, "mM", "derived from Xing's Y_LS = 1.23 at 30 mM glucose", assumption=True),
        "q_Lac_max": Param(2.0e-10, "mmol/cell/h", MOLLER + " (q_lac_max = 0.2e-9)"),
        "K_shift": Param(0.5, "mM", MOLLER + " (uptake on below Glc = 0.5 mM; smoothed, n = 4)"),
        "K_LacUp": Param(1.0, "mM", "half-saturation of lactate uptake (keeps Lac >= 0)", assumption=True),
        # --- positivity gates Xing's equations lack (maintenance and removal would run at zero substrate)
        "K_AmmRm": Param(0.1, "mM", "half-saturation of ammonia removal (keeps Amm >= 0)", assumption=True),
        # --- product ---
        "q_P": Param(1.51e-9, "mg/cell/h", "Kornecki & Strube 2018 Table 2 (Q_mAb = 1.51e-12 g/cell/h)"),
        # --- temperature (the 'moderate' set; see TEMPERATURE_SETS) ---
        "T_opt": Param(36.4, "degC", MOLLER + " (Carcano 2010 Gaussian optimum)"),
        "T_spread": Param(
            4.6, "degC", "growth falls 2.5x at 32 degC (typical reported shift effect)", assumption=True
        ),
        "k_qP": Param(0.112, "1/degC", "q_P rises 1.75x from 37 to 32 degC", assumption=True),
        "T_ref_qP": Param(37.0, "degC", "temperature at which q_P is quoted", assumption=True),
        # --- feed (the fed-batch study) ---
        "Glc_f": Param(300.0, "mM", "feed medium glucose (issue 4 study)"),
        "Gln_f": Param(30.0, "mM", "feed medium glutamine (issue 4 study)"),
        # --- metabolic heat (an output, wired into reactor_thermal by composition) ---
        "q_O2": Param(3.2e-10, "mmol/cell/h", "CHO oxygen uptake (kkiviat/of-compartments code)"),
        "dH_O2": Param(460.0, "J/mmol", "oxycaloric equivalent, Cooney et al. 1969"),
    }
)

# Published temperature effects differ a lot, so the effect is a named parameter set (overrides of
# PARAMETERS). "moderate" is the nominal one.
TEMPERATURE_SETS: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {
        # Growth x0.40 and q_P x1.75 at 32 degC vs 36.5-37 degC: the middle of the commonly reported
        # 2-3x growth drop and 1.5-2x q_P rise (our calibration, flagged as assumptions above).
        "moderate": MappingProxyType({"T_opt": 36.4, "T_spread": 4.6, "k_qP": 0.112}),
        # Carcano (2010) Gaussian as used by Möller et al. 2020: growth x0.14 at 32 degC (strong);
        # Möller give q_P no temperature effect, we keep the moderate q_P rise.
        "carcano": MappingProxyType({"T_opt": 36.4, "T_spread": 3.12, "k_qP": 0.112}),
        # No temperature effect: the plain Xing structure's behaviour (growth factor 1 within 1e-6 over
        # 30-39 degC, q_P constant).
        "none": MappingProxyType({"T_opt": 36.4, "T_spread": 1.0e4, "k_qP": 0.0}),
    }
)

# Parameter overrides that turn both added mechanisms off: lactate in fixed proportion Y_LS = 1.23 to the
# glucose consumed (K_ov tiny, no uptake) and no temperature effect. What remains is the plain Xing
# structure (up to the positivity gates), the one on which issue 4 measured that feeding hardly matters.
PLAIN_XING: Mapping[str, float] = MappingProxyType(
    {"Y_LacGlc_max": 1.23, "K_ov": 1e-9, "q_Lac_max": 0.0, **TEMPERATURE_SETS["none"]}
)

# The simulated plant's "true" culture differs from this model (issue 4 §2): ±20 % on the maximum growth
# rate, the yields and the specific productivity, uniform (see plant_models.uncertainty). The width is
# the order of the spread between published fits of the same structure (e.g. µmax 0.029 vs 0.039 1/h,
# Y_XGlc 1.69e8 vs 3.57e8 cells/mmol in Xing vs Kornecki & Strube); ±20 % is the example width.
CHO_UNCERTAINTY = ParameterUncertainty(
    relative=MappingProxyType({"mu_m": 0.2, "Y_XGlc": 0.2, "Y_XGln": 0.2, "Y_AmmGln": 0.2, "q_P": 0.2})
)

STATE_UNITS: Mapping[str, str] = MappingProxyType(
    {"Xv": "cells/L", "Glc": "mM", "Gln": "mM", "Lac": "mM", "Amm": "mM", "mAb": "mg/L", "V": "L"}
)


def growth_rate(x: Symbols, T: ca.SX, p: Symbols) -> ca.SX:
    """Specific growth rate µ (1/h): Xing's Monod/inhibition product times the temperature factor."""
    monod = x["Glc"] / (p["K_Glc"] + x["Glc"]) * x["Gln"] / (p["K_Gln"] + x["Gln"])
    inhibition = p["KI_Lac"] / (p["KI_Lac"] + x["Lac"]) * p["KI_Amm"] / (p["KI_Amm"] + x["Amm"])
    temperature = ca.exp(-(((T - p["T_opt"]) / p["T_spread"]) ** 2))
    return p["mu_m"] * monod * inhibition * temperature


def death_rate(x: Symbols, p: Symbols) -> ca.SX:
    """Specific death rate µ_d (1/h): Xing's lactate x ammonia driven death."""
    return p["mu_dm"] * x["Lac"] / (p["KD_Lac"] + x["Lac"]) * x["Amm"] / (p["KD_Amm"] + x["Amm"])


def specific_productivity(T: ca.SX, p: Symbols) -> ca.SX:
    """q_P(T) (mg/cell/h): rises exponentially as temperature falls below ``T_ref_qP`` (always > 0)."""
    return p["q_P"] * ca.exp(p["k_qP"] * (p["T_ref_qP"] - T))


def _rhs(x: Symbols, u: Symbols, p: Symbols) -> dict[str, ca.SX]:
    mu = growth_rate(x, u["T"], p)
    mu_d = death_rate(x, p)
    glc_gate = x["Glc"] / (p["K_Glc"] + x["Glc"])
    # Glucose uptake (mmol/cell/h): growth-associated plus maintenance (Xing). Maintenance is gated by
    # the glucose Monod term so that a starved culture cannot drive glucose negative.
    q_glc = mu / p["Y_XGlc"] + p["m_Glc"] * glc_gate
    # Glutamine uptake: growth-associated plus Xing's saturating maintenance a_1 G/(a_2 + G).
    q_gln = mu / p["Y_XGln"] + p["a_1"] * x["Gln"] / (p["a_2"] + x["Gln"])
    # Overflow: lactate per glucose rises with glucose concentration, saturating at 2 mol/mol.
    # Shift: with glucose below ~K_shift, cells take lactate back up.
    lac_yield = p["Y_LacGlc_max"] * x["Glc"] / (p["K_ov"] + x["Glc"])
    shift = p["K_shift"] ** SHIFT_HILL / (p["K_shift"] ** SHIFT_HILL + x["Glc"] ** SHIFT_HILL)
    q_lac = lac_yield * q_glc - p["q_Lac_max"] * shift * x["Lac"] / (p["K_LacUp"] + x["Lac"])
    # Ammonia: from glutamine used for growth and from spontaneous glutamine degradation; removed by the
    # cells (Xing's r_A, gated so it stops when ammonia is gone).
    q_amm = p["Y_AmmGln"] * mu / p["Y_XGln"] - p["r_Amm"] * x["Amm"] / (p["K_AmmRm"] + x["Amm"])
    q_p = specific_productivity(u["T"], p)
    D = u["F"] / x["V"]  # dilution rate (1/h): the feed enlarges the volume and dilutes everything
    X = x["Xv"]
    return {
        "Xv": (mu - mu_d - D) * X,
        "Glc": -q_glc * X + D * (p["Glc_f"] - x["Glc"]),
        "Gln": -q_gln * X - p["d_Gln"] * x["Gln"] + D * (p["Gln_f"] - x["Gln"]),
        "Lac": q_lac * X - D * x["Lac"],
        "Amm": q_amm * X + p["d_Gln"] * x["Gln"] - D * x["Amm"],
        "mAb": q_p * X - D * x["mAb"],
        "V": u["F"],
    }


def _outputs(x: Symbols, u: Symbols, p: Symbols) -> dict[str, tuple[ca.SX, str]]:
    out: dict[str, tuple[ca.SX, str]] = {n: (x[n], unit) for n, unit in STATE_UNITS.items()}
    # Metabolic heat (W): oxygen uptake times the oxycaloric equivalent (~41 pW per cell).
    out["Q_met"] = (p["dH_O2"] * p["q_O2"] * x["Xv"] * x["V"] / 3600.0, "W")
    return out


def cho_fedbatch(temperature_set: str = "moderate", scale: float = 1.0) -> ModelSpec:
    """Build the CHO fed-batch model.

    Args:
        temperature_set: name in ``TEMPERATURE_SETS``.
        scale: working volume in litres at the start. Volume bound and pump range scale with it
            (1.0: 1 L start in a 2 L bench vessel, pump up to 0.1 L/h).

    Raises:
        ModelError: unknown temperature set or non-positive scale.
    """
    if temperature_set not in TEMPERATURE_SETS:
        raise ModelError(f"unknown temperature set {temperature_set!r} (known: {', '.join(TEMPERATURE_SETS)})")
    if not (math.isfinite(scale) and scale > 0):
        raise ModelError(f"scale must be a positive volume in L, got {scale}")
    params = spec_params(PARAMETERS)
    for name, value in TEMPERATURE_SETS[temperature_set].items():
        params[name] = (value, params[name][1])
    conc = (0.0, math.inf)
    return build_spec(
        name="cho_fedbatch",
        description=(
            "CHO fed-batch (Xing et al. 2010 structure) with lactate overflow and shift (after Möller et "
            f"al. 2020) and temperature effect ({temperature_set!r} set); feed F and temperature T as inputs."
        ),
        states=STATE_UNITS,
        inputs={"F": "L/h", "T": "degC"},
        params=params,
        rhs=_rhs,
        outputs=_outputs,
        # Seed at 0.3e6 cells/mL in a glucose-rich medium; small lactate/ammonia carried over from the
        # seed train (our assumption: typical, not from Xing).
        x0={"Xv": 3.0e8, "Glc": 30.0, "Gln": 4.0, "Lac": 1.0, "Amm": 0.5, "mAb": 0.0, "V": scale},
        state_bounds={
            "Xv": conc, "Glc": conc, "Gln": conc, "Lac": conc, "Amm": conc, "mAb": conc,
            "V": (0.0, 2.0 * scale),  # the vessel's total volume
        },
        # T bounds: the range the temperature sets are meant for (CHO is not cultured outside it).
        input_bounds={"F": (0.0, 0.1 * scale), "T": (30.0, 39.0)},
        input_safe={"F": 0.0, "T": 36.5},
        references=(
            "Xing Z, Bishop N, Leister K, Li ZJ (2010) Biotechnol Prog 26(1):208-219",
            "Kornecki M, Strube J (2018) Bioengineering 5(1):25, Table 2",
            "Möller J et al. (2020) Comput Chem Eng 134:106693 (via culturerobotics/insilicho)",
            "Carcano (2010) thesis, Gaussian temperature factor (via insilicho)",
            "Cooney CL, Wang DIC, Mateles RI (1969) Biotechnol Bioeng 11:269 (oxycaloric equivalent; recalled)",
        ),
    )
