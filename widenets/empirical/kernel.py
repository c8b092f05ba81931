"""Entry points: `empirical_nngp_fn`, `empirical_ntk_fn`, `empirical_kernel_fn`.

Each returns a function of ``(x1, x2, [get,] params, **kwargs)`` computing one
draw of the finite-width kernel of ``f(params, x, **kwargs)``:

* NNGP: ``f(x1) f(x2)^T``;
* NTK: ``J(x1) J(x2)^T`` with ``J = df/dparams``, by one of the
  `NtkImplementation` methods.

``x2=None`` means ``x2 = x1``. Keyword arguments are split between ``x1`` and
``x2`` (see `_common.split_kwargs`: ``rng`` keys differ iff the inputs do;
pairs ``(a, b)`` give ``a`` to ``x1``). For PyTree outputs each output leaf
gets its own kernel (no cross-leaf terms). Shapes: see `_common`.
"""
from __future__ import annotations

import collections
import functools
from typing import Callable, Optional, Sequence, Union

import jax
from jax.tree_util import tree_map

from . import _common as C
from . import validation
from ._common import (DEFAULT_NTK_IMPLEMENTATION, NtkImplementation,
                      _DEFAULT_NTK_FWD, _DEFAULT_NTK_J_RULES,
                      _DEFAULT_NTK_S_RULES)

__all__ = ["empirical_nngp_fn", "empirical_ntk_fn", "empirical_kernel_fn"]

Axes = Union[int, Sequence[int]]


def empirical_nngp_fn(f: Callable, trace_axes: Axes = (-1,),
                      diagonal_axes: Axes = ()) -> Callable:
  """One draw of the NNGP ``f(x1) f(x2)^T / size(trace_axes)``.

  Args:
    f: ``f(params, x, **kwargs)``; ``x`` and the output may be PyTrees.
    trace_axes: output axes summed over (and divided by their size).
    diagonal_axes: output axes of which only the diagonal is kept.

  Returns:
    ``nngp_fn(x1, x2, params, **kwargs)``: a tree like ``f(x1)`` of arrays of
    shape ``zip(f(x1).shape, f(x2).shape)`` less traced axes, diagonal axes
    once.
  """
  def nngp_fn(x1, x2=None, params=None, **kwargs):
    validation.check_finite("empirical_nngp_fn", x1, x2, params)
    kw1, kw2 = C.split_kwargs(kwargs, x1, x2)
    C.check_params(f, params, x1, kw1)
    out1 = f(params, x1, **kw1)
    out2 = out1 if C.all_none(x2) else f(params, x2, **kw2)

    def one(a, b):
      a = jax.numpy.asarray(a)
      b = jax.numpy.asarray(b)
      if a.ndim != b.ndim:
        raise ValueError(f"f(x1) of shape {a.shape} and f(x2) of shape "
                         f"{b.shape} must have the same number of axes.")
      return C.contract(a, b, a.ndim, trace_axes, diagonal_axes)

    return tree_map(one, out1, out2)

  return nngp_fn


def _implementations():
  # Imported here: structured derivatives and AUTO pull in more machinery.
  from .jacobian import jacobian_contraction_ntk_fn
  from .ntk_vp import ntk_vector_products_ntk_fn
  from .structured import structured_derivatives_ntk_fn
  from .auto import auto_ntk_fn
  return {
      NtkImplementation.AUTO: auto_ntk_fn,
      NtkImplementation.JACOBIAN_CONTRACTION: jacobian_contraction_ntk_fn,
      NtkImplementation.NTK_VECTOR_PRODUCTS: ntk_vector_products_ntk_fn,
      NtkImplementation.STRUCTURED_DERIVATIVES: structured_derivatives_ntk_fn,
  }


