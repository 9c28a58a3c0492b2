"""A tiny two-actuator plant for the tests: all-or-nothing writes need at least two actuators.

A heated, fed tank: temperature T relaxes to ambient and rises with heater power; level L rises with the
feed. Time unit seconds. Served over the wire as ``--model tests.hil.two_input_model:two_input``.
"""

from __future__ import annotations

from plant_models.spec import ModelSpec, Symbols, build_spec


def two_input() -> ModelSpec:
    """Build the heated tank (two inputs, two measured states)."""

    def rhs(x: Symbols, u: Symbols, p: Symbols) -> dict[str, object]:
        return {
            "T": p["gain"] * u["heat"] - p["loss"] * (x["T"] - p["T_amb"]),
            "L": u["feed"],
        }

    return build_spec(
        name="two_input",
        description="Heated, fed tank for protocol tests.",
        states={"T": "degC", "L": "L"},
        inputs={"heat": "W", "feed": "L/s"},
        params={"gain": (0.01, "K/J"), "loss": (0.001, "1/s"), "T_amb": (20.0, "degC")},
        rhs=rhs,  # type: ignore[arg-type]
        x0={"T": 20.0, "L": 1.0},
        state_bounds={"L": (0.0, 10.0)},
        input_bounds={"heat": (0.0, 100.0), "feed": (0.0, 2.0)},
        input_safe={"heat": 0.0, "feed": 0.0},
        time_unit="s",
        seconds_per_time_unit=1.0,
    )


def noisy_two_input() -> ModelSpec:
    """The same tank, from a factory that prints a banner on stdout (as some libraries do)."""
    print("two_input model factory v0 - hello from stdout", flush=True)
    return two_input()
