"""Gauss-Hermite quadrature of bivariate-normal expectations.

For ``(u, v)`` jointly Gaussian with variances ``var1``, ``var2`` and
correlation ``rho``, write ``u = sqrt(2 var1) x``, ``v = sqrt(2 var2) (rho x
+ sigma y)`` with ``sigma = sqrt(1 - rho**2)`` and ``x, y`` independent with
density ``exp(-t**2) / sqrt(pi)``. Then

  ``E[f(u) g(v)] ~ (1 / pi) sum_{i, j} w_i w_j f(sqrt(2 var1) x_i)
  g(sqrt(2 var2) (rho x_i + sigma x_j))``

with the ``deg``-point Gauss-Hermite nodes ``x_i`` and weights ``w_i``
(exact for polynomial ``f g`` of degree ``< 2 deg`` in each variable; for
smooth ``f`` the error falls geometrically with ``deg``, for kinked ``f``
like ReLU only as ``deg**-1.5``).

Cost and memory: ``deg**2`` evaluations of ``g`` per covariance entry, but
the sum over ``j`` is one fused reduction and the sum over ``i`` a loop, so
the working memory is a few copies of the covariance, never ``deg**2``
copies.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .base import safe_sqrt, sine_and_angle


@functools.lru_cache(maxsize=64)
def gauss_hermite(deg: int):
  """Nodes and weights (numpy float64) for the weight ``exp(-x**2)``."""
  if not isinstance(deg, (int, np.integer)) or deg < 1:
    raise ValueError(f"Gauss-Hermite quadrature needs an integer deg >= 1; "
                     f"got {deg!r}.")
  return np.polynomial.hermite.hermgauss(int(deg))


def bivariate_expectation(f: Callable, g: Callable, cov, var1, var2,
                          deg: int):
  """``E[f(u) g(v)]`` for ``(u, v) ~ N(0, [[var1, cov], [cov, var2]])``.

  ``cov``, ``var1``, ``var2`` broadcast against each other; ``f`` and ``g``
  are elementwise functions of arrays. The correlation is clipped into
  ``[-1, 1]``; a vanishing variance gives ``rho = 0``.
  """
  x, w = gauss_hermite(deg)
  cov, var1, var2 = jnp.broadcast_arrays(cov, var1, var2)
  dtype = cov.dtype
  root, _ = sine_and_angle(cov, var1, var2)
  s = safe_sqrt(var1 * var2)
  positive = s > 0
  safe_s = jnp.where(positive, s, 1.0)
  rho = jnp.clip(jnp.where(positive, cov / safe_s, 0.0), -1.0, 1.0)
  sigma = jnp.where(positive, jnp.minimum(root / safe_s, 1.0), 1.0)
  scale1 = safe_sqrt(2 * var1)
  scale2 = safe_sqrt(2 * var2)
  slope, spread = scale2 * rho, scale2 * sigma
  xs = jnp.asarray(x, dtype).reshape((-1,) + (1,) * cov.ndim)
  ws = jnp.asarray(w, dtype).reshape((-1,) + (1,) * cov.ndim)

  def body(acc, node):
    xi, wi = node
    # One fused reduction over the inner nodes.
    inner = jnp.sum(ws * g(slope * xi + spread * xs), axis=0)
    return acc + wi * f(scale1 * xi) * inner, None

  init = jnp.zeros(cov.shape, dtype)
  acc, _ = jax.lax.scan(body, init, (jnp.asarray(x, dtype),
                                     jnp.asarray(w, dtype)))
  return acc / jnp.pi


def derivative(fn: Callable) -> Callable:
  """``fn'`` of an elementwise ``fn`` (one forward-mode pass)."""
  def df(x):
    return jax.jvp(fn, (x,), (jnp.ones_like(x),))[1]
  return df


def quadrature_rule(fn: Callable, df: Callable, deg: int):
  """The pairwise kernel rule of ``fn`` by quadrature (NTK factor: the same
  expectation of ``df``)."""
  gauss_hermite(deg)  # validate early

  def pair_rule(cov, var1, var2, ntk):
    new = bivariate_expectation(fn, fn, cov, var1, var2, deg)
    if ntk is not None:
      ntk = ntk * bivariate_expectation(df, df, cov, var1, var2, deg)
    return new, ntk

  return pair_rule
