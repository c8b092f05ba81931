"""The NTK methods by `NtkImplementation`, AUTO aside (it chooses among
these: `auto.py`)."""
from __future__ import annotations

from typing import Callable

from ._common import NtkImplementation
from .jacobian import jacobian_contraction_ntk_fn
from .ntk_vp import ntk_vector_products_ntk_fn
from .structured import structured_derivatives_ntk_fn

__all__ = ["METHODS", "method_ntk_fn"]

METHODS = {
    NtkImplementation.JACOBIAN_CONTRACTION: jacobian_contraction_ntk_fn,
    NtkImplementation.NTK_VECTOR_PRODUCTS: ntk_vector_products_ntk_fn,
    NtkImplementation.STRUCTURED_DERIVATIVES: structured_derivatives_ntk_fn,
}


def method_ntk_fn(f: Callable, trace_axes, diagonal_axes, vmap_axes,
                  implementation: NtkImplementation, _j_rules: bool = True,
                  _s_rules: bool = True, _fwd=None) -> Callable:
  """``ntk_fn(x1, x2, params, **kwargs)`` of ``f`` by one (non-AUTO) method;
  arguments as `empirical_ntk_fn`."""
  return METHODS[implementation](
      f=f, trace_axes=trace_axes, diagonal_axes=diagonal_axes,
      vmap_axes=vmap_axes, _j_rules=_j_rules, _s_rules=_s_rules, _fwd=_fwd)
