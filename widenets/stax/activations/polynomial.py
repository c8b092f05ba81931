"""The polynomial family: `Polynomial`, `Monomial`, `Hermite`,
`RectifiedMonomial`.

**Polynomials** (Mehler's formula). Write ``u = sqrt(var) x`` with ``x`` standard
normal and expand ``f(u) = sum_i c_i u**i`` in the probabilists' Hermite
basis; the joint moments of a correlated pair only couple equal Hermite
degrees, which gives, for ``(u, v)`` with variances ``var1``, ``var2`` and
covariance ``cov``:

  ``E[f(u) f(v)] = sum_l cov**l P_l(var1) P_l(var2)``,
  ``P_l(q) = sum_i c_{2i+l} (2i+l)! / (2**i i! sqrt(l!)) q**i``,

a polynomial in ``(cov, var1, var2)`` — no square roots, so it is exact at
zero variance and smooth everywhere. The NTK factor ``E[f'(u) f'(v)]`` is its
``cov``-derivative (Price's theorem): ``sum_l l cov**(l-1) P_l P_l``.

**Rectified monomials** ``(x >= 0) x**n`` (arc-cosine kernels of order n, Cho
& Saul 2009): with ``rho = cos(theta)`` the correlation,

  ``E = (var1 var2)**(n/2) (A_n(rho) sin(theta) + B_n(rho) (pi - theta)) /
  (2 pi)``

for polynomials ``A_n`` (degree ``n - 1``) and ``B_n`` (degree ``n``),
computed exactly (rational arithmetic) from Price's theorem ``d/drho k_n =
n**2 k_{n-1}``, ``k_0 = (pi - theta) / (2 pi)``. Multiplied out, every term
is ``cov**m (var1 var2)**j`` times ``sqrt(var1 var2 - cov**2)`` or ``theta``
— again no division, stable at ``theta -> 0`` where neural-tangents' nested
autodiff of ``(pi - theta) / sin(theta)`` is not.
"""
from __future__ import annotations

import fractions
import math
import warnings
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from .base import elementwise_layer, sine_and_angle


class DegreeError(ValueError, NotImplementedError):
  """An unsupported polynomial degree (a ``ValueError``, and a
  ``NotImplementedError`` as neural-tangents raised)."""


# --- polynomials -------------------------------------------------------------

