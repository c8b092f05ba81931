"""predict.log_marginal_likelihood / leave_one_out_log_likelihood."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from widenets import predict, stax
from widenets.hyperparameters import evidence_fn


def _data(n=12, d=3, c=2, seed=0):
  rng = np.random.RandomState(seed)
  return rng.randn(n, d), rng.randn(n, c)


def _kernel(x):
  _, _, kernel_fn = stax.serial(stax.Dense(8, 1.3, 0.2), stax.Relu(),
                                stax.Dense(1, 1.3, 0.2))
  with jax.enable_x64(True):
    return np.asarray(kernel_fn(x, None, "nngp"), np.float64), kernel_fn


def _textbook_lml(k, y, noise):
  a = k + noise * np.eye(len(k))
  _, logdet = np.linalg.slogdet(a)
  n = len(k)
  return np.array([-0.5 * y[:, j] @ np.linalg.solve(a, y[:, j])
                   - 0.5 * logdet - 0.5 * n * np.log(2 * np.pi)
                   for j in range(y.shape[1])])


def _textbook_loo(k, y, noise):
  a = k + noise * np.eye(len(k))
  total = 0.
  for i in range(len(k)):
    m = np.arange(len(k)) != i
    w = np.linalg.solve(a[np.ix_(m, m)], a[m, i])
    mu, var = w @ y[m], a[i, i] - a[i, m] @ w
    total += np.sum(-0.5 * np.log(2 * np.pi * var) - (y[i] - mu)**2 /
                    (2 * var))
  return total


def test_lml_equals_textbook_formula():
  x, y = _data()
  k, _ = _kernel(x)
  ref = _textbook_lml(k, y, 0.1)
  with jax.enable_x64(True):
    got = predict.log_marginal_likelihood(k, y, 0.1, True, per_output=True)
    total = predict.log_marginal_likelihood(k, y, 0.1, True)
  np.testing.assert_allclose(got, ref, rtol=1e-10)
  np.testing.assert_allclose(total, ref.sum(), rtol=1e-10)


def test_lml_relative_regularizer_and_1d_targets():
  x, y = _data()
  k, _ = _kernel(x)
  noise = 0.05 * np.trace(k) / len(k)
  with jax.enable_x64(True):
    got = predict.log_marginal_likelihood(k, y[:, 0], 0.05)
  np.testing.assert_allclose(got, _textbook_lml(k, y[:, :1], noise)[0],
                             rtol=1e-10)


def test_lml_from_kernel_fn_and_kernel_object():
  x, y = _data()
  k, kernel_fn = _kernel(x)
  with jax.enable_x64(True):
    direct = predict.log_marginal_likelihood(k, y, 0.1, True)
    from_fn = predict.log_marginal_likelihood(kernel_fn, y, 0.1, True,
                                              x_train=x, get="nngp")
    kern = kernel_fn(x, None, ("nngp", "ntk"))
    from_obj = predict.log_marginal_likelihood(kern, y, 0.1, True, get="ntk")
  np.testing.assert_allclose(from_fn, direct, rtol=1e-10)
  k_ntk = np.asarray(kern.ntk)
  np.testing.assert_allclose(from_obj, _textbook_lml(k_ntk, y, 0.1).sum(),
                             rtol=1e-10)


def test_lml_float64_solve_of_float32_kernel():
  x, y = _data()
  k, _ = _kernel(x)
  got = predict.log_marginal_likelihood(k.astype(np.float32), y, 0.1, True,
                                        dtype="float64")
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, _textbook_lml(k, y, 0.1).sum(), rtol=1e-5)


def test_loo_equals_explicit_leave_one_out():
  x, y = _data()
  k, _ = _kernel(x)
  with jax.enable_x64(True):
    got = predict.leave_one_out_log_likelihood(k, y, 0.1, True)
    cols = predict.leave_one_out_log_likelihood(k, y, 0.1, True,
                                                per_output=True)
  np.testing.assert_allclose(got, _textbook_loo(k, y, 0.1), rtol=1e-8)
  assert cols.shape == (2,)
  np.testing.assert_allclose(np.sum(np.asarray(cols)), got, rtol=1e-10)


def test_jit_equals_eager():
  x, y = _data()
  k, _ = _kernel(x)
  with jax.enable_x64(True):
    for fn in (predict.log_marginal_likelihood,
               predict.leave_one_out_log_likelihood):
      eager = fn(k, y, 0.1, True)
      jitted = jax.jit(lambda k, y: fn(k, y, 0.1, True))(k, y)
      np.testing.assert_allclose(jitted, eager, rtol=1e-10)


def test_singular_kernel_escalates_with_warning():
  k = np.ones((6, 6))
  y = np.arange(6.)
  with jax.enable_x64(True), pytest.warns(RuntimeWarning, match="diag_reg"):
    got = predict.log_marginal_likelihood(k, y, 0.)
  assert np.isfinite(got)


def test_bad_input_is_named():
  x, y = _data()
  k, kernel_fn = _kernel(x)
  with pytest.raises(ValueError, match="log_marginal_likelihood.*y_train"):
    predict.log_marginal_likelihood(k, y[:5], 0.1)
  with pytest.raises(ValueError, match="x_train"):
    predict.log_marginal_likelihood(kernel_fn, y, 0.1)
  with pytest.raises(ValueError, match="square"):
    predict.leave_one_out_log_likelihood(k[:, :5], y, 0.1)
  with pytest.raises(ValueError, match="NaN or inf"):
    predict.log_marginal_likelihood(k * np.nan, y, 0.1)


def _dense(hp):
  return stax.serial(stax.Dense(8, hp["W_std"], hp["b_std"]), stax.Erf(),
                     stax.Dense(8, hp["W_std"], hp["b_std"]),
                     stax.ABRelu(hp["a"], hp["b"]),
                     stax.Dense(1, hp["W_std"], hp["b_std"]))


def _conv(hp):
  return stax.serial(
      stax.Conv(8, (2, 2), padding="SAME", W_std=hp["W_std"],
                b_std=hp["b_std"]), stax.ABRelu(hp["a"], hp["b"]),
      stax.Conv(8, (2, 2), padding="SAME", W_std=hp["W_std"],
                b_std=hp["b_std"]), stax.Relu(), stax.GlobalAvgPool(),
      stax.Dense(1, hp["W_std"], hp["b_std"]))


def _attention(hp):
  return stax.serial(
      stax.Dense(8, hp["W_std"], hp["b_std"]),
      stax.GlobalSelfAttention(8, 8, 8, 2, W_key_std=hp["W_std"],
                               W_query_std=hp["W_std"],
                               W_value_std=hp["W_std"],
                               W_out_std=hp["W_std"], b_std=hp["b_std"]),
      stax.ABRelu(hp["a"], hp["b"]), stax.GlobalAvgPool(),
      stax.Dense(1, hp["W_std"], hp["b_std"]))


_SLOW = pytest.mark.slow


@pytest.mark.parametrize("build, shape, get", [
    (_dense, (8, 3), "nngp"), (_dense, (8, 3), "ntk"),
    (_conv, (5, 3, 3, 2), "nngp"), (_attention, (5, 3, 2), "nngp"),
    pytest.param(_conv, (5, 3, 3, 2), "ntk", marks=_SLOW),
    pytest.param(_attention, (5, 3, 2), "ntk", marks=_SLOW)],
    ids=["dense-nngp", "dense-ntk", "conv-nngp", "attention-nngp",
         "conv-ntk", "attention-ntk"])
def test_lml_gradient_matches_finite_differences(build, shape, get):
  rng = np.random.RandomState(1)
  hp = {"W_std": 1.3, "b_std": 0.3, "a": -0.2, "b": 1.1}
  with jax.enable_x64(True):
    x = jnp.asarray(rng.randn(*shape))
    y = jnp.asarray(rng.randn(shape[0], 2))
    f = jax.jit(evidence_fn(build, x, y, get=get))
    g_hp, g_noise = jax.jit(jax.grad(f, argnums=(0, 1)))(hp, 0.2)
    eps = 1e-6
    for name in hp:
      up = dict(hp, **{name: hp[name] + eps})
      down = dict(hp, **{name: hp[name] - eps})
      fd = (f(up, 0.2) - f(down, 0.2)) / (2 * eps)
      np.testing.assert_allclose(g_hp[name], fd, rtol=2e-5, atol=1e-7,
                                 err_msg=name)
    fd = (f(hp, 0.2 + eps) - f(hp, 0.2 - eps)) / (2 * eps)
    np.testing.assert_allclose(g_noise, fd, rtol=2e-5)
    assert all(abs(float(v)) > 0 for v in g_hp.values())


def test_loo_gradient_matches_finite_differences():
  rng = np.random.RandomState(2)
  hp = {"W_std": 1.3, "b_std": 0.3, "a": -0.2, "b": 1.1}
  with jax.enable_x64(True):
    x = jnp.asarray(rng.randn(10, 3))
    y = jnp.asarray(rng.randn(10, 1))
    f = jax.jit(evidence_fn(_dense, x, y, criterion="loo"))
    g = jax.jit(jax.grad(f))(hp, 0.2)
    eps = 1e-6
    fd = (f(dict(hp, W_std=1.3 + eps), 0.2) -
          f(dict(hp, W_std=1.3 - eps), 0.2)) / (2 * eps)
    np.testing.assert_allclose(g["W_std"], fd, rtol=2e-5)


def test_float64_under_grad_without_x64_is_a_clear_error():
  if jax.config.jax_enable_x64:
    pytest.skip("x64 is on: float64 is available inside grad")
  k = jnp.eye(4, dtype=jnp.float32)
  with pytest.raises(ValueError, match="enable_x64"):
    jax.grad(lambda k: predict.log_marginal_likelihood(
        k, jnp.ones(4), 0.1, dtype="float64"))(k)
