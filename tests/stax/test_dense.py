"""`Dense`: parameters and apply_fn as in neural-tangents, exact kernels of
linear layers, both parameterizations, and Monte Carlo of deep networks."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from widenets import stax

from .mc import check_against_mc, inputs


def _np(x):
  return np.asarray(x, np.float64)


# --- parameters and apply_fn -------------------------------------------------

def test_ntk_parameterization_params_and_apply():
  init_fn, apply_fn, _ = stax.Dense(7, W_std=1.7, b_std=0.3)
  out_shape, (W, b) = init_fn(jax.random.PRNGKey(0), (5, 4))
  assert out_shape == (5, 7)
  assert W.shape == (4, 7) and b.shape == (1, 7)
  # N(0, 1) weights: the scale lives in the forward pass.
  assert 0.5 < float(jnp.std(W)) < 1.5
  x = jax.random.normal(jax.random.PRNGKey(1), (5, 4))
  expected = 1.7 / np.sqrt(4) * _np(x) @ _np(W) + 0.3 * _np(b)
  np.testing.assert_allclose(apply_fn((W, b), x), expected, rtol=1e-5,
                             atol=1e-6)


def test_standard_parameterization_params_and_apply():
  init_fn, apply_fn, _ = stax.Dense(6, W_std=2.0, b_std=0.5,
                                    parameterization="standard", s=(2, 3))
  key = jax.random.PRNGKey(0)
  out_shape, (W, b) = init_fn(key, (5, 400))
  assert out_shape == (5, 18)  # s[1] * out_dim
  assert W.shape == (400, 18) and b.shape == (1, 18)
  # W ~ N(0, W_std**2 / (n_in / s[0])), b ~ N(0, b_std**2): the same draws as
  # the 'ntk' parameterization, rescaled.
  _, (W0, b0) = stax.Dense(18, b_std=1.0)[0](key, (5, 400))
  np.testing.assert_allclose(W, W0 * 2.0 / np.sqrt(400 / 2), rtol=1e-6)
  np.testing.assert_allclose(b, b0 * 0.5, rtol=1e-6)
  x = jax.random.normal(jax.random.PRNGKey(1), (5, 400))
  expected = _np(x) @ _np(W) / np.sqrt(2) + _np(b)
  np.testing.assert_allclose(apply_fn((W, b), x), expected, rtol=1e-4,
                             atol=1e-5)


def test_no_bias():
  init_fn, apply_fn, _ = stax.Dense(3, b_std=None)
  _, (W, b) = init_fn(jax.random.PRNGKey(0), (2, 4))
  assert b is None
  x = jnp.ones((2, 4))
  np.testing.assert_allclose(apply_fn((W, None), x), x @ W / 2, rtol=1e-6)


def test_spatial_inputs_act_on_channel_axis():
  init_fn, apply_fn, _ = stax.Dense(3, b_std=0.1)
  out_shape, (W, b) = init_fn(jax.random.PRNGKey(0), (2, 5, 4))
  assert out_shape == (2, 5, 3) and b.shape == (1, 1, 3)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 4))
  out = apply_fn((W, b), x)
  np.testing.assert_allclose(out[:, 2], apply_fn((W, b[0]), x[:, 2]),
                             rtol=1e-6)


def test_channel_axis_first():
  init_fn, apply_fn, kernel_fn = stax.Dense(3, W_std=1.3, b_std=0.2,
                                            batch_axis=1, channel_axis=0)
  out_shape, (W, b) = init_fn(jax.random.PRNGKey(0), (4, 5))
  assert out_shape == (3, 5) and W.shape == (4, 3) and b.shape == (3, 1)
  x1, x2 = inputs(5, 3, (4,))
  _, apply_ref, kernel_ref = stax.Dense(3, W_std=1.3, b_std=0.2)
  np.testing.assert_allclose(apply_fn((W, b), x1.T),
                             apply_ref((W, b.T), x1).T, rtol=1e-6)
  for a, r in zip(kernel_fn(x1.T, x2.T, ("nngp", "ntk")),
                  kernel_ref(x1, x2, ("nngp", "ntk"))):
    np.testing.assert_allclose(a, r, rtol=1e-6)


# --- exact kernels -----------------------------------------------------------

@pytest.mark.parametrize("b_std", [None, 0.0, 0.7])
def test_single_layer_kernel_is_exact(b_std):
  x1, x2 = inputs()
  _, _, kernel_fn = stax.Dense(5, W_std=1.3, b_std=b_std)
  b_var = 0.0 if b_std is None else b_std**2
  for a, b in ((x1, x2), (x1, None)):
    k = kernel_fn(a, b)
    bb = a if b is None else b
    nngp = 1.3**2 * _np(a) @ _np(bb).T / a.shape[1] + b_var
    np.testing.assert_allclose(k.nngp, nngp, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(k.ntk, nngp, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(k.cov1, np.diag(
        1.3**2 * _np(a) @ _np(a).T / a.shape[1] + b_var), rtol=1e-5)
    if b is None:
      assert k.cov2 is None
    else:
      np.testing.assert_allclose(k.cov2, np.diag(
          1.3**2 * _np(b) @ _np(b).T / b.shape[1] + b_var), rtol=1e-5)


def test_standard_vs_ntk_parameterization_exact():
  # One layer on inputs: same NNGP; standard NTK = n_in * input covariance
  # (the weight gradients are not scaled down) + 1 for the bias.
  x1, x2 = inputs()
  d = x1.shape[1]
  lin = _np(x1) @ _np(x2).T / d
  for b_std in (None, 0.4):
    b_var = 0.0 if b_std is None else b_std**2
    k_ntk = stax.Dense(3, W_std=1.5, b_std=b_std)[2](x1, x2)
    k_std = stax.Dense(3, W_std=1.5, b_std=b_std,
                       parameterization="standard")[2](x1, x2)
    np.testing.assert_allclose(k_std.nngp, k_ntk.nngp, rtol=1e-6)
    np.testing.assert_allclose(k_ntk.ntk, 1.5**2 * lin + b_var, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(
        k_std.ntk, d * lin + (0.0 if b_std is None else 1.0), rtol=1e-5,
        atol=1e-5)


def test_standard_ntk_uses_finite_width_and_s():
  # Second layer: standard NTK = (width / s[0]) * nngp + W_std**2 * ntk + 1.
  x1, x2 = inputs()
  first = stax.Dense(40, W_std=1.2, b_std=0.1, parameterization="standard",
                     s=(1, 2))
  k1 = stax.serial(first, stax.Relu())[2](x1, x2)
  k2 = stax.serial(first, stax.Relu(),
                   stax.Dense(3, W_std=0.8, b_std=0.2,
                              parameterization="standard", s=(2, 1)))[2](
                                  x1, x2)
  width = 40 * 2 / 2
  np.testing.assert_allclose(k2.ntk, width * _np(k1.nngp) +
                             0.8**2 * _np(k1.ntk) + 1.0, rtol=1e-5)
  np.testing.assert_allclose(k2.nngp, 0.8**2 * _np(k1.nngp) + 0.04,
                             rtol=1e-5)


def test_ntk_parameterization_ignores_width():
  x1, x2 = inputs()
  ks = [stax.serial(stax.Dense(w, b_std=0.1), stax.Erf(),
                    stax.Dense(w))[2](x1, x2, ("nngp", "ntk"))
        for w in (1, 1000)]
  for a, b in zip(*ks):
    np.testing.assert_array_equal(a, b)


def test_spatial_inputs_kernel():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 5))
  _, _, kernel_fn = stax.Dense(2, W_std=1.1, b_std=0.3)
  k = kernel_fn(x, None, ("nngp", "cov1"))
  ref = 1.1**2 * np.einsum("ixc,jyc->ijxy", _np(x), _np(x)) / 5 + 0.09
  assert k.nngp.shape == (3, 3, 4, 4)
  np.testing.assert_allclose(k.nngp, ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(k.cov1, np.einsum("iixy->ixy", ref), rtol=1e-5,
                             atol=1e-6)
  kd = kernel_fn(x, None, "nngp", diagonal_spatial=True)
  np.testing.assert_allclose(kd, np.einsum("ijxx->ijx", ref), rtol=1e-5,
                             atol=1e-6)


# --- Monte Carlo -------------------------------------------------------------

def test_single_layer_matches_monte_carlo():
  x1, x2 = inputs()
  check_against_mc(stax.Dense(512, W_std=1.3, b_std=0.4), x1, x2,
                   n_samples=16)


@pytest.mark.slow  # b_std=None is also pinned exactly above
def test_deep_no_bias_matches_monte_carlo():
  net = stax.serial(stax.Dense(512, W_std=1.4), stax.Relu(),
                    stax.Dense(512, W_std=1.4), stax.Relu(),
                    stax.Dense(512, W_std=1.0))
  x1, x2 = inputs()
  check_against_mc(net, x1, x2, n_samples=32)


def test_standard_parameterization_matches_monte_carlo():
  # Hidden widths 2 * 256 = 512; s chains as s_out of one layer = s_in of
  # the next, as neural-tangents requires.
  std = dict(parameterization="standard")
  net = stax.serial(
      stax.Dense(256, W_std=1.5, b_std=0.2, s=(1, 2), **std), stax.Relu(),
      stax.Dense(256, W_std=1.3, b_std=0.3, s=(2, 2), **std), stax.Erf(),
      stax.Dense(512, W_std=1.0, b_std=0.1, s=(2, 1), **std))
  x1, x2 = inputs()
  check_against_mc(net, x1, x2, n_samples=32)
