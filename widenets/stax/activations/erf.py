"""The erf family: `Erf` and `Sigmoid_like` (Williams 1997).

For ``phi(x) = a erf(b x) + c`` and ``(u, v)`` jointly Gaussian:

  ``E[phi(u) phi(v)] = a**2 (2 / pi) arcsin(2 b**2 cov /
  sqrt((1 + 2 b**2 var1)(1 + 2 b**2 var2))) + c**2``,
  ``E[phi'(u) phi'(v)] = a**2 b**2 (4 / pi) / sqrt((1 + 2 b**2 var1)
  (1 + 2 b**2 var2) - 4 b**4 cov**2)``.

``arcsin(p / q)`` is evaluated as ``arctan2(p, sqrt(q**2 - p**2))``, which
stays accurate when the correlation approaches +-1.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import erf

from .. import lax_ops
from ..sharing import hyperparameters
from .atan2 import atan2
from .base import elementwise_layer, safe_sqrt


def erf_rule(a: float, b: float, c: float):
  b2 = b**2

  def pair_rule(cov, var1, var2, ntk):
    # Cauchy-Schwarz, |cov| <= sqrt(var1 var2), against round-off: in a
    # chaotic deep network (large W_std) a correlation a few ulps above 1
    # grows layer by layer until the root below vanishes and the NTK is
    # infinite. The value only: derivatives stay those of cov (where x1 and
    # x2 coincide, round-off puts cov on either side of the bound, and the
    # bound's derivatives are not cov's).
    bound = safe_sqrt(var1 * var2)
    held = lax_ops.select(jnp.abs(cov) > bound, jnp.sign(cov) * bound, cov)
    cov = cov + jax.lax.stop_gradient(held - cov)
    prod = (1 + 2 * b2 * var1) * (1 + 2 * b2 * var2)
    root = safe_sqrt(prod - 4 * (b2 * cov)**2)
    new = a**2 * (2 / jnp.pi) * atan2(2 * b2 * cov, root) + c**2
    if ntk is not None:
      ntk = ntk * (a**2 * b2 * 4 / jnp.pi) / root
    return new, ntk

  return pair_rule


@hyperparameters("a", "b", "c")
def Erf(a: float = 1.0, b: float = 1.0, c: float = 0.0):
  """``a * erf(b * x) + c``."""
  return elementwise_layer(lambda x: a * erf(b * x) + c,
                           f"Erf({a}, {b}, {c})", erf_rule(a, b, c),
                           may_overflow=True)  # the NTK, at large W_std


@hyperparameters()
def Sigmoid_like():
  """``0.5 * erf(x / 2.4020563531719796) + 0.5``: the erf closest (in squared
  error on [-5, 5]) to the logistic sigmoid."""
  return Erf(a=0.5, b=1 / 2.4020563531719796, c=0.5)
