"""Ipopt solvers run casadi's bundled OpenBLAS single-threaded, whatever the machine or the environment.

Its results depend on its thread count (1 vs several: the same NMPC re-solves took 1817 vs 2068
iterations), so without this a batch's result would depend on the machine's cores.
"""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = """
import ctypes
from pathlib import Path
import casadi as ca
lib = ctypes.CDLL(str(sorted(Path(ca.__file__).parent.glob("libcasadi-tp-openblas.so*"))[0]))
before = lib.openblas_get_num_threads()
from controllers.ipopt import ipopt_nlpsol
x = ca.MX.sym("x", 2)
opts = {"print_time": False, "ipopt": {"print_level": 0, "sb": "yes"}}
solver = ipopt_nlpsol("probe", {"x": x, "f": ca.sumsqr(x - 1)}, opts)
assert abs(float(solver(x0=[0, 0])["x"][0]) - 1.0) < 1e-8
print(before, lib.openblas_get_num_threads())
"""


def test_an_ipopt_solver_holds_casadis_openblas_to_one_thread() -> None:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}  # as on a 2-core machine
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    before, after = out.stdout.split()
    assert before == "2"  # the environment was in force when the library loaded
    assert after == "1"
