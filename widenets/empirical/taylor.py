"""Taylor expansions of a network in its parameters: `linearize`,
`taylor_expand`.

``f_k(p, x) = sum_{j<=k} D^j f(params, x)[p - params]^j / j!``, computed with
nested forward-mode JVPs along ``p - params`` (no Jacobians formed). Outputs
and parameters may be any PyTrees.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
from jax.tree_util import tree_map

__all__ = ["linearize", "taylor_expand"]


def _directional_derivatives(g: Callable, params, dparams, degree: int):
  """``[g(params), Dg[d], D^2 g[d, d], ...]`` up to ``degree`` (trees)."""
  def nest(fn, k):
    if k == 0:
      return fn

    def deriv(p):
      return jax.jvp(fn, (p,), (dparams,))[1]
    return nest(deriv, k - 1)
  # Evaluate the k-th derivative as its own function: XLA shares the work
  # between orders once the result is jitted.
  return [nest(g, k)(params) for k in range(degree + 1)]


def taylor_expand(f: Callable, params, degree: int) -> Callable:
  """Taylor polynomial of ``f`` of order ``degree`` about ``params``.

  Args:
    f: ``f(params, *args, **kwargs)`` returning a PyTree.
    params: the expansion point (a PyTree).
    degree: order of the expansion (``0``: constant ``f(params, ...)``).

  Returns:
    ``f_tayl(new_params, *args, **kwargs)`` with the signature of ``f``.
  """
  if not isinstance(degree, int) or degree < 0:
    raise ValueError(f"taylor_expand: `degree` must be a non-negative int; "
                     f"got {degree!r}.")

  def f_tayl(p, *args, **kwargs):
    dparams = tree_map(lambda a, b: a - b, p, params)
    g = lambda q: f(q, *args, **kwargs)
    terms = _directional_derivatives(g, params, dparams, degree)
    out = terms[0]
    for k, term in enumerate(terms[1:], start=1):
      out = tree_map(lambda o, t, k=k: o + t / math.factorial(k), out, term)
    return out

  return f_tayl


def linearize(f: Callable, params) -> Callable:
  """First-order Taylor expansion ``f(params) + J(params) (p - params)``.

  Args:
    f: ``f(params, *args, **kwargs)`` returning a PyTree.
    params: the linearization point.

  Returns:
    ``f_lin(new_params, *args, **kwargs)`` with the signature of ``f``
    (one forward pass plus one JVP per call).
  """
  def f_lin(p, *args, **kwargs):
    dparams = tree_map(lambda a, b: a - b, p, params)
    out, tangent = jax.jvp(lambda q: f(q, *args, **kwargs), (params,),
                           (dparams,))
    return tree_map(lambda a, b: a + b, out, tangent)

  return f_lin
