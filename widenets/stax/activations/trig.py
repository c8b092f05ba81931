"""The trigonometric family: `Sin`, `Cos` and `Rbf`.

For ``phi(x) = a sin(b x + c)`` and ``(u, v)`` jointly Gaussian with
variances ``var1``, ``var2`` and covariance ``cov`` (characteristic function
of the Gaussian, ``E[exp(i t u)] = exp(-t**2 var / 2)``):

  ``E[phi(u) phi(v)] = a**2 / 2 * (exp(-b**2 (var1 + var2) / 2 + b**2 cov)
  - cos(2 c) exp(-b**2 (var1 + var2) / 2 - b**2 cov))``,
  ``E[phi'(u) phi'(v)] = a**2 b**2 / 2 * (exp(... + b**2 cov)
  + cos(2 c) exp(... - b**2 cov))``.

Both exponents are ``<= 0`` (``|cov| <= (var1 + var2) / 2``), so the rule
never overflows, at any depth or weight scale.
"""
from __future__ import annotations

import jax.numpy as jnp

from ..sharing import hyperparameters
from .base import elementwise_layer


def sin_rule(a: float, b: float, c: float, phase: float = 0.0):
  """The rule of ``a * sin(b * x + c + phase)``."""
  def pair_rule(cov, var1, var2, ntk):
    # Derived here, not outside: see `activations.base`, "Hyperparameters".
    b2 = b**2
    half_a2 = a**2 / 2
    cos2c = jnp.cos(2 * (c + phase))
    centre = -0.5 * b2 * (var1 + var2)
    plus = jnp.exp(centre + b2 * cov)
    minus = cos2c * jnp.exp(centre - b2 * cov)
    new = half_a2 * (plus - minus)
    if ntk is not None:
      ntk = ntk * (half_a2 * b2) * (plus + minus)
    return new, ntk

  return pair_rule


@hyperparameters("a", "b", "c")
def Sin(a: float = 1.0, b: float = 1.0, c: float = 0.0):
  """``a * sin(b * x + c)``."""
  return elementwise_layer(lambda x: a * jnp.sin(b * x + c),
                           f"Sin({a}, {b}, {c})", sin_rule(a, b, c))


@hyperparameters("a", "b", "c")
def Cos(a: float = 1.0, b: float = 1.0, c: float = 0.0):
  """``a * cos(b * x + c) = a * sin(b * x + c + pi / 2)``."""
  return elementwise_layer(lambda x: a * jnp.cos(b * x + c),
                           f"Cos({a}, {b}, {c})",
                           sin_rule(a, b, c, phase=jnp.pi / 2))


def rbf_rule(gamma: float):
  def pair_rule(cov, var1, var2, ntk):
    new = jnp.exp(gamma * (2 * cov - var1 - var2))
    if ntk is not None:
      ntk = ntk * (2 * gamma) * new
    return new, ntk

  return pair_rule


@hyperparameters("gamma")
def Rbf(gamma: float = 1.0):
  """The dual activation of the RBF kernel.

  ``phi(x) = sqrt(2) sin(sqrt(2 gamma) x + pi / 4)``, whose kernel is
  ``exp(-gamma (var1 + var2 - 2 cov))`` — for the first layer (``Dense``
  without bias, ``W_std = 1``) the squared-exponential kernel
  ``exp(-gamma ||x - x'||**2 / d)``; ``gamma = 1 / (2 l**2)`` for length
  scale ``l``. NTK factor: ``2 gamma`` times the NNGP.
  """
  fn = lambda x: jnp.sqrt(2.0) * jnp.sin(jnp.sqrt(2.0 * gamma) * x +
                                         jnp.pi / 4)
  return elementwise_layer(fn, f"Rbf({gamma})", rbf_rule(gamma))
