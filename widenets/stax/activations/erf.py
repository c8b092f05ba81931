"""The erf family: `Erf` and `Sigmoid_like` (Williams 1997).

For ``phi(x) = a erf(b x) + c`` and ``(u, v)`` jointly Gaussian:

  ``E[phi(u) phi(v)] = a**2 (2 / pi) arcsin(2 b**2 cov /
  sqrt((1 + 2 b**2 var1)(1 + 2 b**2 var2))) + c**2``,
  ``E[phi'(u) phi'(v)] = a**2 b**2 (4 / pi) / sqrt((1 + 2 b**2 var1)
  (1 + 2 b**2 var2) - 4 b**4 cov**2)``.

``arcsin(p / q)`` is evaluated as ``arctan2(p, sqrt(q**2 - p**2))``, which
stays accurate when the correlation approaches +-1, and shares its root
``q**2 - p**2`` with the NTK's factor.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import erf

from ..sharing import hyperparameters
from .atan2 import atan2
from .base import elementwise_layer


def erf_rule(a: float, b: float, c: float):
  def pair_rule(cov, var1, var2, ntk):
    b2 = b**2  # here, not outside: see `activations.base`, "Hyperparameters"
    # root**2 = p1 p2 - 4 b**4 cov**2 is at least p1 + p2 - 1 =
    # 1 + 2 b**2 (var1 + var2) wherever |cov| <= sqrt(var1 var2) (Cauchy-
    # Schwarz), and held there against round-off: in a chaotic deep network
    # (large W_std) a correlation a few ulps above 1 would otherwise grow
    # layer by layer until the root vanished and the NTK was infinite. The
    # value only: derivatives stay those of the formula (where x1 and x2
    # coincide, round-off puts it on either side of the bound).
    # Written for XLA: one square root, one reciprocal square root and no
    # division, so that the whole rule fuses into the kernel computing the
    # layer's covariance and the NTK's chain (a root shared by the angle and
    # the NTK, or a clamp through sqrt(var1 var2), each cost a full-size
    # temporary and a compiled kernel per layer).
    p1, p2 = 1 + 2 * b2 * var1, 1 + 2 * b2 * var2
    raw = p1 * p2 - 4 * (b2 * cov)**2
    root2 = raw + jax.lax.stop_gradient(jnp.maximum(raw, p1 + p2 - 1) - raw)
    new = a**2 * (2 / jnp.pi) * atan2(2 * b2 * cov, jnp.sqrt(root2)) + c**2
    if ntk is not None:
      ntk = ntk * (a**2 * b2 * 4 / jnp.pi) * jax.lax.rsqrt(root2)
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
