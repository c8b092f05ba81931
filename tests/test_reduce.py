"""`widenets._reduce.nan_max`: a maximum that keeps NaN on every size."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from widenets._reduce import nan_max

# Sizes where XLA:CPU's one-operand max-reduction has skipped NaN (JAX 0.10).
LARGE = [(1000, 1000), (513, 777), (70000,), (3, 100000)]


@pytest.mark.parametrize("shape", LARGE)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_large_arrays_keep_nan_and_inf(shape, bad):
  rs = np.random.RandomState(sum(shape))
  x = rs.randn(*shape).astype(np.float32)
  f = jax.jit(nan_max)
  for _ in range(5):
    y = x.copy().ravel()
    y[rs.randint(y.size)] = bad
    got = float(f(y.reshape(shape)))
    assert got == bad or (np.isnan(bad) and np.isnan(got)), (shape, got)
  assert float(f(x)) == float(x.max())


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 3000), m=st.integers(1, 40), seed=st.integers(0, 999),
       axis=st.sampled_from([None, 0, 1, -1]))
def test_matches_numpy(n, m, seed, axis):
  rs = np.random.RandomState(seed)
  x = rs.randn(n, m).astype(np.float32)
  if seed % 3 == 0:
    x.ravel()[rs.randint(x.size)] = np.nan
  assume(axis is None or x.shape[axis] > 0)
  np.testing.assert_array_equal(np.asarray(nan_max(x, axis)),
                                np.max(x, axis))


def test_empty_initial_and_integers():
  assert float(nan_max(jnp.zeros((0, 3)), initial=0.)) == 0.
  assert float(nan_max(jnp.zeros((0,)))) == -np.inf
  assert int(nan_max(jnp.arange(-5, 100))) == 99
  np.testing.assert_array_equal(nan_max(jnp.zeros((0, 3)), 0, initial=1.),
                                np.ones(3))


def test_no_derivative_is_needed_under_grad():
  # A control value inside a differentiated function: no JVP rule needed.
  f = lambda x: jnp.sum(x ** 2) * (nan_max(x) > 0)
  np.testing.assert_allclose(jax.grad(f)(jnp.arange(4.)),
                             2 * np.arange(4.))


def test_float64():
  with jax.enable_x64(True):
    x = np.random.RandomState(1).randn(700, 700)
    x[123, 456] = np.nan
    got = jax.jit(nan_max)(x)
    assert got.dtype == jnp.float64 and np.isnan(float(got))
    x[123, 456] = 7.
    assert float(nan_max(x, initial=0.)) == 7.
