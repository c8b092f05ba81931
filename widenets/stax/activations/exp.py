"""The exponential family: `Exp`, `Gaussian`, `ExpNormalized`, `Gabor`.

With ``(u, v)`` jointly Gaussian (variances ``var1``, ``var2``, covariance
``cov``), ``sum = var1 + var2`` and ``prod = var1 var2``:

* ``Exp``, ``phi = a exp(b x)``: ``E[phi phi'] = a**2 exp(b**2 (sum / 2 +
  cov))``; NTK factor ``b**2`` times that.
* ``Gaussian``, ``phi = a exp(b x**2)``: ``E[phi phi'] = a**2 / sqrt((1 - 2 b
  var1)(1 - 2 b var2) - 4 b**2 cov**2)`` (finite only where the bracket is
  positive, e.g. always for ``b < 0``); NTK factor ``4 a**2 b**2 cov /
  det**3`` with ``det`` that square root.
* ``ExpNormalized`` (no finite-width function): ``sqrt(prod) exp(gamma (rho
  + shift))`` with the correlation ``rho = cov / sqrt(prod)``, the "Gaussian
  normalized kernel" of Shankar et al. 2020; NTK factor ``gamma exp(gamma
  (rho + shift))``.
* ``Gabor``, ``phi = exp(-x**2) sin(x)``: see `gabor_rule`.
"""
from __future__ import annotations

import jax.numpy as jnp

from ..sharing import hyperparameters
from .base import correlation, elementwise_layer, safe_sqrt


def exp_rule(a: float, b: float):
  def pair_rule(cov, var1, var2, ntk):
    b2 = b**2  # here, not outside: see `activations.base`, "Hyperparameters"
    new = a**2 * jnp.exp(b2 * (0.5 * (var1 + var2) + cov))
    return new, (None if ntk is None else ntk * b2 * new)

  return pair_rule


@hyperparameters("a", "b")
def Exp(a: float = 1.0, b: float = 1.0):
  """``a * exp(b * x)``. The kernel grows like ``exp(2 b**2 var)``: in
  float32 it overflows once a variance exceeds ``~44 / b**2``."""
  return elementwise_layer(lambda x: a * jnp.exp(b * x), f"Exp({a}, {b})",
                           exp_rule(a, b), may_overflow=True)


def gaussian_rule(a: float, b: float):
  def pair_rule(cov, var1, var2, ntk):
    # Derived here, not outside: see `activations.base`, "Hyperparameters".
    four_b2 = 4 * b**2
    prod = (1 - 2 * b * var1) * (1 - 2 * b * var2)
    det = safe_sqrt(prod - four_b2 * cov**2)
    new = a**2 / det
    if ntk is not None:
      ntk = ntk * (a**2 * four_b2) * cov / det**3
    return new, ntk

  return pair_rule


@hyperparameters("a", "b")
def Gaussian(a: float = 1.0, b: float = -1.0):
  """``a * exp(b * x**2)``."""
  return elementwise_layer(lambda x: a * jnp.exp(b * x**2),
                           f"Gaussian({a}, {b})", gaussian_rule(a, b))


def exp_normalized_rule(gamma: float, shift: float):
  def pair_rule(cov, var1, var2, ntk):
    rho, s = correlation(cov, var1, var2)
    # As neural-tangents: the norm is floored at 1e-15 (sqrt(1e-30)).
    s = jnp.maximum(s, 1e-15)
    e = jnp.exp(gamma * (rho + shift))
    return s * e, (None if ntk is None else ntk * gamma * e)

  return pair_rule


@hyperparameters("gamma", "shift")
def ExpNormalized(gamma: float = 1.0, shift: float = -1.0,
                  do_clip: bool = False):
  """The "Gaussian normalized kernel" (Shankar et al. 2020, p. 6):
  ``sqrt(var1 var2) exp(gamma (cov / sqrt(var1 var2) + shift))``.

  There is no finite-width function (``apply_fn`` raises). The correlation
  is always clipped into ``[-1, 1]`` (``do_clip`` is accepted for
  neural-tangents compatibility; clipping only removes round-off).
  """
  del do_clip
  return elementwise_layer(None, f"ExpNormalized({gamma}, {shift})",
                           exp_normalized_rule(gamma, shift))


def gabor_rule():
  """``phi(x) = exp(-x**2) sin(x)``.

  With ``sum``, ``prod`` as above, ``diff = 4 (prod - cov**2)`` (4 times the
  determinant), ``den = 1 + 2 sum + diff`` and ``num = sum + diff + 2 cov``:

    ``E[phi phi'] = exp(-num / (2 den)) (exp(2 cov / den) - 1) /
    (2 sqrt(den))``.

  The NTK factor, ``E[phi'(u) phi'(v)]``, is the derivative of that in
  ``cov`` (Price's theorem), written out in closed form below.
  """
  def pair_rule(cov, var1, var2, ntk):
    total = var1 + var2
    diff = 4 * (var1 * var2 - cov**2)
    den = 1 + 2 * total + diff
    left = jnp.exp(-(total + diff + 2 * cov) / (2 * den))
    right = jnp.exp(2 * cov / den)
    if ntk is not None:
      shared = 1 + 2 * total + 4 * (cov**2 + var1 * var2)
      skew = 4 * cov * (diff + 3 * total + 2)
      dot = left * ((shared - skew) + right * (shared + skew))
      ntk = ntk * dot / (2 * den**2.5)
    return left * (right - 1) / (2 * safe_sqrt(den)), ntk

  return pair_rule


@hyperparameters()
def Gabor():
  """``exp(-x**2) * sin(x)``."""
  return elementwise_layer(lambda x: jnp.exp(-x**2) * jnp.sin(x), "Gabor",
                           gabor_rule())
