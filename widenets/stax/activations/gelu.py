"""`Gelu`: ``phi(x) = x Phi(x)`` with ``Phi`` the standard normal CDF.

NNGP from Tsuchida et al. 2020 ("Avoiding kernel fixed points"). With
``(u, v)`` jointly Gaussian, ``prod = var1 var2``, ``prod1 = (1 + var1)(1 +
var2)``, ``delta = sqrt(prod1 - cov**2)`` and ``angle = arcsin(cov /
sqrt(prod1)) = arctan2(cov, delta)``:

  ``E[phi(u) phi(v)] = cov / 4 + (cov angle + (cov**2 + prod delta**2) /
  (prod1 delta)) / (2 pi)``,
  ``E[phi'(u) phi'(v)] = 1 / 4 + angle / (2 pi) + cov / (2 pi delta) (1 +
  1 / delta**2 + (1 - prod) / prod1)``.

``delta >= 1`` always, so neither has a singularity.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ..sharing import hyperparameters
from .atan2 import atan2
from .base import elementwise_layer, sine_squared


def gelu_rule(cov, var1, var2, ntk):
  # Scaled so that nothing overflows at huge variances (deep or large-W_std
  # networks in float32): with ``s1 = sqrt(prod1)``, ``c = cov / s1`` lies
  # in [-1, 1] and ``(cov**2 + prod delta**2) / (prod1 delta) = c**2 / delta
  # + (prod / prod1) delta``.
  s1 = jnp.sqrt(1 + var1) * jnp.sqrt(1 + var2)
  # prod1 - cov**2 = 1 + var1 + var2 + (var1 var2 - cov**2): a sum of
  # non-negative terms, so no cancellation when the variances are huge.
  delta2 = 1 + var1 + var2 + sine_squared(cov, var1, var2)
  delta = jnp.sqrt(delta2)
  c = cov / s1
  ratio = (var1 / (1 + var1)) * (var2 / (1 + var2))
  angle = atan2(cov, delta)
  new = cov / 4 + (cov * angle + c**2 / delta + ratio * delta) / (2 * jnp.pi)
  if ntk is not None:
    dot = 0.25 + angle / (2 * jnp.pi) + cov / (2 * jnp.pi * delta) * (
        1 + 1 / delta2 + 1 / s1**2 - ratio)
    ntk = ntk * dot
  return new, ntk


@hyperparameters()
def Gelu(approximate: bool = False):
  """``x * Phi(x)``.

  Args:
    approximate: only for the finite-width ``apply_fn``: use the ``tanh``
      approximation of `jax.nn.gelu`. The kernel is always the exact one.
  """
  return elementwise_layer(
      lambda x: jax.nn.gelu(x, approximate=approximate), "Gelu", gelu_rule)
