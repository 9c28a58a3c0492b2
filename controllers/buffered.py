"""A CasADi function called through preallocated numpy buffers: the hot-path way to evaluate it.

``Function.__call__`` converts every numpy argument to a ``DM`` and every result back; for a 13x13
covariance that conversion costs several times the evaluation itself (~100 us against ~20 us on this
machine). :class:`BufferedFunction` binds numpy arrays to the function's inputs and outputs once
(``Function.buffer``) and then only copies values in and out.
"""

from __future__ import annotations

from typing import Any

import casadi as ca
import numpy as np

from controllers.interfaces import FloatArray

__all__ = ["BufferedFunction"]


class BufferedFunction:
    """``fn`` evaluated in place on numpy buffers. Every input and output must be dense.

    Not re-entrant: one call at a time (the buffers are shared); results are fresh copies.
    """

    def __init__(self, fn: ca.Function) -> None:
        """Args: fn: the function (built once; its sparsity patterns must be dense)."""
        for kind, count, sparsity in (("input", fn.n_in(), fn.sparsity_in), ("output", fn.n_out(), fn.sparsity_out)):
            for i in range(count):
                if not sparsity(i).is_dense():
                    raise ValueError(f"{fn.name()}: {kind} {i} is sparse; densify it when building the function")
        self.function = fn
        # CasADi stores matrices column by column: Fortran-ordered buffers take a C-ordered argument's
        # values in the right order on assignment.
        self._in = [np.zeros(fn.size_in(i), order="F") for i in range(fn.n_in())]
        self._out = [np.zeros(fn.size_out(i), order="F") for i in range(fn.n_out())]
        # Any: the stubs ask for a byte count that the binding takes from the memoryview itself.
        buffer: Any
        buffer, self._eval = fn.buffer()
        self._buffer = buffer  # keeps the bindings alive with the arrays
        for i, arr in enumerate(self._in):
            buffer.set_arg(i, self._flat(arr).data)
        for i, arr in enumerate(self._out):
            buffer.set_res(i, self._flat(arr).data)

    @staticmethod
    def _flat(arr: FloatArray) -> FloatArray:
        flat = arr.reshape(-1, order="F")
        assert np.shares_memory(flat, arr)  # a view: CasADi reads and writes the buffer itself
        return flat

    def __call__(self, *args: FloatArray | float) -> tuple[FloatArray, ...]:
        """Evaluate at ``args`` (numbers, vectors or matrices of the inputs' shapes); column-vector results
        come back as 1-D arrays, matrices as C-ordered 2-D arrays."""
        for buf, arg in zip(self._in, args, strict=True):
            buf[...] = np.reshape(arg, buf.shape) if np.ndim(arg) == 1 else arg
        self._eval()
        return tuple(out[:, 0].copy() if out.shape[1] == 1 else np.ascontiguousarray(out) for out in self._out)
