"""Numerical stress and properties of activation kernels: deep and
large-W_std networks in float32, correlations at +-1, symmetry and PSD."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from widenets import stax
from widenets.stax.activations.base import KernelOverflowError


def _deep(act, depth, W_std):
  return stax.serial(*([stax.Dense(8, W_std, 0.05), act] * depth),
                     stax.Dense(1, W_std, 0.05))[2]


X = np.random.RandomState(0).randn(4, 6).astype(np.float32)
X[1] = X[0] * 1.0001  # nearly parallel inputs: correlation ~1
X[2] = 0.0  # a zero input


@pytest.mark.parametrize("W_std", [1.0, 4.0])
def test_deep_erf_float32_finite(W_std):
  k = _deep(stax.Erf(), 50, W_std)(X, None, ("nngp", "ntk"))
  assert np.isfinite(k.nngp).all() and np.isfinite(k.ntk).all()
  # Bounded activation: |nngp| <= W_std**2 + b_std**2.
  assert np.abs(k.nngp).max() <= W_std**2 + 0.0025 + 1e-3


def test_deep_erf_large_w_std():
  # The NNGP stays bounded, but the NTK of this chaotic network grows ~10x
  # per layer (~1e50 at depth 50): an error in float32, finite in float64.
  kernel_fn = _deep(stax.Erf(), 50, 16.0)
  nngp = kernel_fn(X, None, "nngp")
  assert np.isfinite(nngp).all() and np.abs(nngp).max() <= 256.01
  with pytest.raises(Exception, match="enable_x64"):
    jax.block_until_ready(kernel_fn(X, None, "ntk"))
  with jax.enable_x64(True):
    ntk = kernel_fn(jnp.asarray(X, jnp.float64), None, "ntk")
    assert np.isfinite(ntk).all() and np.abs(ntk).max() > 1e38


@pytest.mark.parametrize("stabilize", [False, pytest.param(
    True, marks=pytest.mark.slow)])
def test_deep_relu_float32_finite_at_critical_scale(stabilize):
  if True:
    k = _deep(stax.Relu(do_stabilize=stabilize), 50, 2**0.5)(
        X, None, ("nngp", "ntk"))
    assert np.isfinite(k.nngp).all() and np.isfinite(k.ntk).all()
    # Parallel inputs stay parallel: correlation exactly representable.
    c = k.nngp[0, 1] / np.sqrt(k.nngp[0, 0] * k.nngp[1, 1])
    assert 0.999 < c <= 1 + 1e-6


def test_deep_relu_large_w_std_says_enable_float64():
  # (16**2 / 2)**50 ~ 1e105: beyond float32, within float64.
  kernel_fn = _deep(stax.Relu(), 50, 16.0)
  with pytest.raises(Exception, match="enable_x64"):
    jax.block_until_ready(kernel_fn(X, None, "nngp"))
  with jax.enable_x64(True):
    k = kernel_fn(jnp.asarray(X, jnp.float64), None, ("nngp", "ntk"))
    assert np.isfinite(k.nngp).all() and np.isfinite(k.ntk).all()
    assert np.abs(k.nngp).max() > 1e90


def test_overflow_error_type():
  assert issubclass(KernelOverflowError, FloatingPointError)


@pytest.mark.parametrize("make", [stax.Gelu, stax.Sin, stax.Tanh,
                                  stax.Gabor, lambda: stax.Gaussian(1, -1),
                                  stax.ExpNormalized, stax.Silu],
                         ids=["Gelu", "Sin", "Tanh", "Gabor", "Gaussian",
                              "ExpNormalized", "Silu"])
def test_large_w_std_and_parallel_inputs_finite(make):
  k = _deep(make(), 6, 16.0)(X, None, ("nngp", "ntk"))
  assert np.isfinite(k.nngp).all() and np.isfinite(k.ntk).all()


def test_doubly_exponential_growth_says_enable_float64():
  # (x)_+**2 squares the variance per layer: ~1e60 after 6 layers.
  with pytest.raises(Exception, match="RectifiedMonomial.*enable_x64"):
    jax.block_until_ready(_deep(stax.RectifiedMonomial(2), 6, 16.0)(
        X, None, "nngp"))


def test_quadrature_correlation_clipped():
  from widenets.stax.activations.quadrature import bivariate_expectation
  # cov slightly above sqrt(var1 var2) (round-off): treated as rho = 1.
  v = jnp.float32(2.0)
  over = bivariate_expectation(jnp.tanh, jnp.tanh, v * 1.0001, v, v, 20)
  exact = bivariate_expectation(jnp.tanh, jnp.tanh, v, v, v, 20)
  assert np.isfinite(over) and abs(float(over - exact)) < 1e-6
  zero = bivariate_expectation(jnp.tanh, jnp.tanh, 0.0, 0.0, v, 20)
  assert float(zero) == 0.0


ACTS = {
    "Gelu": stax.Gelu, "Sin": lambda: stax.Sin(1.0, 1.3, 0.2),
    "RectifiedMonomial2": lambda: stax.RectifiedMonomial(2),
    "Tanh": stax.Tanh, "Polynomial": lambda: stax.Polynomial([0.1, 1, .3]),
    "Gabor": stax.Gabor,
}


@functools.lru_cache(maxsize=None)
def _psd_net(name):
  # One kernel_fn per activation, so hypothesis examples reuse its compiled
  # computation instead of compiling a new network each time.
  return stax.serial(stax.Dense(8, 1.5, 0.1), ACTS[name](),
                     stax.Dense(8, 1.2, 0.1), ACTS[name]())[2]


@pytest.mark.parametrize("name", sorted(ACTS))
@settings(max_examples=5, deadline=None)
@given(x=hnp.arrays(np.float32, (5, 3),
                    elements=st.floats(-3, 3, width=32)))
def test_nngp_symmetric_psd(name, x):
  kernel_fn = _psd_net(name)
  k = kernel_fn(x, None, ("nngp", "ntk"))
  for m in (np.asarray(k.nngp, np.float64), np.asarray(k.ntk, np.float64)):
    assert np.isfinite(m).all()
    np.testing.assert_allclose(m, m.T, rtol=1e-5, atol=1e-6)
    scale = max(np.abs(m).max(), 1e-6)
    assert np.linalg.eigvalsh(m).min() >= -1e-4 * scale
  # x2 given equals the x2=None kernel.
  k2 = kernel_fn(x[:2], x[2:], "nngp")
  np.testing.assert_allclose(k2, k.nngp[:2, 2:], rtol=1e-4,
                             atol=1e-5 * np.abs(k.nngp).max())


@pytest.mark.parametrize("excess", [0.0, 1e-7, 1e-6, 1e-3])
def test_erf_rule_holds_round_off_above_cauchy_schwarz(excess):
  # A covariance a little above sqrt(var1 var2) (round-off in a chaotic
  # network) must not make the NTK's root vanish: the rule's root**2 is
  # floored at its value at |cov| = sqrt(var1 var2), with the formula's own
  # derivatives.
  from widenets.stax.activations.erf import erf_rule
  rule = erf_rule(1.0, 1.0, 0.0)
  var = jnp.float32(1e6)
  cov = var * (1 + excess)
  nngp, factor = rule(cov, var, var, jnp.float32(1.0))
  _, at_bound = rule(var, var, var, jnp.float32(1.0))
  assert np.isfinite(nngp) and np.isfinite(factor)
  np.testing.assert_allclose(factor, at_bound, rtol=1e-4)
  assert nngp <= 1.0  # (2 / pi) * arcsin(.) of a correlation near 1
  grads = jax.grad(lambda c: sum(rule(c, var, var, jnp.float32(1.0))))(cov)
  assert np.isfinite(grads)
