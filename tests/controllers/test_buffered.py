"""BufferedFunction evaluates exactly what Function.__call__ does, matrices in CasADi's column order."""

from __future__ import annotations

import casadi as ca
import numpy as np
import pytest

from controllers.buffered import BufferedFunction


def test_buffered_call_equals_the_plain_call_for_vectors_matrices_and_scalars() -> None:
    x, a, h = ca.SX.sym("x", 3), ca.SX.sym("A", 3, 2), ca.SX.sym("h")
    # A non-symmetric matrix in and out: a row/column mix-up changes the result.
    outputs = [ca.densify(h * ca.sin(x)), ca.densify(a.T @ ca.diag(x) @ a + h), h * ca.dot(x, x)]
    fn = ca.Function("f", [x, a, h], outputs)
    buffered = BufferedFunction(fn)
    rng = np.random.default_rng(3)
    for _ in range(3):  # the buffers are reused: each call sees only its own arguments
        xv, av, hv = rng.normal(size=3), rng.normal(size=(3, 2)), float(rng.normal())
        got = buffered(xv, av, hv)
        want = [np.asarray(v) for v in fn(xv, av, hv)]
        assert got[0].shape == (3,) and got[1].shape == (2, 2) and got[2].shape == (1,)
        np.testing.assert_allclose(got[0], want[0].ravel(), rtol=1e-15)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-14)
        np.testing.assert_allclose(got[2], want[2].ravel(), rtol=1e-15)


def test_results_are_copies_not_views_of_the_buffers() -> None:
    x = ca.SX.sym("x", 2)
    buffered = BufferedFunction(ca.Function("g", [x], [2 * x]))
    first = buffered(np.array([1.0, 2.0]))[0]
    buffered(np.array([5.0, 6.0]))
    np.testing.assert_array_equal(first, [2.0, 4.0])


def test_a_sparse_output_is_refused_by_name() -> None:
    x = ca.SX.sym("x", 2)
    with pytest.raises(ValueError, match="output 0 is sparse"):
        BufferedFunction(ca.Function("square_jacobian", [x], [ca.jacobian(x * x, x)]))
