"""Substrate-inhibited (Haldane) fed-batch bioreactor: do-mpc's ``batch_reactor`` example.

Source: Srinivasan, Palanki & Bonvin (2003), Comput. Chem. Eng. 27:1-26, as implemented in do-mpc's
``examples/batch_reactor/template_model.py``. Biomass X grows on substrate S with Haldane kinetics
(growth falls again at high S: substrate inhibition); product P is made at a constant specific rate;
the feed (substrate concentration S_in) dilutes everything and fills the volume V.

Units follow the source: concentrations in g/L ("model units": the do-mpc comments say mol/L, but the
values behave as g/L), volume in L, time in hours.
"""

from __future__ import annotations

from plant_models.spec import ModelSpec, Symbols, build_spec


def fedbatch_haldane() -> ModelSpec:
    """Build the Haldane fed-batch model with the do-mpc example's nominal parameters."""

    def rhs(x: Symbols, u: Symbols, p: Symbols) -> dict[str, object]:
        mu = p["mu_m"] * x["S_s"] / (p["K_m"] + x["S_s"] + x["S_s"] ** 2 / p["K_i"])
        dilution = u["inp"] / x["V_s"]
        return {
            "X_s": mu * x["X_s"] - dilution * x["X_s"],
            "S_s": -mu * x["X_s"] / p["Y_x"] - p["v"] * x["X_s"] / p["Y_p"]
            + dilution * (p["S_in"] - x["S_s"]),
            "P_s": p["v"] * x["X_s"] - dilution * x["P_s"],
            "V_s": u["inp"],
        }

    return build_spec(
        name="fedbatch_haldane",
        description=(
            "Fed-batch bioreactor with Haldane substrate inhibition (do-mpc batch_reactor example; "
            "Srinivasan, Palanki & Bonvin 2003)."
        ),
        states={"X_s": "g/L", "S_s": "g/L", "P_s": "g/L", "V_s": "L"},
        inputs={"inp": "L/h"},
        params={
            "mu_m": (0.02, "1/h"),
            "K_m": (0.05, "g/L"),
            "K_i": (5.0, "g/L"),
            "v": (0.004, "1/h"),
            "Y_p": (1.2, "g/g"),
            "Y_x": (0.5, "g/g"),
            "S_in": (200.0, "g/L"),
        },
        rhs=rhs,  # type: ignore[arg-type]
        x0={"X_s": 1.0, "S_s": 0.5, "P_s": 0.0, "V_s": 120.0},
        state_bounds={"X_s": (0.0, 3.7), "S_s": (-0.01, float("inf")), "P_s": (0.0, 3.0)},
        input_bounds={"inp": (0.0, 0.2)},
        input_safe={"inp": 0.0},
        references=(
            "Srinivasan B, Palanki S, Bonvin D (2003) Comput Chem Eng 27:1-26",
            "do-mpc examples/batch_reactor (template_model.py, template_mpc.py, template_simulator.py)",
        ),
    )
