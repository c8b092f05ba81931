"""The arc-cosine family: `ABRelu`, `Relu`, `LeakyRelu`, `Abs`, `Sign`.

With ``theta`` the angle between the two pre-activations (``cos theta =
cov / sqrt(var1 var2)``) and ``phi(x) = a min(x, 0) + b max(x, 0)``
(Cho & Saul 2009; Tsuchida et al. 2018):

  ``E[phi phi'] = (a - b)**2 / (2 pi) * (sqrt(var1 var2 - cov**2)
  - theta cov) + (a**2 + b**2) / 2 * cov``,
  ``E[phi' phi'] = (a**2 + b**2) / 2 - (a - b)**2 theta / (2 pi)``.

``theta`` comes from ``arctan2`` (stable at theta ~ 0 and ~ pi, unlike
``arccos``), and the square root has a finite derivative at 0, so kernels are
differentiable in their inputs even at ``x = 0``.
"""
from __future__ import annotations

import jax.numpy as jnp

from .. import lax_ops, validation
from ..sharing import hyperparameters
from .base import elementwise_layer, homogeneous_rescale, sine_and_angle


def abrelu_rule(a: float, b: float):
  def pair_rule(cov, var1, var2, ntk):
    # Derived here, not outside: see `activations.base`, "Hyperparameters".
    slope = (a - b)**2 / (2 * jnp.pi)
    mean_sq = (a**2 + b**2) / 2
    root, theta = sine_and_angle(cov, var1, var2)
    dot = mean_sq - slope * theta
    new = slope * root + dot * cov
    return new, (None if ntk is None else ntk * dot)

  return pair_rule


@hyperparameters("a", "b")
def ABRelu(a: float, b: float, do_stabilize: bool = False):
  """``a * min(x, 0) + b * max(x, 0)``.

  ``do_stabilize=True`` divides the covariances by their largest magnitude
  before the rule and multiplies back after (the rule is 1-homogeneous), which
  keeps very deep networks from overflowing in float32.
  """
  validation.finite_float("ABRelu", "a", a)
  validation.finite_float("ABRelu", "b", b)

  def fn(x):
    return a * jnp.minimum(x, 0) + b * jnp.maximum(x, 0)

  return elementwise_layer(
      fn, f"ABRelu({a}, {b})", abrelu_rule(a, b),
      prepare=homogeneous_rescale if do_stabilize else None,
      may_overflow=True)


@hyperparameters()
def Relu(do_stabilize: bool = False):
  """``max(x, 0)``."""
  return ABRelu(0, 1, do_stabilize)


@hyperparameters("alpha")
def LeakyRelu(alpha: float, do_stabilize: bool = False):
  """``alpha * min(x, 0) + max(x, 0)``."""
  validation.finite_float("LeakyRelu", "alpha", alpha)
  return ABRelu(alpha, 1, do_stabilize)


@hyperparameters()
def Abs(do_stabilize: bool = False):
  """``|x|``."""
  return ABRelu(-1, 1, do_stabilize)


def _sign_rule(cov, var1, var2, ntk):
  # E[sign u sign v] = 1 - 2 theta / pi; the derivative (2 delta) contributes
  # nothing to the NTK away from measure-zero events, as in neural-tangents.
  _, theta = sine_and_angle(cov, var1, var2)
  new = lax_ops.select((var1 == 0) | (var2 == 0), 0.0,
                       1 - 2 * theta / jnp.pi)
  return new, (None if ntk is None else jnp.zeros_like(ntk))


@hyperparameters()
def Sign():
  """``sign(x)``; its NTK contribution is zero."""
  return elementwise_layer(jnp.sign, "Sign", _sign_rule)