def empirical_ntk_fn(
    f: Callable,
    trace_axes: Axes = (-1,),
    diagonal_axes: Axes = (),
    vmap_axes=None,
    implementation: Union[NtkImplementation, int] = DEFAULT_NTK_IMPLEMENTATION,
    _j_rules: bool = _DEFAULT_NTK_J_RULES,
    _s_rules: bool = _DEFAULT_NTK_S_RULES,
    _fwd: Optional[bool] = _DEFAULT_NTK_FWD,
) -> Callable:
  """One draw of the NTK ``J(x1) J(x2)^T / size(trace_axes)``.

  Args:
    f: ``f(params, x, **kwargs)``; params, ``x`` and the output may be
      PyTrees.
    trace_axes, diagonal_axes: as `empirical_nngp_fn`.
    vmap_axes: ``None`` (no assumption), an axis (tree) that batches both the
      inputs and outputs, or ``(in_axes, out_axes, kwargs_axes)``; it certifies
      that ``f`` is a ``vmap`` over those axes (no interaction between
      samples), which makes every method much cheaper.
    implementation: an `NtkImplementation` or ``0..3``.
    _j_rules, _s_rules: structured derivatives: use per-primitive rules
      (``False`` forces the plain-Jacobian path for every primitive).
    _fwd: accepted for compatibility (reverse mode is always used for
      ``df/dy``).

  Returns:
    ``ntk_fn(x1, x2, params, **kwargs)`` (shapes as `empirical_nngp_fn`).
  """
  impl = C.canonical_implementation(implementation)
  return validation.checked(_implementations()[impl](
      f=f, trace_axes=trace_axes, diagonal_axes=diagonal_axes,
      vmap_axes=vmap_axes, _j_rules=_j_rules, _s_rules=_s_rules, _fwd=_fwd),
      "empirical_ntk_fn")


@functools.lru_cache(maxsize=None)
def _namedtuple(name: str, fields: tuple):
  return collections.namedtuple(name, fields)


def canonical_get(get) -> tuple[Optional[tuple], bool]:
  """``(names, single)``: requested kernels and whether to return a bare
  array (``get`` a string)."""
  if get is None:
    return ("nngp", "ntk"), False
  if isinstance(get, str):
    names, single = (get,), True
  elif isinstance(get, (tuple, list)):
    names, single = tuple(get), False
  else:
    raise TypeError(f"`get` must be 'nngp', 'ntk', a tuple of them or None; "
                    f"got {get!r}.")
  for g in names:
    if g not in ("nngp", "ntk"):
      raise ValueError(f"Unknown `get` {g!r}: empirical kernels provide "
                       f"'nngp' and 'ntk'.")
  return names, single


def assemble(results: dict, names: tuple, single: bool,
             name: str = "EmpiricalKernel"):
  """Per output leaf: the array (``single``) or a namedtuple of ``names``."""
  if single:
    return results[names[0]]
  cls = _namedtuple(name, names)
  return tree_map(lambda *v: cls(*v), *[results[g] for g in names])


def empirical_kernel_fn(
    f: Callable,
    trace_axes: Axes = (-1,),
    diagonal_axes: Axes = (),
    vmap_axes=None,
    implementation: Union[NtkImplementation, int] = DEFAULT_NTK_IMPLEMENTATION,
    _j_rules: bool = _DEFAULT_NTK_J_RULES,
    _s_rules: bool = _DEFAULT_NTK_S_RULES,
    _fwd: Optional[bool] = _DEFAULT_NTK_FWD,
) -> Callable:
  """One draw of the NNGP and/or NTK of ``f`` (arguments as
  `empirical_ntk_fn`; ``vmap_axes`` and ``implementation`` apply to the NTK).

  Returns:
    ``kernel_fn(x1, x2, get, params, **kwargs)``. ``get``: ``'nngp'`` or
    ``'ntk'`` (an array per output leaf), a tuple of them (an
    ``EmpiricalKernel`` namedtuple in that order) or ``None`` (both).
  """
  fns = {
      "nngp": empirical_nngp_fn(f, trace_axes, diagonal_axes),
      "ntk": empirical_ntk_fn(f, trace_axes, diagonal_axes, vmap_axes,
                              implementation, _j_rules, _s_rules, _fwd),
  }

  def kernel_fn(x1, x2=None, get=None, params=None, **kwargs):
    names, single = canonical_get(get)
    results = {g: fns[g](x1, x2, params, **kwargs) for g in names}
    return assemble(results, names, single)

  return kernel_fn
