"""A user-supplied model factory, loaded by tests as ``tests.plant_models.user_model:tank``."""

from __future__ import annotations

from plant_models.spec import ModelSpec, build_spec


def tank() -> ModelSpec:
    """A tank filled by a pump and drained through an outlet: dV/dt = F_in - k V."""
    return build_spec(
        name="tank",
        description="Liquid tank with a pump and a linear outlet.",
        states={"V": "L"},
        inputs={"F_in": "L/h"},
        params={"k": (0.1, "1/h")},
        rhs=lambda x, u, p: {"V": u["F_in"] - p["k"] * x["V"]},
        x0={"V": 1.0},
        state_bounds={"V": (0.0, 10.0)},
        input_bounds={"F_in": (0.0, 2.0)},
        input_safe={"F_in": 0.0},
    )


def not_a_model() -> int:
    """A factory that returns the wrong type."""
    return 42
