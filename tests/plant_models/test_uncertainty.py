"""ParameterUncertainty and draw(): documented widths, reproducible by seed."""

from __future__ import annotations

import numpy as np
import pytest

from plant_models import ModelError
from plant_models.cho_fedbatch import CHO_UNCERTAINTY, cho_fedbatch
from plant_models.cho_fedbatch_thermal import UNCERTAINTY, cho_fedbatch_thermal
from plant_models.uncertainty import ParameterUncertainty, draw


def test_same_seed_same_parameters_other_seed_other_parameters() -> None:
    spec = cho_fedbatch()
    first, again, other = draw(spec, CHO_UNCERTAINTY, 7), draw(spec, CHO_UNCERTAINTY, 7), draw(spec, CHO_UNCERTAINTY, 8)
    assert first == again
    assert set(first) == set(spec.params)
    changed = {n for n in spec.params if first[n] != spec.nominal_params[n]}
    assert changed == set(CHO_UNCERTAINTY.relative)  # only the uncertain ones move
    assert all(first[n] != other[n] for n in changed)
    assert draw(spec, CHO_UNCERTAINTY, np.random.default_rng(7)) == first  # a Generator is a seed too


def test_draws_fill_the_documented_band() -> None:
    spec = cho_fedbatch_thermal()
    rng = np.random.default_rng(0)
    samples = [draw(spec, UNCERTAINTY, rng) for _ in range(2000)]
    for name, r in UNCERTAINTY.relative.items():
        ratio = np.array([s[name] for s in samples]) / spec.nominal_params[name]
        assert ratio.min() >= 1 - r and ratio.max() <= 1 + r
        # Uniform on [1 - r, 1 + r]: 2000 draws reach within 1 % of r of both ends, mean near 1.
        assert ratio.min() < 1 - 0.99 * r and ratio.max() > 1 + 0.99 * r
        assert abs(ratio.mean() - 1.0) < 0.1 * r
    assert CHO_UNCERTAINTY.relative["mu_m"] == 0.2 and CHO_UNCERTAINTY.relative["q_P"] == 0.2


def test_nominal_centre_and_errors() -> None:
    spec = cho_fedbatch()
    exact = draw(spec, ParameterUncertainty(), 1, nominal={"mu_m": 0.04})
    assert exact["mu_m"] == 0.04 and exact["q_P"] == spec.nominal_params["q_P"]
    with pytest.raises(ModelError, match="names 'UA', which model 'cho_fedbatch' does not have"):
        draw(spec, UNCERTAINTY, 1)
    with pytest.raises(ModelError, match="relative half-width must be in"):
        ParameterUncertainty({"mu_m": 1.0})
    with pytest.raises(ModelError, match="has no param named 'nope'"):
        draw(spec, CHO_UNCERTAINTY, 1, nominal={"nope": 1.0})
    with pytest.raises(TypeError):
        CHO_UNCERTAINTY.relative["mu_m"] = 0.5  # type: ignore[index]