def hermite_weights(coef: Sequence[float]) -> list:
  """``[P_0, P_1, ...]``: coefficient lists (ascending powers of ``q``)."""
  coef = [float(c) for c in coef]
  out = []
  for l in range(len(coef)):
    p = [coef[2 * i + l] * math.factorial(2 * i + l) /
         (2**i * math.factorial(i) * math.sqrt(math.factorial(l)))
         for i in range((len(coef) - 1 - l) // 2 + 1)]
    out.append(p)
  return out


def _horner(p: Sequence[float], x):
  out = jnp.zeros_like(x) + p[-1]
  for c in reversed(p[:-1]):
    out = out * x + c
  return out


def polynomial_rule(coef: Sequence[float]):
  weights = hermite_weights(coef)

  def pair_rule(cov, var1, var2, ntk):
    # c_l = P_l(var1) P_l(var2); the kernel is sum_l c_l cov**l.
    cs = [_horner(p, var1) * _horner(p, var2) if any(p) else None
          for p in weights]
    new = jnp.zeros_like(cov)
    for c in reversed(cs):
      new = new * cov + (0.0 if c is None else c)
    if ntk is not None:
      dot = jnp.zeros_like(cov)
      for l in range(len(cs) - 1, 0, -1):
        dot = dot * cov + (0.0 if cs[l] is None else l * cs[l])
      ntk = ntk * dot
    return new, ntk

  return pair_rule


def Polynomial(coef: Sequence[float]):
  """``coef[0] + coef[1] x + ... + coef[n] x**n`` (ascending, as
  `numpy.polynomial.Polynomial`). Exact kernel of any degree."""
  coef = [float(c) for c in np.asarray(coef, dtype=float).reshape(-1)]
  def fn(x):
    return _horner(coef, x) if coef else jnp.zeros_like(x)
  return elementwise_layer(fn, f"Polynomial({coef})", polynomial_rule(coef),
                           may_overflow=True)


def Monomial(degree: int):
  """``x**degree`` for ``degree`` in 0..5 (as neural-tangents; use
  `Polynomial` for higher degrees)."""
  if degree not in range(6) or isinstance(degree, bool):
    raise DegreeError(f"Monomial: degree must be an integer in 0..5; got "
                      f"{degree!r}. Use Polynomial([0] * n + [1]) for x**n "
                      f"of higher degree.")
  coef = [0.0] * degree + [1.0]
  return elementwise_layer(lambda x: x**degree, f"Monomial({degree})",
                           polynomial_rule(coef), may_overflow=True)


def Hermite(degree: int):
  """Normalized probabilists' Hermite polynomial ``He_n(x) / sqrt(n!)``.

  As in neural-tangents, the kernel ``cov**n`` (NTK factor ``n cov**(n-1)``)
  assumes unit-variance pre-activations (inputs with ``std == 1`` across
  channels and, e.g., ``Dense(W_std=1, b_std=None)``); it is wrong otherwise.
  """
  if not isinstance(degree, (int, np.integer)) or degree < 0:
    raise DegreeError(f"Hermite: degree must be a non-negative integer; got "
                      f"{degree!r}.")
  he = np.polynomial.hermite_e.herme2poly([0] * degree + [1])
  coef = list(he / math.sqrt(math.factorial(degree)))

  def pair_rule(cov, var1, var2, ntk):
    warnings.warn("Hermite: the kernel assumes unit-variance "
                  "pre-activations (jnp.std(x, axis=channel_axis) == 1).")
    if ntk is not None:
      ntk = ntk * (degree * cov**(degree - 1) if degree else 0.0)
    return cov**degree, ntk

  return elementwise_layer(lambda x: _horner(coef, x), f"Hermite({degree})",
                           pair_rule)


# --- rectified monomials -----------------------------------------------------

def arccos_polynomials(n: int):
  """Exact ``(A_n, B_n)`` (ascending coefficient lists of Fractions) with
  ``k_n(rho) = (A_n(rho) sqrt(1 - rho**2) + B_n(rho) (pi - arccos rho)) / (2
  pi)`` and ``k_n(rho) = E[x_+**n y_+**n]`` for unit-variance ``x, y``.

  Recursion (from ``k_n' = n**2 k_{n-1}`` and matching the ``sqrt`` and
  ``arccos`` parts): ``B_n' = n**2 B_{n-1}`` and ``(1 - rho**2) A_n' - rho
  A_n + B_n = n**2 (1 - rho**2) A_{n-1}``; the constant of ``B_n`` is the one
  for which ``A_n`` is a polynomial.
  """
  F = fractions.Fraction
  a, b = [], [F(1)]  # k_0 = (pi - theta) / (2 pi)
  for m in range(1, n + 1):
    sq = m * m
    b_new = [F(0)] + [sq * c / (i + 1) for i, c in enumerate(b)]
    # r = m**2 (1 - rho**2) A_{m-1} - B_m (constant of B_m still 0).
    r = [F(0)] * (m + 1)
    for i, c in enumerate(a):
      r[i] += sq * c
      r[i + 2] -= sq * c
    for i, c in enumerate(b_new):
      r[i] -= c
    # Coefficient of rho**k: (k + 1) a_{k+1} - k a_{k-1} = r_k; solve from
    # the top (a_k = 0 for k >= m).
    new = [F(0)] * (m + 1)
    for k in range(m, 0, -1):
      new[k - 1] = ((k + 1) * new[k + 1] - r[k]) / k if k + 1 <= m else \
          -r[k] / k
    # The rho**0 equation, a_1 = r_0 - beta, fixes B_m's constant beta.
    b_new[0] = r[0] - new[1]
    a, b = new[:m], b_new
  return a, b


def _homogeneous(poly, cov, prod, degree: int):
  """``sum_m p_m cov**m prod**((degree - m) / 2)`` (only terms of the right
  parity are nonzero, so the powers of ``prod`` are integers)."""
  out = jnp.zeros_like(cov)
  for m, c in enumerate(poly):
    if c:
      out = out + float(c) * cov**m * prod**((degree - m) // 2)
  return out


def rectified_kernel(n: int):
  """``(cov, var1, var2) -> E[u_+**n v_+**n]``."""
  a, b = arccos_polynomials(n)

  def kernel(cov, var1, var2):
    root, theta = sine_and_angle(cov, var1, var2)
    prod = var1 * var2
    out = _homogeneous(b, cov, prod, n) * (jnp.pi - theta)
    if n:
      out = out + _homogeneous(a, cov, prod, n - 1) * root
    return out / (2 * jnp.pi)

  return kernel


def RectifiedMonomial(degree: int):
  """``(x >= 0) * x**degree`` for any non-negative integer degree (0: the
  step function, 1: ReLU). The NTK factor is ``degree**2`` times the kernel
  of degree ``degree - 1`` (zero for degree 0, as in neural-tangents)."""
  if not isinstance(degree, (int, np.integer)) or degree < 0:
    raise DegreeError(f"RectifiedMonomial: degree must be a non-negative "
                      f"integer; got {degree!r}.")
  k_n = rectified_kernel(degree)
  k_dot = rectified_kernel(degree - 1) if degree else None

  def pair_rule(cov, var1, var2, ntk):
    new = k_n(cov, var1, var2)
    if ntk is not None:
      ntk = ntk * (degree**2 * k_dot(cov, var1, var2) if degree else 0.0)
    return new, ntk

  return elementwise_layer(lambda x: (x >= 0) * x**degree,
                           f"RectifiedMonomial({degree})", pair_rule,
                           may_overflow=True)
