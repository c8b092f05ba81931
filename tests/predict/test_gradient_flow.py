"""`gradient_descent_mse` and `gradient_descent_mse_ensemble`: closed forms
against matrix exponentials, t = inf vs t = None, eigendecomposition reuse,
shapes, and agreement with finite networks actually trained by gradient
descent (linearized and not; ensembles of a few hundred wide networks)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from widenets import predict, stax
from widenets.predict import solvers

from . import nets


def _net(width=512):
  return stax.serial(stax.Dense(width, W_std=1.5, b_std=0.05), stax.Erf(),
                     stax.Dense(1, W_std=1.5, b_std=0.05))


@pytest.fixture(scope="module")
def problem():
  k1, k2, k3, k4, k5 = jax.random.split(jax.random.PRNGKey(0), 5)
  x_train = jax.random.normal(k1, (8, 3))
  x_test = jax.random.normal(k2, (5, 3))
  y_train = jax.random.normal(k3, (8, 2))
  _, _, kernel_fn = _net()
  k = kernel_fn(x_train, None, ("nngp", "ntk"))
  k_td = kernel_fn(x_test, x_train, ("nngp", "ntk"))
  k_tt = kernel_fn(x_test, None, ("nngp", "ntk"))
  return dict(x_train=x_train, x_test=x_test, y_train=y_train, k=k,
              k_td=k_td, k_tt=k_tt, kernel_fn=kernel_fn,
              fx_train_0=jax.random.normal(k4, (8, 2)),
              fx_test_0=jax.random.normal(k5, (5, 2)))


def _expm(a):
  w, v = np.linalg.eigh(a)
  return (v * np.exp(w)) @ v.T


def test_mse_matches_matrix_exponential(problem):
  p = problem
  lr, t = 0.5, 3.0
  theta = np.asarray(p["k"].ntk, np.float64)
  n = p["y_train"].size
  y, f0 = np.asarray(p["y_train"], np.float64), np.asarray(p["fx_train_0"])
  e = _expm(-lr * t * theta / n)
  f_train = y + e @ (f0 - y)
  f_test = np.asarray(p["fx_test_0"]) + np.asarray(p["k_td"].ntk) @ \
      np.linalg.solve(theta, (np.eye(8) - e) @ (y - f0))
  pf = predict.gradient_descent_mse(p["k"].ntk, p["y_train"], lr)
  a, b = pf(t, p["fx_train_0"], p["fx_test_0"], p["k_td"].ntk)
  np.testing.assert_allclose(a, f_train, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(b, f_test, rtol=1e-3, atol=1e-3)


def test_mse_t_inf_equals_t_none(problem):
  p = problem
  args = (p["fx_train_0"], p["fx_test_0"], p["k_td"].ntk)
  pf = predict.gradient_descent_mse(p["k"].ntk, p["y_train"], diag_reg=1e-3)
  a_none, b_none = pf(None, *args)
  a_inf, b_inf = pf(jnp.inf, *args)
  np.testing.assert_allclose(a_inf, a_none, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(b_inf, b_none, rtol=1e-3, atol=1e-3)
  # Only one output asked: one array back; fx_train_0=None means f0 = 0.
  b_only = pf(2., None, p["fx_test_0"], p["k_td"].ntk)
  assert b_only.shape == (5, 2)
  assert pf(2., p["fx_train_0"]).shape == (8, 2)


def test_mse_times_of_any_shape(problem):
  p = problem
  pf = predict.gradient_descent_mse(p["k"].ntk, p["y_train"])
  ts = jnp.array([[0., 1.], [10., 100.]])
  a, b = pf(ts, p["fx_train_0"], p["fx_test_0"], p["k_td"].ntk)
  assert a.shape == (2, 2, 8, 2) and b.shape == (2, 2, 5, 2)
  np.testing.assert_allclose(a[0, 0], p["fx_train_0"], atol=1e-6)
  np.testing.assert_allclose(b[0, 0], p["fx_test_0"], atol=1e-6)
  a1, b1 = pf(10., p["fx_train_0"], p["fx_test_0"], p["k_td"].ntk)
  np.testing.assert_allclose(a[1, 0], a1, rtol=1e-5, atol=1e-6)


def test_eigendecomposition_computed_once(problem, monkeypatch):
  calls = []
  of = solvers.Eigen.of.__func__

  def counting(cls, *a, **k):
    calls.append(1)
    return of(cls, *a, **k)
  monkeypatch.setattr(solvers.Eigen, "of", classmethod(counting))
  p = problem
  pf = predict.gradient_descent_mse_ensemble(p["kernel_fn"], p["x_train"],
                                             p["y_train"])
  pf(jnp.array([0., 1., 10., jnp.inf]), p["x_test"], "ntk", True)
  pf(5., p["x_test"], "ntk", True)
  pf(None, p["x_test"], "ntk")        # reuses the cached eigenbasis
  assert len(calls) == 1
  pm = predict.gradient_descent_mse(p["k"].ntk, p["y_train"])
  for t in (1., 2., jnp.array([3., 4.]), None):
    pm(t, p["fx_train_0"])
  assert len(calls) == 2


def test_ensemble_t_inf_equals_gp_inference(problem):
  p = problem
  gp = predict.gp_inference(p["k"], p["y_train"], diag_reg=1e-2)(
      ("nngp", "ntk"), p["k_td"], p["k_tt"].nngp)
  ens = predict.gradient_descent_mse_ensemble(
      p["kernel_fn"], p["x_train"], p["y_train"], diag_reg=1e-2)
  for t in (None, jnp.inf, 1e9):
    out = ens(t, p["x_test"], None, compute_cov=True)
    for g in ("nngp", "ntk"):
      np.testing.assert_allclose(getattr(out, g).mean, getattr(gp, g).mean,
                                 rtol=2e-3, atol=2e-3)
      np.testing.assert_allclose(getattr(out, g).covariance,
                                 getattr(gp, g).covariance, rtol=2e-3,
                                 atol=2e-3)


def test_ensemble_train_set_and_shapes(problem):
  p = problem
  ens = predict.gradient_descent_mse_ensemble(p["kernel_fn"], p["x_train"],
                                              p["y_train"])
  out = ens(jnp.array([0., 1., 1e8]), None, "nngp", compute_cov=True)
  assert out.mean.shape == (3, 8, 2) and out.covariance.shape == (3, 8, 8)
  # t = 0: the prior (mean 0, covariance NNGP); t -> inf: the targets.
  np.testing.assert_allclose(out.mean[0], 0., atol=1e-6)
  np.testing.assert_allclose(out.covariance[0], p["k"].nngp, rtol=1e-4,
                             atol=1e-4)
  np.testing.assert_allclose(out.mean[-1], p["y_train"], atol=1e-2)
  assert np.abs(out.covariance[-1]).max() < 1e-2
  ntk = ens(1., None, "ntk", compute_cov=True)
  assert ntk.covariance.shape == (8, 8)
  mean = ens(1., p["x_test"], "ntk")
  assert mean.shape == (5, 2)


def test_ensemble_kwargs_split_between_train_and_test(problem):
  p = problem
  seen = []

  def kernel_fn(x1, x2, get, **kw):
    seen.append((x1.shape[0], None if x2 is None else x2.shape[0],
                 kw["tag"]))
    return p["kernel_fn"](x1, x2, get)
  ens = predict.gradient_descent_mse_ensemble(
      kernel_fn, p["x_train"], p["y_train"],
      tag=(jnp.zeros(8), jnp.zeros(8)))
  ens(1., p["x_test"], "nngp", True, tag=(jnp.ones(5), jnp.ones(5)))
  (n1, n2, tag_dd), (m1, m2, tag_td), (l1, l2, tag_tt) = seen
  assert (n1, n2, m1, m2, l1, l2) == (8, None, 5, 8, 5, None)
  assert tag_td[0].shape == (5,) and tag_td[1].shape == (8,)
  assert float(tag_td[0][0]) == 1. and float(tag_td[1][0]) == 0.
  assert float(tag_tt[0][0]) == 1.
  with pytest.raises(ValueError, match="flag"):
    e2 = predict.gradient_descent_mse_ensemble(
        lambda x1, x2, get, flag=None: p["kernel_fn"](x1, x2, get),
        p["x_train"], p["y_train"], flag="a")
    e2(1., p["x_test"], "nngp", flag="b")


@settings(max_examples=15, deadline=None)
@given(st.floats(0.01, 1e3), st.floats(0.01, 1e3))
def test_train_loss_decreases_in_time(t1, t2):
  """Gradient flow on MSE never increases the train loss."""
  k = jnp.array([[2., 0.5, 0.1], [0.5, 1., 0.2], [0.1, 0.2, 0.5]])
  y = jnp.array([[1.], [-1.], [0.5]])
  f0 = jnp.array([[0.3], [0.2], [-0.4]])
  pf = predict.gradient_descent_mse(k, y)
  lo, hi = sorted((t1, t2))
  f = pf(jnp.array([lo, hi]), f0)
  loss = jnp.sum((f - y[None]) ** 2, axis=(1, 2))
  assert loss[1] <= loss[0] * (1 + 1e-5) + 1e-7


def _stats(mean_mc, var_mc, g):
  """Mean gap relative to the scale of outputs; std relative error."""
  std = jnp.sqrt(jnp.diagonal(g.covariance, axis1=-2, axis2=-1))[..., None]
  scale = jnp.sqrt(jnp.mean(g.mean ** 2, axis=(-2, -1)) +
                   jnp.mean(std ** 2, axis=(-2, -1)))
  gap = jnp.sqrt(jnp.mean((mean_mc - g.mean) ** 2, axis=(-2, -1))) / scale
  std_err = jnp.linalg.norm(jnp.sqrt(var_mc) - std, axis=(-2, -1)) / \
      jnp.linalg.norm(std, axis=(-2, -1))
  return np.asarray(gap), np.asarray(std_err)


def test_ensemble_matches_trained_finite_networks():
  """The seed's claim: 256 finite wide networks trained by gradient descent
  have the mean and standard deviation the infinite ensemble predicts."""
  init_fn, apply_fn, kernel_fn = _net(512)
  x_train = jnp.linspace(-2, 2, 8)[:, None]
  y_train = jnp.sin(2 * x_train)
  x_test = jnp.linspace(-3, 3, 13)[:, None]
  lr = 0.3 * predict.max_learning_rate(kernel_fn(x_train, None, "ntk"), 8)
  record = (10, 100, 500)
  _, f_test = nets.train_ensemble(init_fn, apply_fn, jax.random.PRNGKey(1),
                                  256, x_train, y_train, x_test, lr, record)
  ens = predict.gradient_descent_mse_ensemble(kernel_fn, x_train, y_train,
                                              learning_rate=lr)
  g = ens(jnp.array(record, jnp.float32), x_test, "ntk", compute_cov=True)
  gap, std_err = _stats(f_test.mean(0), f_test.var(0), g)
  # Monte Carlo error of 256 samples (~6% of a std) plus O(1/width) bias.
  assert np.all(gap < 0.1), gap
  assert np.all(std_err < 0.15), std_err


def test_mse_matches_trained_network_linearized_and_not():
  """One network of width 1024: its linearization trained by gradient
  descent follows `gradient_descent_mse` with its empirical NTK closely; the
  network itself follows it to O(1/sqrt(width)); the analytic NTK predicts
  its change too."""
  init_fn, apply_fn, kernel_fn = _net(1024)
  x_train = jnp.linspace(-2, 2, 8)[:, None]
  y_train = jnp.cos(2 * x_train)
  x_test = jnp.linspace(-3, 3, 9)[:, None]
  _, params = init_fn(jax.random.PRNGKey(2), (-1, 1))
  ntk_dd = nets.empirical_ntk(apply_fn, params, x_train, x_train)
  ntk_td = nets.empirical_ntk(apply_fn, params, x_test, x_train)
  lr = 0.1 * predict.max_learning_rate(ntk_dd, 8)
  steps = 300
  f0_train, f0_test = apply_fn(params, x_train), apply_fn(params, x_test)
  pf = predict.gradient_descent_mse(ntk_dd, y_train, learning_rate=lr)
  # Discrete steps of size lr vs continuous flow: match the discrete map's
  # eigenvalues by the step count (small lr, so the gap is O(lr)).
  pred_train, pred_test = pf(float(steps), f0_train, f0_test, ntk_td)
  f_lin = nets.linearize(apply_fn, params)
  lin_train, lin_test = nets.train(f_lin, params, x_train, y_train, x_test,
                                   lr, steps, (steps,))
  net_train, net_test = nets.train(apply_fn, params, x_train, y_train, x_test,
                                   lr, steps, (steps,))

  def rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
  change = pred_test - f0_test
  assert rel(lin_test[0] - f0_test, change) < 0.05
  assert rel(lin_train[0], pred_train) < 0.02
  assert rel(net_test[0] - f0_test, change) < 0.1
  assert rel(net_train[0], pred_train) < 0.05
  # Analytic NTK (infinite width) for the same initial outputs.
  pa = predict.gradient_descent_mse(kernel_fn(x_train, None, "ntk"), y_train,
                                    learning_rate=lr)
  _, pa_test = pa(float(steps), f0_train, f0_test,
                  kernel_fn(x_test, x_train, "ntk"))
  assert rel(net_test[0] - f0_test, pa_test - f0_test) < 0.15
