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


@pytest.mark.parametrize("on_host", [True, False])
def test_first_prediction_is_one_program(monkeypatch, on_host):
  # Small concrete CPU problems are factored and solved in NumPy / SciPy (no
  # program); otherwise factor, solve and product are one program.
  if not on_host:
    monkeypatch.setattr(solvers, "HOST_SOLVE_SIZE", -1)
  # Programs compiled once per process (scalar helpers) are compiled here.
  k_dd, k_td, y = _problem(19)
  predict.gp_inference(jax.device_put(k_dd), y, diag_reg=1e-3)(
      "nngp", jax.device_put(k_td))
  # A size no other test uses: nothing is cached yet.
  n = 23 if on_host else 24
  k_dd, k_td, y = _problem(n)
  k_dd, k_td = jax.device_put(k_dd), jax.device_put(k_td)
  with count_compiles() as seen:
    mean = predict.gp_inference(k_dd, y, diag_reg=1e-3)("nngp", k_td)
    jax.block_until_ready(mean)
  assert len(seen) == (0 if on_host else 1), seen
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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_host_and_compiled_solves_agree(monkeypatch, dtype):
  # The NumPy / SciPy path and the compiled one: same LAPACK factorization,
  # round-off apart in the solve; failures are NaN in both.
  k_dd, k_td, y = _problem(30)
  chol = solvers.Cholesky(on_failure="nan")
  with _common.precision(dtype):
    a = jnp.asarray(k_dd, dtype)
    host = chol.factor_solve(a, 1e-4, False, y, jnp.asarray(k_td, dtype))
    monkeypatch.setattr(solvers, "HOST_SOLVE_SIZE", -1)
    xla = chol.factor_solve(a, 1e-4, False, y, jnp.asarray(k_td, dtype))
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(host[0].chol, xla[0].chol, rtol=tol, atol=tol)
    for h, x in zip(host[1:], xla[1:]):
      assert h.dtype == x.dtype == dtype
      np.testing.assert_allclose(h, x, rtol=tol, atol=tol)
    monkeypatch.setattr(solvers, "HOST_SOLVE_SIZE", 1 << 22)
    bad = -jnp.eye(30, dtype=dtype)
    f_host = chol.factor(bad, 0.0, True)
    monkeypatch.setattr(solvers, "HOST_SOLVE_SIZE", -1)
    f_xla = chol.factor(bad, 0.0, True)
    assert np.isnan(np.asarray(f_host.solve(y))).all()
    assert np.isnan(np.asarray(f_xla.solve(y))).all()


def _ensemble_setup(dtype, seed=0):
  """A kernel function over 1-d inputs (an RBF NNGP, an NTK a little
  larger), 9 training and 6 test points."""
  rs = np.random.RandomState(seed)
  x_train = rs.randn(9, 1).astype(dtype)
  x_test = rs.randn(6, 1).astype(dtype)

  class K:
    def __init__(self, nngp, ntk):
      self.nngp, self.ntk = nngp, ntk

  def kernel_fn(x1, x2=None, get=None, **_):
    x2 = x1 if x2 is None else x2
    nngp = jnp.exp(-0.5 * (x1 - x2.T) ** 2)
    out = K(nngp, 1.5 * nngp + 0.2)
    return getattr(out, get) if isinstance(get, str) else out

  return kernel_fn, x_train, rs.randn(9, 2).astype(dtype), x_test


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("t", [None, "times"])
def test_host_and_compiled_posteriors_agree(monkeypatch, dtype, t):
  # Posterior covariances (infinite time: Cholesky; finite times:
  # eigendecomposition and moments) in NumPy / SciPy and compiled: the
  # same numbers up to round-off (a well-conditioned kernel: float32
  # round-off grows with the condition number), for both kernels and with
  # or without test points.
  with _common.precision(dtype):
    kernel_fn, x_train, y_train, x_test = _ensemble_setup(dtype)
    ts = None if t is None else jnp.asarray([0., 0.5, 3., 100.], dtype)

    def run():
      predict_fn = predict.gradient_descent_mse_ensemble(
          kernel_fn, x_train, y_train, diag_reg=1e-2)
      return [predict_fn(t=ts, x_test=x, get=g, compute_cov=True)
              for g in ("nngp", "ntk") for x in (x_test, None)]

    with count_compiles() as host_programs:
      host = run()
    monkeypatch.setattr(solvers, "HOST_SOLVE_SIZE", -1)
    xla = run()
  tol = 2e-4 if dtype == np.float32 else 1e-9
  for h, x in zip(host, xla):
    for a, b in zip(h, x):
      assert a.dtype == b.dtype == dtype
      np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
  # The host path compiles none of predict's own programs.
  names = " ".join(str(p) for p in host_programs)
  for name in ("_gp_posterior", "_ntk_posterior", "_eigh",
               "_ensemble_moments", "_factor"):
    assert name not in names, names
