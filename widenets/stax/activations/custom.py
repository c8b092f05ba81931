"""User-defined activations: `Elementwise` (a closed-form ``nngp_fn`` from
the user) and `ElementwiseNumerical` (Gauss-Hermite quadrature).

See Han et al. 2022, "Fast Neural Kernel Embeddings for General
Activations", and `quadrature` for the accuracy of the numerical rule.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from .base import check_callable, elementwise_layer
from .quadrature import gauss_hermite, quadrature_rule


def _name_of(f, default: str) -> str:
  return getattr(f, "__name__", None) or default


def Elementwise(fn: Optional[Callable] = None,
                nngp_fn: Optional[Callable] = None,
                d_nngp_fn: Optional[Callable] = None):
  """An activation ``fn`` with a user-supplied kernel.

  Args:
    fn: the activation, elementwise on arrays (``None``: ``apply_fn``
      raises).
    nngp_fn: ``(cov12, var1, var2) -> E[fn(u) fn(v)]`` for ``(u, v)``
      bivariate normal with those moments; written for scalars (it is
      vectorized). ``None``: ``kernel_fn`` raises.
    d_nngp_fn: ``(cov12, var1, var2) -> E[fn'(u) fn'(v)]`` for the NTK. If
      ``None``, it is ``d nngp_fn / d cov12`` by autodiff (Price's theorem),
      which is exact but inherits any ``0 / 0`` of ``nngp_fn``'s derivative
      (e.g. ``arcsin`` at correlation 1) — pass it explicitly when you can.

  Returns:
    ``(init_fn, apply_fn, kernel_fn)``.
  """
  if fn is None and nngp_fn is None:
    raise ValueError("Elementwise: give fn (finite width), nngp_fn (infinite "
                     "width) or both; got neither.")
  check_callable("Elementwise", "fn", fn, optional=True)
  check_callable("Elementwise", "nngp_fn", nngp_fn, optional=True)
  check_callable("Elementwise", "d_nngp_fn", d_nngp_fn, optional=True)
  name = f"Elementwise({_name_of(fn if fn is not None else nngp_fn, 'fn')})"

  if nngp_fn is None:
    def pair_rule(cov, var1, var2, ntk):
      raise NotImplementedError(f"{name}: no nngp_fn was given, so there is "
                                f"no kernel_fn; use ElementwiseNumerical or "
                                f"monte_carlo_kernel_fn.")
  else:
    nngp_v = jnp.vectorize(nngp_fn)
    d_v = jnp.vectorize(jax.grad(nngp_fn) if d_nngp_fn is None
                        else d_nngp_fn)

    def pair_rule(cov, var1, var2, ntk):
      new = nngp_v(cov, var1, var2)
      if ntk is not None:
        ntk = ntk * d_v(cov, var1, var2)
      return new, ntk

  return elementwise_layer(fn, name, pair_rule)


def ElementwiseNumerical(fn: Callable, deg: int,
                         df: Optional[Callable] = None):
  """An activation ``fn`` whose kernel is computed by ``deg x deg``-point
  Gauss-Hermite quadrature of the bivariate normal (see `quadrature`).

  Args:
    fn: the activation, elementwise on arrays.
    deg: quadrature nodes per dimension (``>= 1``); cost ``deg**2`` per
      kernel entry. ``deg = 25`` gives ~1e-3 or better for smooth ``fn`` at
      unit-scale variances; kinked functions (ReLU, Abs) converge slowly —
      use their closed forms.
    df: ``fn'`` for the NTK; by default forward-mode autodiff of ``fn``.

  Returns:
    ``(init_fn, apply_fn, kernel_fn)``.
  """
  check_callable("ElementwiseNumerical", "fn", fn)
  check_callable("ElementwiseNumerical", "df", df, optional=True)
  try:
    gauss_hermite(deg)
  except ValueError as e:
    raise ValueError(f"ElementwiseNumerical: {e}") from None
  rule = quadrature_rule(fn, df, deg)
  return elementwise_layer(
      fn, f"ElementwiseNumerical({_name_of(fn, 'fn')}, deg={deg})", rule)
