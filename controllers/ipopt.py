"""Ipopt solvers, with casadi's bundled OpenBLAS held to one thread.

Ipopt's linear solver (MUMPS) calls the OpenBLAS that ships inside the casadi wheel. That OpenBLAS runs
one OpenMP thread per core, and its results depend on whether it runs one thread or several: the whole
batch's 83 NMPC re-solves, replayed from one run, took 1817 Ipopt iterations single-threaded (or pinned
to one core) and 2068 with 2 or 4 threads, and a closed loop then goes elsewhere. A batch, and a case of
a sweep, must be a pure function of (scenario, settings, seed) whatever machine runs it, so every Ipopt
solver here runs single-threaded. It is cheaper too: on problems this size the extra thread mostly spins
(those re-solves used 99 % of a core single-threaded and 124 % with two threads, and were no faster),
taking the core that the plant, the truth replay or the other sweep worker needs.

The count is set with OpenBLAS's own ``openblas_set_num_threads`` on the library casadi loads: the
environment variables would be read only if set before that library is first loaded. A casadi build
without a bundled OpenBLAS (one linked to the system's BLAS) is left as it is.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from typing import Any

import casadi as ca


@functools.cache
def single_threaded_blas() -> bool:
    """Hold casadi's bundled OpenBLAS to one thread, process-wide (idempotent). False if casadi bundles none."""
    found = sorted(Path(ca.__file__).parent.glob("libcasadi-tp-openblas.so*"))
    if not found:
        return False
    lib = ctypes.CDLL(str(found[0]))  # the library MUMPS uses: one soname, loaded once per process
    lib.openblas_set_num_threads(1)
    return int(lib.openblas_get_num_threads()) == 1


def ipopt_nlpsol(name: str, problem: dict[str, Any] | str, opts: dict[str, Any]) -> ca.Function:
    """``casadi.nlpsol(name, "ipopt", problem, opts)``, single-threaded (:func:`single_threaded_blas`)."""
    single_threaded_blas()
    return ca.nlpsol(name, "ipopt", problem, opts)


__all__ = ["ipopt_nlpsol", "single_threaded_blas"]
