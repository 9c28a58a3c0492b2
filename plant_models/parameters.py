"""`Param`: one documented parameter value (value, unit, source, and whether it is an assumption).

Model modules keep their parameter tables as ``{name: Param}`` so that the value a model uses, its unit
and where it comes from live in one place; docs/models.md and the fidelity tests read the same table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Param:
    """A parameter value with its provenance.

    Attributes:
        value: nominal value, in ``unit``.
        unit: unit of the value.
        source: where the value comes from (paper, table, or how it was derived).
        assumption: True when the value is ours (an engineering estimate or a smoothing choice), not a
            published number.
    """

    value: float
    unit: str
    source: str
    assumption: bool = False


def spec_params(table: Mapping[str, Param]) -> dict[str, tuple[float, str]]:
    """The ``name -> (value, unit)`` mapping that ``build_spec`` takes."""
    return {name: (p.value, p.unit) for name, p in table.items()}
