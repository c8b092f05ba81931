"""predict: NaN never passes; degenerate training kernels warn or agree."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from widenets import predict

N = 5


def _problem():
  rng = np.random.RandomState(0)
  a = rng.randn(N, N).astype(np.float32)
  k = a @ a.T / N + np.eye(N, dtype=np.float32)
  y = rng.randn(N, 1).astype(np.float32)
  k_td = rng.randn(3, N).astype(np.float32)
  return k, y, k_td


def test_nan_in_y_train_names_it():
  k, y, _ = _problem()
  y[1, 0] = np.nan
  with pytest.raises(ValueError, match="`y_train`.*NaN"):
    predict.gradient_descent_mse(k, y)
  with pytest.raises(ValueError, match="gp_inference: `y_train`"):
    predict.gp_inference(k, y)
  with pytest.raises(ValueError, match="gradient_descent: `y_train`"):
    predict.gradient_descent(lambda f, y: jnp.sum((f - y) ** 2), k, y)


def test_nan_in_k_test_train_names_it():
  k, y, k_td = _problem()
  k_td[0, 0] = np.nan
  with pytest.raises(ValueError, match="`k_test_train`.*NaN"):
    predict.gradient_descent_mse(k, y)(1., 0., 0., k_td)
  with pytest.raises(ValueError, match="gp_inference: `k_test_train`"):
    predict.gp_inference(k, y)("nngp", k_td)


def test_nan_in_k_train_train_names_it():
  k, y, _ = _problem()
  k[0, 0] = np.inf
  with pytest.raises(ValueError, match="`k_train_train`.*NaN or infinite"):
    predict.gradient_descent_mse(k, y)


@pytest.mark.parametrize("t", [np.nan, -np.inf, [1., np.nan]])
def test_bad_times(t):
  k, y, _ = _problem()
  with pytest.raises(ValueError, match=r"`t` contains"):
    predict.gradient_descent_mse(k, y)(t)


@pytest.mark.parametrize("t", [None, np.inf])
def test_zero_learning_rate_at_infinite_time(t):
  k, y, _ = _problem()
  with pytest.raises(ValueError, match=r"learning_rate=0.*0 \* inf"):
    predict.gradient_descent_mse(k, y, learning_rate=0.)(t, 0.)
  # finite times are fine: nothing trains
  out = predict.gradient_descent_mse(k, y, learning_rate=0.)(3., 0.)
  np.testing.assert_array_equal(out, 0.)


@pytest.mark.parametrize("lr", [np.nan, np.inf])
def test_bad_learning_rate(lr):
  k, y, _ = _problem()
  with pytest.raises(ValueError, match="`learning_rate` must be finite"):
    predict.gradient_descent_mse(k, y, learning_rate=lr)


def test_traced_inputs_skip_value_checks():
  k, y, k_td = _problem()

  @jax.jit
  def f(k, y, t):
    return predict.gradient_descent_mse(k, y)(t, 0., 0., k_td)
  out = f(k, y, 2.)
  ref = predict.gradient_descent_mse(k, y)(2., 0., 0., k_td)
  np.testing.assert_allclose(out[1], ref[1], rtol=1e-4, atol=1e-5)


def test_zero_kernel_none_equals_inf():
  _, y, _ = _problem()
  k = np.zeros((N, N), np.float32)
  f0 = np.full_like(y, 0.5)
  k_td = np.zeros((3, N), np.float32)
  fn = predict.gradient_descent_mse(k, y)
  a = fn(None, f0, 0.25, k_td)
  b = predict.gradient_descent_mse(k, y)(np.inf, f0, 0.25, k_td)
  for u, v in zip(a, b):
    np.testing.assert_allclose(u, v)
  # A zero kernel never trains: outputs stay at their initial values.
  np.testing.assert_allclose(a[0], f0)
  np.testing.assert_allclose(a[1], 0.25)


def test_pd_kernel_none_is_y_train():
  k, y, k_td = _problem()
  fn = predict.gradient_descent_mse(k, y)
  np.testing.assert_array_equal(fn(None, 0.), y)
  np.testing.assert_allclose(fn(None, 0., 0., k_td)[1],
                             predict.gradient_descent_mse(k, y)(
                                 np.inf, 0., 0., k_td)[1], rtol=1e-3,
                             atol=1e-4)


def test_asymmetric_kernel_warns_with_measured_value():
  k, y, _ = _problem()
  k[0, 1] += 1.
  with pytest.warns(RuntimeWarning, match=r"not symmetric: \|\|K - K\^T\|\| "
                    r"/ \|\|K\|\| = 0\.\d+"):
    predict.gradient_descent_mse(k, y)


def test_roundoff_asymmetry_does_not_warn(recwarn):
  k, y, _ = _problem()
  k = k + np.float32(1e-7) * np.triu(np.ones_like(k), 1) * k
  predict.gradient_descent_mse(k, y)(1., 0.)
  assert not [w for w in recwarn if "symmetric" in str(w.message)]


def test_indefinite_kernel_warns_with_eigenvalue():
  y = np.ones((4, 1), np.float32)
  k = np.diag([1., 2., -3., 1.]).astype(np.float32)
  fn = predict.gradient_descent_mse(k, y)
  with pytest.warns(RuntimeWarning, match=r"smallest eigenvalue is -3"):
    out = fn(np.inf, 0.)
  # The negative direction is frozen at its initial value (documented).
  np.testing.assert_allclose(out.ravel(), [1., 1., 0., 1.], atol=1e-6)
  np.testing.assert_allclose(fn(None, 0.), out)
