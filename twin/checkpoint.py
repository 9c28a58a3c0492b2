"""Snapshots of the estimator's and controller's internal state, so a resumed run continues exactly.

An object that implements :class:`Checkpointable` says itself what its state is. Any other object is
snapshotted by its numpy-array attributes (for our NMPCs: the warm start — multipliers, plan — and the
last input; for the measured-state estimator: the last estimate) — exact for objects whose whole mutable state
is arrays, which is why controllers are encouraged to implement :class:`Checkpointable` instead.

The snapshot is a JSON header (``estimator/<name>`` and ``controller/<name>`` → dtype, shape) followed by
the arrays' raw bytes: exact, no pickle, and cheap enough to store with every controller step.
"""

from __future__ import annotations

import json
import struct
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


_CHECKPOINTABLE: dict[type, bool] = {}


def _implements(obj: object) -> bool:
    """isinstance(obj, Checkpointable), cached per type (a runtime protocol check is slow)."""
    kind = type(obj)
    if kind not in _CHECKPOINTABLE:
        _CHECKPOINTABLE[kind] = isinstance(obj, Checkpointable)
    return _CHECKPOINTABLE[kind]


def _state_of(obj: object) -> dict[str, np.ndarray]:
    if _implements(obj):
        return {k: np.asarray(v) for k, v in obj.checkpoint().items()}  # type: ignore[attr-defined]
    return {k: v.copy() for k, v in vars(obj).items() if isinstance(v, np.ndarray)}


def _restore(obj: object, state: Mapping[str, np.ndarray]) -> None:
    if _implements(obj):
        obj.restore(state)  # type: ignore[attr-defined]
        return
    for name, value in state.items():
        if hasattr(obj, name):
            setattr(obj, name, np.array(value))


def snapshot(estimator: object, controller: object) -> bytes:
    """The state of both objects as bytes: a length-prefixed JSON header (name → dtype, shape), then the
    arrays' raw bytes in header order."""
    arrays = {f"estimator/{k}": v for k, v in _state_of(estimator).items()}
    arrays |= {f"controller/{k}": v for k, v in _state_of(controller).items()}
    header = {k: [v.dtype.str, list(v.shape)] for k, v in arrays.items()}
    head = json.dumps(header).encode()
    return struct.pack("<I", len(head)) + head + b"".join(np.ascontiguousarray(v).tobytes() for v in arrays.values())


def restore(blob: bytes, estimator: object, controller: object) -> None:
    """Put both objects back into the state :func:`snapshot` saw."""
    (size,) = struct.unpack_from("<I", blob)
    header = json.loads(blob[4 : 4 + size])
    offset = 4 + size
    parts: dict[str, dict[str, np.ndarray]] = {"estimator": {}, "controller": {}}
    for key, (dtype, shape) in header.items():
        count = int(np.prod(shape)) if shape else 1
        value = np.frombuffer(blob, dtype=np.dtype(dtype), count=count, offset=offset).reshape(shape)
        offset += value.nbytes
        owner, _, name = key.partition("/")
        parts[owner][name] = value.copy()
    _restore(estimator, parts["estimator"])
    _restore(controller, parts["controller"])
