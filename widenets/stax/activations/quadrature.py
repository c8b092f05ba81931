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
the sum over ``j`` is one fused elementwise loop and the sum over ``i`` a
`lax.scan`, so the working memory is a few copies of the covariance, never
``deg**2`` copies.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from .. import lax_ops
from .base import safe_sqrt, sine_and_angle


@functools.lru_cache(maxsize=64)
def gauss_hermite(deg: int):
  """Nodes and weights (numpy float64) for the weight ``exp(-x**2)``."""
  if not isinstance(deg, (int, np.integer)) or deg < 1:
    raise ValueError(f"Gauss-Hermite quadrature needs an integer deg >= 1; "
                     f"got {deg!r}.")
  if deg > 350:
    raise ValueError(f"Gauss-Hermite weights underflow beyond deg = 350; got "
                     f"{deg}.")
  return np.polynomial.hermite.hermgauss(int(deg))


def bivariate_expectations(outer: Callable, inner: Callable, cov, var1,
                           var2, deg: int) -> tuple:
  """``(E[outer(u)[k] inner(v)[k]])_k`` for ``(u, v) ~ N(0, [[var1, cov],
  [cov, var2]])``.

  ``outer`` and ``inner`` map an array to a tuple of arrays (elementwise
  functions), so several expectations share one pass over the nodes (e.g.
  ``tanh`` and its derivative from one evaluation). ``cov``, ``var1``,
  ``var2`` broadcast against each other. The correlation is clipped into
  ``[-1, 1]``; a vanishing variance gives ``rho = 0``.
  """
  x, w = gauss_hermite(deg)
  shape = jnp.broadcast_shapes(jnp.shape(cov), jnp.shape(var1),
                               jnp.shape(var2))
  dtype = jnp.result_type(cov, var1, var2)
  root, _ = sine_and_angle(cov, var1, var2)
  s = safe_sqrt(var1 * var2)
  positive = s > 0
  safe_s = lax_ops.select(positive, s, 1.0)
  rho = lax_ops.clip(lax_ops.select(positive, cov / safe_s, 0.0), -1.0, 1.0)
  sigma = lax_ops.select(positive, jnp.minimum(root / safe_s, 1.0), 1.0)
  scale1 = safe_sqrt(2 * var1)  # keeps var1's (small) shape: f is cheap
  scale2 = safe_sqrt(2 * var2)
  slope, spread = scale2 * rho, scale2 * sigma

  def body(acc, node):
    xi, wi = node
    # The sum over the inner nodes, unrolled with constant nodes: XLA fuses
    # it into one elementwise loop over the kernel (no stacked copy).
    base = slope * xi
    sums = None
    for xj, wj in zip(x, w):
      values = inner(base + spread * float(xj))
      terms = [float(wj) * v for v in values]
      sums = terms if sums is None else [a + t for a, t in zip(sums, terms)]
    outs = outer(scale1 * xi)
    return tuple(a + wi * o * t for a, o, t in zip(acc, outs, sums)), None

  n_out = len(inner(jnp.zeros((1,), dtype)))
  init = tuple(jnp.zeros(shape, dtype) for _ in range(n_out))
  acc, _ = jax.lax.scan(body, init, (jnp.asarray(x, dtype),
                                     jnp.asarray(w, dtype)))
  return tuple(a / jnp.pi for a in acc)


def bivariate_expectation(f: Callable, g: Callable, cov, var1, var2,
                          deg: int):
  """``E[f(u) g(v)]``; see `bivariate_expectations`."""
  return bivariate_expectations(lambda z: (f(z),), lambda z: (g(z),), cov,
                                var1, var2, deg)[0]


def value_and_derivative(fn: Callable) -> Callable:
  """``z -> (fn(z), fn'(z))`` for an elementwise ``fn`` in one forward-mode
  pass (``tanh'`` reuses ``tanh``)."""
  def both(z):
    return jax.jvp(fn, (z,), (jnp.ones_like(z),))
  return both


def quadrature_rule(fn: Callable, df: Optional[Callable], deg: int):
  """The pairwise kernel rule of ``fn`` by quadrature; the NTK factor is the
  same expectation of ``df`` (default: autodiff of ``fn``)."""
  gauss_hermite(deg)  # validate early
  if df is None:
    both = value_and_derivative(fn)
  else:
    both = lambda z: (fn(z), df(z))

  def pair_rule(cov, var1, var2, ntk):
    if ntk is None:
      return bivariate_expectation(fn, fn, cov, var1, var2, deg), None
    new, dot = bivariate_expectations(both, both, cov, var1, var2, deg)
    return new, ntk * dot

  return pair_rule
