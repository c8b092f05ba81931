"""How many programs a first prediction compiles, and that the quickly
compiled small programs (`_common.small_jit`) give the numbers of the fully
optimized ones."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.compiles import count_compiles
from widenets import predict
from widenets.predict import _common, gp, solvers


def _problem(n, m=7, c=2, seed=0):
  rs = np.random.RandomState(seed)
  x = rs.randn(n + m, n + m + 3).astype(np.float32)
  k = x @ x.T / x.shape[1]
  return (k[:n, :n], k[n:, :n], rs.randn(n, c).astype(np.float32))


def test_first_prediction_is_one_program():
  # Programs compiled once per process (scalar helpers) are compiled here.
  k_dd, k_td, y = _problem(19)
  predict.gp_inference(jax.device_put(k_dd), y, diag_reg=1e-3)(
      "nngp", jax.device_put(k_td))
  # A size no other test uses: nothing is cached yet.
  n = 23
  k_dd, k_td, y = _problem(n)
  k_dd, k_td = jax.device_put(k_dd), jax.device_put(k_td)
  with count_compiles() as seen:
    mean = predict.gp_inference(k_dd, y, diag_reg=1e-3)("nngp", k_td)
    jax.block_until_ready(mean)
  assert len(seen) == 1, seen
  expected = np.asarray(k_td) @ np.linalg.solve(
      np.asarray(k_dd) + 1e-3 * np.trace(k_dd) / n * np.eye(n), y)
  np.testing.assert_allclose(mean, expected, rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_quick_and_full_programs_agree(dtype):
  k_dd, k_td, y = _problem(40)
  with _common.precision(dtype):
    a, b, apply = (jnp.asarray(v, dtype) for v in (k_dd, y, k_td))
    args = (a, 1e-4, False, b, apply, np.dtype(dtype))
    quick = solvers._factor_solve.quick(*args)
    full = solvers._factor_solve.full(*args)
    for q, f in zip(quick, full):
      np.testing.assert_array_equal(q, f)
    assert quick[6].dtype == dtype


def test_small_jit_uses_the_plain_program_under_an_outer_trace():
  k_dd, k_td, y = (jnp.asarray(v) for v in _problem(12))
  direct = gp._gp_posterior(jnp.linalg.cholesky(k_dd + jnp.eye(12)),
                            y, k_td, k_td @ k_td.T)
  traced = jax.jit(lambda k: gp._gp_posterior(
      jnp.linalg.cholesky(k + jnp.eye(12)), y, k_td, k_td @ k_td.T))(k_dd)
  for d, t in zip(direct, traced):
    np.testing.assert_allclose(d, t, rtol=1e-5, atol=1e-6)
