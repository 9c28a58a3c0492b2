"""Model lookup: built-in names, or ``package.module:function`` factories users bring."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from plant_models.cho_fedbatch import cho_fedbatch
from plant_models.cho_fedbatch_thermal import cho_fedbatch_thermal
from plant_models.errors import ModelError
from plant_models.fedbatch_haldane import fedbatch_haldane
from plant_models.reactor_thermal import reactor_thermal
from plant_models.spec import ModelSpec

BUILTIN_MODELS: dict[str, Callable[[], ModelSpec]] = {
    "fedbatch_haldane": fedbatch_haldane,
    "cho_fedbatch": cho_fedbatch,
    "reactor_thermal": reactor_thermal,
    "cho_fedbatch_thermal": cho_fedbatch_thermal,
}


def resolve_model(name: str) -> ModelSpec:
    """Return the ModelSpec for a built-in name or a ``package.module:function`` factory.

    Raises:
        ModelError: the name is not built in, the module cannot be imported, or the factory does not
            return a ModelSpec.
    """
    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name]()
    if ":" not in name:
        known = ", ".join(sorted(BUILTIN_MODELS))
        raise ModelError(f"unknown model {name!r} (built in: {known}; or give package.module:function)")
    module_name, _, attr = name.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"cannot load model factory {name!r}: {exc}") from None
    spec = factory()
    if not isinstance(spec, ModelSpec):
        raise ModelError(f"model factory {name!r} returned {type(spec).__name__}, not a ModelSpec")
    return spec
