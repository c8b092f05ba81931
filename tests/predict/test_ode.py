"""`gradient_descent` (ODE), `ODEState`, momentum, `max_learning_rate`, and
the Dormand-Prince solver `odeint`."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from widenets import predict


def mse(f, y):
  return 0.5 * jnp.mean((f - y) ** 2)


@pytest.fixture(scope="module")
def problem():
  k1, k2, k3, k4, k5 = jax.random.split(jax.random.PRNGKey(0), 5)
  a = jax.random.normal(k1, (13, 13))
  k = a @ a.T / 13 + 0.1 * jnp.eye(13)
  return dict(k=k[:8, :8], k_td=k[8:, :8], y=jax.random.normal(k2, (8, 2)),
              f0=jax.random.normal(k3, (8, 2)) * 0.3,
              ft0=jax.random.normal(k4, (5, 2)) * 0.3)


def test_ode_mse_equals_closed_form(problem):
  p = problem
  ts = jnp.array([0., 0.5, 3., 20.])
  ode = predict.gradient_descent(mse, p["k"], p["y"], learning_rate=0.7)
  closed = predict.gradient_descent_mse(p["k"], p["y"], learning_rate=0.7)
  a, b = ode(ts, p["f0"], p["ft0"], p["k_td"])
  a_ref, b_ref = closed(ts, p["f0"], p["ft0"], p["k_td"])
  assert a.shape == (4, 8, 2) and b.shape == (4, 5, 2)
  np.testing.assert_allclose(a, a_ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(b, b_ref, rtol=1e-4, atol=1e-4)


def test_ode_t_none_converges_to_kernel_regression(problem):
  p = problem
  ode = predict.gradient_descent(mse, p["k"], p["y"])
  closed = predict.gradient_descent_mse(p["k"], p["y"])
  a, b = ode(None, p["f0"], p["ft0"], p["k_td"])
  a_ref, b_ref = closed(None, p["f0"], p["ft0"], p["k_td"])
  np.testing.assert_allclose(a, a_ref, atol=1e-3)
  np.testing.assert_allclose(b, b_ref, atol=1e-3)


def test_resume_from_state_equals_one_long_run(problem):
  p = problem
  for momentum in (None, 0.9):
    ode = predict.gradient_descent(mse, p["k"], p["y"], learning_rate=0.5,
                                   momentum=momentum)
    state_0 = predict.ODEState(p["f0"], p["ft0"])
    long = ode(jnp.array([2., 5.]), state_0, k_test_train=p["k_td"])
    mid = ode(2., state_0, k_test_train=p["k_td"])
    assert isinstance(mid, predict.ODEState)
    if momentum is not None:
      assert mid.qx_train.shape == (8, 2) and mid.qx_test.shape == (5, 2)
    end = ode(3., mid, k_test_train=p["k_td"])
    np.testing.assert_allclose(end.fx_train, long.fx_train[1], atol=1e-4)
    np.testing.assert_allclose(end.fx_test, long.fx_test[1], atol=1e-4)


def test_momentum_matches_discrete_heavy_ball(problem):
  """Heavy-ball steps ``v <- m v - lr K grad; f <- f + v`` at a small
  learning rate follow the momentum ODE with t in units of sqrt(lr)."""
  p = problem
  lr, m, steps = 1e-3, 0.9, 600
  k, y = p["k"], p["y"]
  grad = jax.grad(lambda f: mse(f, y))

  def step(state, _):
    f, v = state
    v = m * v - lr * k @ grad(f)
    return (f + v, v), None
  (f, _), _ = jax.lax.scan(step, (p["f0"], jnp.zeros_like(p["f0"])), None,
                           length=steps)
  ode = predict.gradient_descent(mse, k, y, learning_rate=lr, momentum=m)
  f_ode = ode(float(steps), p["f0"])
  change = f_ode - p["f0"]
  assert float(jnp.linalg.norm(f - f_ode) / jnp.linalg.norm(change)) < 0.05
  # Momentum trains faster than plain gradient descent for the same steps.
  plain = predict.gradient_descent(mse, k, y, learning_rate=lr)(
      float(steps), p["f0"])
  assert mse(f_ode, y) < mse(plain, y)


def test_cross_entropy_runs_and_decreases_loss(problem):
  p = problem
  labels = jax.nn.one_hot(jnp.argmax(p["y"], -1), 2)

  def xent(f, y):
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(f) * y, -1))
  ode = predict.gradient_descent(xent, p["k"], labels, learning_rate=1.)
  f = ode(jnp.array([0., 1., 10.]), p["f0"], p["ft0"], p["k_td"])[0]
  losses = [float(xent(fi, labels)) for fi in f]
  assert losses[0] > losses[1] > losses[2]


def test_ode_jit(problem):
  p = problem

  @jax.jit
  def run(k, y, f0):
    return predict.gradient_descent(mse, k, y)(jnp.array([1., 2.]), f0)
  out = run(p["k"], p["y"], p["f0"])
  ref = predict.gradient_descent_mse(p["k"], p["y"])(jnp.array([1., 2.]),
                                                     p["f0"])
  np.testing.assert_allclose(out, ref, atol=1e-4)


def test_max_learning_rate(problem):
  k = problem["k"]
  lam = float(np.linalg.eigvalsh(np.asarray(k, np.float64))[-1])
  np.testing.assert_allclose(predict.max_learning_rate(k), 2 * 8 / lam,
                             rtol=1e-5)
  np.testing.assert_allclose(predict.max_learning_rate(k, 16, momentum=0.5),
                             2 * 1.5 * 16 / lam, rtol=1e-5)


@settings(max_examples=10, deadline=None)
@given(st.floats(0.5, 0.97), st.floats(1.03, 1.5))
def test_max_learning_rate_is_the_stability_edge(below, above):
  """Discrete gradient descent on MSE converges just below it and diverges
  just above it."""
  k = np.array([[2., 0.3, 0.], [0.3, 1., 0.1], [0., 0.1, 0.4]])
  y = np.ones((3, 1))
  lr_max = float(predict.max_learning_rate(jnp.asarray(k, jnp.float32)))

  def final_loss(lr):
    f = np.zeros((3, 1))
    with np.errstate(all="ignore"):
      for _ in range(400):
        f = f - lr * k @ (f - y) / y.size
      return float(np.sum((f - y) ** 2))
  assert final_loss(below * lr_max) < 1e-2
  assert not final_loss(above * lr_max) < 1.     # diverges (or overflows)


def test_odeint_exponential_and_pytrees():
  ts = jnp.array([0., 0.1, 1., 1., 3.])
  ys = predict.odeint(lambda y, t: {"a": -y["a"], "b": 2 * t * jnp.ones(2)},
                      {"a": jnp.ones(3), "b": jnp.zeros(2)}, ts)
  np.testing.assert_allclose(ys["a"][:, 0], jnp.exp(-ts), rtol=1e-5)
  np.testing.assert_allclose(ys["b"][:, 0], ts ** 2, rtol=1e-5, atol=1e-6)


def test_step_error_keeps_nan_of_large_states():
  # A NaN anywhere in the error estimate must reject the step: the maximum
  # over a large state keeps it (XLA:CPU's library max skips NaN).
  from widenets.predict.odeint import _err_norm
  rs = np.random.RandomState(0)
  y = {"a": jnp.asarray(rs.randn(3, 100000), jnp.float32),
       "b": jnp.ones(4)}
  err = {"a": 1e-12 * y["a"], "b": jnp.zeros(4)}
  assert float(_err_norm(err, y, y, 1e-6, 1e-6)) < 1.
  bad = np.array(err["a"])
  bad[2, 54321] = np.nan
  err["a"] = jnp.asarray(bad)
  assert np.isnan(float(_err_norm(err, y, y, 1e-6, 1e-6)))
  assert np.isnan(float(jax.jit(_err_norm)(err, y, y, 1e-6, 1e-6)))


def test_nan_step_is_retried_shorter():
  # A long step overshoots into the region where the field is NaN: a shorter
  # step mends it (the NaN error used to grow the step, and the last finite
  # state was returned for every later time).
  f = lambda y, t: jnp.where(y < 0, jnp.nan, -5. * y)
  ts = np.array([0., 1., 3., 6.])
  ys = predict.odeint(f, jnp.ones(2), jnp.asarray(ts), rtol=1e-3, atol=1e-3)
  np.testing.assert_allclose(ys[:, 0], np.exp(-5 * ts), rtol=2e-2)


def test_nan_field_gives_nan_not_a_stale_state():
  f = lambda y, t: jnp.where(t > 0.5, jnp.nan, -y)
  ts = jnp.array([0., 0.3, 1., 2., jnp.inf])
  ys = np.asarray(predict.odeint(f, jnp.ones(3), ts))
  np.testing.assert_allclose(ys[1], np.exp(-0.3), rtol=1e-5)
  assert np.isnan(ys[2:]).all()
