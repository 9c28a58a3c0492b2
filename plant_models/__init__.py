"""Physics only: ModelSpec values built by factory functions. No numerics, no I/O."""

from plant_models.errors import (
    BioimpError,
    InputDataError,
    ModelError,
    PlantTimeout,
    ProtocolError,
    ScenarioError,
    SolverFailed,
)
from plant_models.registry import BUILTIN_MODELS, resolve_model
from plant_models.spec import ModelSpec, build_spec, validate_spec
from plant_models.uncertainty import ParameterUncertainty, draw

__all__ = [
    "BUILTIN_MODELS",
    "BioimpError",
    "InputDataError",
    "ModelError",
    "ModelSpec",
    "ParameterUncertainty",
    "PlantTimeout",
    "ProtocolError",
    "ScenarioError",
    "SolverFailed",
    "build_spec",
    "draw",
    "resolve_model",
    "validate_spec",
]
