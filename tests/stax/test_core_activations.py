"""The core activations (Relu, ABRelu, LeakyRelu, Abs, Erf, Sigmoid_like,
Sign): closed forms against Gauss-Hermite quadrature (exact, float64) and the
full network kernels against Monte Carlo of finite networks."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf as np_erf

from widenets import stax

from .mc import check_against_mc, inputs

# name -> (layer factory, numpy phi, numpy phi' or None, quadrature tolerance)
ACTIVATIONS = {
    "Relu": (stax.Relu, lambda x: np.maximum(x, 0), lambda x: 1.0 * (x > 0),
             5e-4),
    "ABRelu": (lambda: stax.ABRelu(-0.4, 1.3),
               lambda x: -0.4 * np.minimum(x, 0) + 1.3 * np.maximum(x, 0),
               lambda x: np.where(x > 0, 1.3, -0.4), 5e-4),
    "LeakyRelu": (lambda: stax.LeakyRelu(0.2),
                  lambda x: np.where(x > 0, x, 0.2 * x),
                  lambda x: np.where(x > 0, 1.0, 0.2), 5e-4),
    "Abs": (stax.Abs, np.abs, np.sign, 5e-4),
    "Erf": (lambda: stax.Erf(a=1.2, b=0.7, c=0.3),
            lambda x: 1.2 * np_erf(0.7 * x) + 0.3,
            lambda x: 1.2 * 0.7 * 2 / np.sqrt(np.pi) * np.exp(-(0.7 * x)**2),
            1e-5),
    "Sigmoid_like": (stax.Sigmoid_like,
                     lambda x: 0.5 * np_erf(x / 2.4020563531719796) + 0.5,
                     lambda x: 0.5 / 2.4020563531719796 * 2 / np.sqrt(np.pi) *
                     np.exp(-(x / 2.4020563531719796)**2), 1e-5),
    # sign' is a delta: its NTK contribution is zero by convention.
    "Sign": (stax.Sign, np.sign, lambda x: 0.0 * x, 1e-2),
}


def _gauss_expectation(f, g, var1, var2, cov, n=800):
  """``E[f(u) g(v)]`` for ``(u, v) ~ N(0, [[var1, cov], [cov, var2]])``, by
  the trapezoid rule on a fine grid (robust to kinks and jumps, unlike
  Gauss-Hermite; error O(h**2) for kinks, O(h) for jumps). ``n`` is even so
  no node sits on the kinks at 0."""
  z = np.linspace(-7.5, 7.5, n)
  w = np.exp(-z**2 / 2)
  w /= w.sum()
  z1, z2 = np.meshgrid(z, z, indexing="ij")
  u = np.sqrt(var1) * z1
  r = cov / np.sqrt(var1)
  v = r * z1 + np.sqrt(max(var2 - r**2, 0.0)) * z2
  return float(np.einsum("i,j,ij->", w, w, f(u) * g(v)))


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_closed_form_matches_quadrature(name):
  make, phi, dphi, tol = ACTIVATIONS[name]
  W_std, b_std = 1.3, 0.4
  _, _, kernel_fn = stax.serial(stax.Dense(1, W_std=W_std, b_std=b_std),
                                make())
  x = np.random.RandomState(0).randn(4, 5)
  x[3] = 0.6 * x[0] + 0.1 * x[1]  # a strongly correlated pair
  k = kernel_fn(jnp.asarray(x, jnp.float32), None, ("nngp", "ntk"))
  pre = W_std**2 * x @ x.T / x.shape[1] + b_std**2  # pre-activation NNGP
  nngp = np.zeros_like(pre)
  ntk = np.zeros_like(pre)
  for i in range(4):
    for j in range(i, 4):
      nngp[i, j] = nngp[j, i] = _gauss_expectation(phi, phi, pre[i, i],
                                                   pre[j, j], pre[i, j])
      ntk[i, j] = ntk[j, i] = pre[i, j] * _gauss_expectation(
          dphi, dphi, pre[i, i], pre[j, j], pre[i, j])
  scale = np.abs(nngp).max()
  np.testing.assert_allclose(k.nngp, nngp, atol=tol * scale, rtol=0)
  np.testing.assert_allclose(k.ntk, ntk, atol=tol * np.abs(pre).max(), rtol=0)


# Relu's kink makes quadrature converge slowly; its closed form is also
# pinned by the exact textbook value at zero correlation.
def test_relu_values_at_known_angles():
  _, _, kernel_fn = stax.serial(stax.Dense(1), stax.Relu())
  x = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [2.0, 0.0]])
  k = kernel_fn(x, None, ("nngp", "ntk"))
  v = 0.5  # pre-activation variance of each input
  np.testing.assert_allclose(k.nngp[0, 0], v / 2, rtol=1e-6)
  np.testing.assert_allclose(k.nngp[0, 1], v / (2 * np.pi), rtol=1e-6)
  np.testing.assert_allclose(k.nngp[0, 2], 0.0, atol=1e-7)
  np.testing.assert_allclose(k.nngp[0, 3], 2 * v / 2, rtol=1e-6)
  np.testing.assert_allclose(k.ntk[0, 0], v / 2, rtol=1e-6)
  np.testing.assert_allclose(k.ntk[0, 1], 0.0, atol=1e-7)
  np.testing.assert_allclose(k.ntk[0, 2], 0.0, atol=1e-7)


def _two_hidden_layers(make):
  return stax.serial(stax.Dense(512, W_std=1.5, b_std=0.2), make(),
                     stax.Dense(512, W_std=1.2, b_std=0.1), make(),
                     stax.Dense(512, W_std=0.9, b_std=0.1))


# Each closed form is pinned exactly by the quadrature test above; Monte Carlo
# checks the composition (second layer, NTK recursion, x2=None packing).
@pytest.mark.parametrize("name", ["Relu", "Erf"])
def test_matches_monte_carlo(name):
  x1, x2 = inputs()
  check_against_mc(_two_hidden_layers(ACTIVATIONS[name][0]), x1, x2,
                   n_samples=32, tol=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ABRelu", "LeakyRelu", "Abs",
                                  "Sigmoid_like", "Sign"])
def test_matches_monte_carlo_slow(name):
  x1, x2 = inputs()
  # Sign's kernel entries between different inputs are small, so the same
  # absolute Monte-Carlo noise is a larger relative error.
  check_against_mc(_two_hidden_layers(ACTIVATIONS[name][0]), x1, x2,
                   n_samples=32, tol=0.08 if name == "Sign" else 0.05)


def test_mixed_deep_network_matches_monte_carlo():
  # Every remaining core activation once, in one deep network (one Monte
  # Carlo run instead of five).
  net = stax.serial(
      # Sign first: nothing below it gets a gradient.
      stax.Dense(512, W_std=1.5, b_std=0.2), stax.Sign(),
      stax.Dense(512, W_std=1.2, b_std=0.1), stax.LeakyRelu(0.2),
      stax.Dense(512, W_std=1.2, b_std=0.1), stax.Abs(),
      stax.Dense(512, W_std=1.1, b_std=0.3), stax.ABRelu(-0.4, 1.3),
      stax.Dense(512, W_std=2.0, b_std=0.1), stax.Sigmoid_like(),
      stax.Dense(512, W_std=1.0, b_std=0.1))
  x1, x2 = inputs()
  print(check_against_mc(net, x1, x2, n_samples=32, tol=0.05))


@pytest.mark.parametrize("make", [stax.Relu, lambda **kw: stax.ABRelu(
    -0.3, 2.0, **kw), lambda **kw: stax.LeakyRelu(0.1, **kw), stax.Abs])
def test_do_stabilize_changes_nothing_but_scale(make):
  x1, x2 = inputs()
  kfs = [stax.serial(*[stax.Dense(1, W_std=3.0, b_std=0.5),
                       make(do_stabilize=s)] * 6, stax.Dense(1))[2]
         for s in (False, True)]
  for a, b in zip(*(kf(x1, x2, ("nngp", "ntk")) for kf in kfs)):
    np.testing.assert_allclose(a, b, rtol=2e-5)


def test_relu_family_is_homogeneous():
  # ABRelu is positively 1-homogeneous: scaling inputs (no bias) by t scales
  # the NNGP of a deep net by t**2.
  x1, x2 = inputs()
  _, _, kernel_fn = stax.serial(stax.Dense(1, W_std=1.4), stax.ABRelu(-.5, 1),
                                stax.Dense(1, W_std=1.4), stax.Abs(),
                                stax.Dense(1))
  k = kernel_fn(x1, x2, "nngp")
  np.testing.assert_allclose(kernel_fn(3 * x1, 3 * x2, "nngp"), 9 * k,
                             rtol=1e-5)


def test_abs_equals_abrelu_minus_one_one():
  x1, x2 = inputs()
  kf = lambda act: stax.serial(stax.Dense(1, b_std=0.3), act,
                               stax.Dense(1))[2](x1, x2, ("nngp", "ntk"))
  for a, b in zip(kf(stax.Abs()), kf(stax.ABRelu(-1, 1))):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_sign_ntk_is_readout_only():
  # sign has zero derivative almost everywhere: only the readout layer's
  # weights contribute, so the NTK equals the NNGP of the output.
  x1, x2 = inputs()
  _, _, kernel_fn = stax.serial(stax.Dense(1, b_std=0.2), stax.Sign(),
                                stax.Dense(1, W_std=1.5))
  k = kernel_fn(x1, x2, ("nngp", "ntk"))
  np.testing.assert_allclose(k.ntk, k.nngp, rtol=1e-6)
  # E[sign u sign u] = 1 on the diagonal.
  kd = kernel_fn(x1, None, "nngp")
  np.testing.assert_allclose(np.diag(kd), 1.5**2, rtol=1e-6)


def test_sigmoid_like_approximates_sigmoid():
  _, apply_fn, _ = stax.Sigmoid_like()
  x = jnp.linspace(-5, 5, 101)[:, None]
  np.testing.assert_allclose(apply_fn((), x), jax.nn.sigmoid(x), atol=0.02)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_apply_fn_matches_numpy(name):
  make, phi, _, _ = ACTIVATIONS[name]
  _, apply_fn, _ = make()
  x = np.linspace(-3, 3, 13, dtype=np.float32).reshape(13, 1)
  np.testing.assert_allclose(apply_fn((), jnp.asarray(x)), phi(x), rtol=1e-5,
                             atol=1e-6)
