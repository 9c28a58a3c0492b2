"""ModelSpec construction, validation and model lookup."""

from __future__ import annotations

import math

import numpy as np
import pytest

from plant_models import ModelError, ModelSpec, build_spec, resolve_model
from plant_models.fedbatch_haldane import fedbatch_haldane


def _tank(**overrides: object) -> ModelSpec:
    kwargs: dict[str, object] = dict(
        name="tank",
        description="tank",
        states={"V": "L"},
        inputs={"F": "L/h"},
        params={"k": (0.1, "1/h")},
        rhs=lambda x, u, p: {"V": u["F"] - p["k"] * x["V"]},
        x0={"V": 1.0},
        input_bounds={"F": (0.0, 2.0)},
        input_safe={"F": 0.0},
    )
    kwargs.update(overrides)
    return build_spec(**kwargs)  # type: ignore[arg-type]


def test_haldane_rhs_matches_hand_computed_equations() -> None:
    spec = fedbatch_haldane()
    x = np.array([1.2, 0.4, 0.1, 121.0])
    u = np.array([0.05])
    par = spec.nominal_params
    mu = par["mu_m"] * 0.4 / (par["K_m"] + 0.4 + 0.4**2 / par["K_i"])
    d = 0.05 / 121.0
    expected = [
        mu * 1.2 - d * 1.2,
        -mu * 1.2 / par["Y_x"] - par["v"] * 1.2 / par["Y_p"] + d * (par["S_in"] - 0.4),
        par["v"] * 1.2 - d * 0.1,
        0.05,
    ]
    got = np.asarray(spec.f(x, u, spec.vector("params", par))).ravel()
    np.testing.assert_allclose(got, expected, rtol=1e-14, atol=0)


def test_haldane_metadata_matches_do_mpc_example() -> None:
    spec = fedbatch_haldane()
    assert spec.states == ("X_s", "S_s", "P_s", "V_s")
    assert spec.inputs == ("inp",)
    assert spec.nominal_params["Y_x"] == 0.5 and spec.nominal_params["S_in"] == 200.0
    assert dict(spec.x0) == {"X_s": 1.0, "S_s": 0.5, "P_s": 0.0, "V_s": 120.0}
    assert spec.state_bounds["X_s"] == (0.0, 3.7)
    assert spec.state_bounds["V_s"] == (-math.inf, math.inf)
    assert spec.input_bounds["inp"] == (0.0, 0.2)
    assert all(n in spec.units for n in spec.states + spec.inputs + spec.params)


def test_spec_is_frozen() -> None:
    spec = fedbatch_haldane()
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.nominal_params["Y_x"] = 1.0  # type: ignore[index]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"input_bounds": {"F": (2.0, 0.0)}}, "min 2.0 > max 0.0"),
        ({"input_safe": {"F": 5.0}}, "safe value of 'F' is outside"),
        ({"rhs": lambda x, u, p: {"W": x["V"]}}, "rhs must return exactly the states"),
        ({"x0": {"V": 1.0, "Q": 2.0}}, "no state named 'Q'"),
        ({"input_safe": {}}, "needs bounds and a safe value"),
        ({"state_bounds": {"V": (3.0, 1.0)}}, "state 'V' has min 3.0 > max 1.0"),
    ],
)
def test_inconsistent_specs_are_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        _tank(**overrides)


def test_vector_orders_by_spec_and_rejects_unknown_names() -> None:
    spec = fedbatch_haldane()
    assert spec.vector("states", {"V_s": 4.0, "P_s": 3.0, "S_s": 2.0, "X_s": 1.0}) == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ModelError, match="no value for state 'V_s'"):
        spec.vector("states", {"X_s": 1.0, "S_s": 2.0, "P_s": 3.0})


def test_resolve_builtin_and_user_factory() -> None:
    assert resolve_model("fedbatch_haldane").name == "fedbatch_haldane"
    user = resolve_model("tests.plant_models.user_model:tank")
    assert user.states == ("V",)
    assert float(user.f([2.0], [1.0], [0.1])) == pytest.approx(0.8, rel=1e-15)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no_such_model", "unknown model 'no_such_model'"),
        ("tests.plant_models.nowhere:tank", "cannot load model factory"),
        ("tests.plant_models.user_model:missing", "cannot load model factory"),
        ("tests.plant_models.user_model:not_a_model", "returned int, not a ModelSpec"),
    ],
)
def test_resolve_errors_name_the_problem(name: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        resolve_model(name)
