"""`gp_inference`: textbook formulas (NumPy float64), both call forms, `get`
conventions, train-set predictions, trace_axes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from widenets import predict, stax


def _net():
  return stax.serial(stax.Dense(512, W_std=1.5, b_std=0.05), stax.Erf(),
                     stax.Dense(1, W_std=1.5, b_std=0.05))


@pytest.fixture(scope="module")
def problem():
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  x_train = jax.random.normal(k1, (10, 3))
  x_test = jax.random.normal(k2, (6, 3))
  y_train = jax.random.normal(k3, (10, 2))
  _, _, kernel_fn = _net()
  get = ("nngp", "ntk")
  return dict(x_train=x_train, x_test=x_test, y_train=y_train,
              kernel_fn=kernel_fn, k_dd=kernel_fn(x_train, None, get),
              k_td=kernel_fn(x_test, x_train, get),
              k_tt=kernel_fn(x_test, None, get))


def _np(x):
  return np.asarray(x, np.float64)


def _textbook(p, diag_reg):
  """Posterior moments computed directly with NumPy in float64."""
  y = _np(p["y_train"])
  out = {}
  k, th = _np(p["k_dd"].nngp), _np(p["k_dd"].ntk)
  k_td, th_td = _np(p["k_td"].nngp), _np(p["k_td"].ntk)
  k_tt, th_tt = _np(p["k_tt"].nngp), _np(p["k_tt"].ntk)
  reg = lambda a: a + diag_reg * np.trace(a) / len(a) * np.eye(len(a))
  k_inv, th_inv = np.linalg.inv(reg(k)), np.linalg.inv(reg(th))
  out["nngp"] = (k_td @ k_inv @ y, k_tt - k_td @ k_inv @ k_td.T)
  out["ntkgp"] = (th_td @ th_inv @ y, th_tt - th_td @ th_inv @ th_td.T)
  # Lee et al. (2019) eq. 16 at t = inf.
  a = th_td @ th_inv
  out["ntk"] = (a @ y, k_tt + a @ k @ a.T - (a @ k_td.T + k_td @ a.T))
  return out


# The Cholesky solvers compute covariances in one compiled program per
# posterior; CG (no factor) takes the generic path through `solve`.
SOLVERS = {"cholesky": None,
           "cholesky64": predict.Cholesky(dtype="float64"),
           "cg": predict.CG(tol=1e-7, preconditioner=None, maxiter=100,
                             dtype="float64")}


@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize("diag_reg", [1e-3, 1e-1])
def test_matches_textbook_formulas(problem, diag_reg, solver):
  ref = _textbook(problem, diag_reg)
  predict_fn = predict.gp_inference(problem["k_dd"], problem["y_train"],
                                    diag_reg=diag_reg,
                                    solver=SOLVERS[solver])
  out = predict_fn(("nngp", "ntk", "ntkgp"), problem["k_td"], problem["k_tt"])
  assert out._fields == ("nngp", "ntk", "ntkgp")
  for g in ("nngp", "ntk", "ntkgp"):
    mean, cov = getattr(out, g)
    m_ref, c_ref = ref[g]
    np.testing.assert_allclose(mean, m_ref, rtol=2e-3, atol=2e-3 *
                               np.abs(m_ref).max())
    np.testing.assert_allclose(cov, c_ref, rtol=2e-3, atol=2e-3 *
                               np.abs(c_ref).max())
    # In the kernel's dtype whatever the solver's (float64 under x64).
    assert mean.dtype == cov.dtype == problem["k_dd"].nngp.dtype
    np.testing.assert_array_equal(cov, cov.T)  # symmetric by construction


def test_float64_solve_is_closer_to_textbook(problem):
  # The subject is a float32 kernel solved in float32 or in float64: under
  # x64 the fixture's kernels are float64, so cast them (a no-op without).
  f32 = lambda t: jax.tree_util.tree_map(
      lambda a: jnp.asarray(a, jnp.float32), t)
  p = dict(problem, **{k: f32(problem[k]) for k in ("k_dd", "k_td", "k_tt",
                                                    "y_train")})
  ref = _textbook(p, 1e-4)["nngp"][0]
  err = {}
  for dtype in (None, "float64"):
    pf = predict.gp_inference(p["k_dd"], p["y_train"], diag_reg=1e-4,
                              solver=predict.Cholesky(dtype=dtype))
    mean = pf("nngp", p["k_td"])
    assert mean.dtype == jnp.float32
    err[dtype] = np.abs(_np(mean) - ref).max()
  assert err["float64"] <= err[None] + 1e-7
  assert err["float64"] < 1e-5 * np.abs(ref).max() + 1e-6


def test_absolute_diag_reg(problem):
  k = _np(problem["k_dd"].nngp)
  pf = predict.gp_inference(problem["k_dd"], problem["y_train"],
                            diag_reg=0.05, diag_reg_absolute_scale=True)
  ref = _np(problem["k_td"].nngp) @ np.linalg.solve(
      k + 0.05 * np.eye(len(k)), _np(problem["y_train"]))
  np.testing.assert_allclose(pf("nngp", problem["k_td"]), ref, rtol=1e-3,
                             atol=1e-4)


def test_get_conventions(problem):
  pf = predict.gp_inference(problem["k_dd"], problem["y_train"], 1e-3)
  both = pf(None, problem["k_td"], problem["k_tt"])
  assert type(both).__name__ == "Gaussians" and both._fields == ("nngp", "ntk")
  single = pf("ntk", problem["k_td"], problem["k_tt"])
  assert isinstance(single, predict.Gaussian)
  np.testing.assert_array_equal(single.mean, both.ntk.mean)
  mean_only = pf("nngp", problem["k_td"])
  assert mean_only.shape == (6, 2)
  rev = pf(("ntk", "nngp"), problem["k_td"])
  assert rev._fields == ("ntk", "nngp")
  # Full `Kernel` objects work like namedtuples.
  pk = predict.gp_inference(problem["kernel_fn"](problem["x_train"], None),
                            problem["y_train"], 1e-3)
  out_k = pk("ntk", problem["kernel_fn"](problem["x_test"],
                                         problem["x_train"]),
             problem["kernel_fn"](problem["x_test"], None))
  np.testing.assert_allclose(out_k.covariance, both.ntk.covariance,
                             rtol=1e-5, atol=1e-6)
  # Arrays for k_train_train work for a single kernel kind. The mean alone
  # and the mean with a covariance are different code paths: they agree to
  # the float32 solve's round-off (condition ~650 here, x eps ~ 4e-5).
  pa = predict.gp_inference(problem["k_dd"].nngp, problem["y_train"], 1e-3)
  np.testing.assert_allclose(pa("nngp", problem["k_td"].nngp),
                             both.nngp.mean, rtol=1e-4, atol=5e-5)


def test_train_set_predictions(problem):
  pf = predict.gp_inference(problem["k_dd"], problem["y_train"])
  out = pf("nngp", None, True)
  np.testing.assert_array_equal(out.mean, problem["y_train"])
  assert out.covariance.shape == (10, 10) and not np.any(out.covariance)


def test_trace_axes_nd_outputs():
  # Outputs (N, X, C) with a kernel over (N, X): trace only the channels.
  key = jax.random.PRNGKey(3)
  a = jax.random.normal(key, (8, 3, 8, 3))
  k = jnp.einsum("iajb,kcjb->iakc", a, a) / 24       # PSD (N, X, N, X)
  k = jnp.transpose(k, (0, 2, 1, 3))                  # zipped (N, N, X, X)
  y = jax.random.normal(jax.random.PRNGKey(4), (8, 3, 5))
  mean = predict.gp_inference(k, y, diag_reg=1e-2)("nngp", k[:4], None)
  flat = np.asarray(jnp.transpose(k, (0, 2, 1, 3)).reshape(24, 24), np.float64)
  reg = flat + 1e-2 * np.trace(flat) / 24 * np.eye(24)
  ref = flat[:12] @ np.linalg.solve(reg, np.asarray(y).reshape(24, 5))
  np.testing.assert_allclose(mean, ref.reshape(4, 3, 5), rtol=2e-3, atol=2e-4)
  # Tracing the middle axis instead: kernel over (N, C) is not given -> error.
  with pytest.raises(ValueError, match="y_train"):
    predict.gp_inference(k, y, trace_axes=(1,))


def test_old_five_line_form():
  """The seed example: ``gp_inference(kernel_fn, x_train, y_train, x_test,
  'ntk', diag_reg=1e-4, compute_cov=True)`` returns (mean, covariance)."""
  init_fn, apply_fn, kernel_fn = stax.serial(
      stax.Dense(2048, W_std=1.5, b_std=0.05), stax.Erf(),
      stax.Dense(2048, W_std=1.5, b_std=0.05), stax.Erf(),
      stax.Dense(1, W_std=1.5, b_std=0.05))
  x_train = jnp.linspace(-3, 3, 7)[:, None]
  y_train = jnp.sin(x_train)
  x_test = jnp.linspace(-4, 4, 11)[:, None]
  y_mean, y_var = predict.gp_inference(kernel_fn, x_train, y_train, x_test,
                                       "ntk", diag_reg=1e-4, compute_cov=True)
  assert y_mean.shape == (11, 1) and y_var.shape == (11, 11)
  get = ("nngp", "ntk")
  new = predict.gp_inference(kernel_fn(x_train, None, get), y_train,
                             diag_reg=1e-4)(
      "ntk", kernel_fn(x_test, x_train, get), kernel_fn(x_test, None, get))
  np.testing.assert_allclose(y_mean, new.mean, rtol=1e-6, atol=1e-7)
  # The covariance (~1e-4) is a difference of kernel entries of ~10, whose
  # float32 round-off (~1e-6) differs by a few ulps between the programs of
  # get="ntk" and get=("nngp", "ntk").
  np.testing.assert_allclose(y_var, new.covariance, rtol=1e-6, atol=2e-6)
  # The t -> inf gradient-descent ensemble is the same Gaussian.
  ens = predict.gradient_descent_mse_ensemble(
      kernel_fn, x_train, y_train, diag_reg=1e-4)(None, x_test, "ntk", True)
  np.testing.assert_allclose(y_var, ens.covariance, rtol=1e-5, atol=1e-6)
  # Mean only, and a tuple `get`, by keyword.
  m = predict.gp_inference(kernel_fn, x_train, y_train, x_test=x_test,
                           get="nngp")
  assert m.shape == (11, 1)
  both = predict.gp_inference(kernel_fn, x_train, y_train, x_test, get,
                              compute_cov=True)
  assert both._fields == get and both.ntk.covariance.shape == (11, 11)
  # Variances are non-negative and vanish (nearly) at training points.
  assert np.all(np.diag(y_var) > -1e-4)

