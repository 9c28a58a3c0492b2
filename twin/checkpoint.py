"""Snapshots of the estimator's and controller's internal state, so a resumed run continues exactly.

An object that implements :class:`Checkpointable` says itself what its state is. Any other object is
snapshotted by its numpy-array attributes (for our NMPC: the shifted primal-dual warm start and the last
input; for the measured-state estimator: the last estimate) — exact for objects whose whole mutable state
is arrays, which is why controllers are encouraged to implement :class:`Checkpointable` instead.

The snapshot is an ``.npz`` archive (no pickle): ``estimator/<name>`` and ``controller/<name>`` arrays.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np

from twin.interfaces import FloatArray

__all__ = ["Checkpointable", "restore", "snapshot"]


@runtime_checkable
class Checkpointable(Protocol):
    """An object that can export and re-import its whole mutable state as named arrays."""

    def checkpoint(self) -> Mapping[str, FloatArray]:
        """The state as named arrays."""
        ...

    def restore(self, state: Mapping[str, FloatArray]) -> None:
        """Continue from a state returned by :meth:`checkpoint`."""
        ...


def _state_of(obj: object) -> dict[str, np.ndarray]:
    if isinstance(obj, Checkpointable):
        return {k: np.asarray(v) for k, v in obj.checkpoint().items()}
    return {k: v.copy() for k, v in vars(obj).items() if isinstance(v, np.ndarray)}


def _restore(obj: object, state: Mapping[str, np.ndarray]) -> None:
    if isinstance(obj, Checkpointable):
        obj.restore(state)
        return
    for name, value in state.items():
        if hasattr(obj, name):
            setattr(obj, name, np.array(value))


def snapshot(estimator: object, controller: object) -> bytes:
    """The state of both objects as ``.npz`` bytes."""
    arrays = {f"estimator/{k}": v for k, v in _state_of(estimator).items()}
    arrays |= {f"controller/{k}": v for k, v in _state_of(controller).items()}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def restore(blob: bytes, estimator: object, controller: object) -> None:
    """Put both objects back into the state :func:`snapshot` saw."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        parts: dict[str, dict[str, np.ndarray]] = {"estimator": {}, "controller": {}}
        for key in data.files:
            owner, _, name = key.partition("/")
            parts[owner][name] = data[key]
    _restore(estimator, parts["estimator"])
    _restore(controller, parts["controller"])
