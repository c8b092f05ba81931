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

import warnings
from typing import Callable, Optional, Union

import jax
from jax.tree_util import tree_map

from ..axes import Axes
from ..kernel import canonical_get, namedtuple_type
from . import _common, validation
from ._common import (DEFAULT_NTK_FWD, DEFAULT_NTK_IMPLEMENTATION,
                      DEFAULT_NTK_J_RULES, DEFAULT_NTK_S_RULES,
                      NtkImplementation)
from .auto import auto_ntk_fn
from .methods import method_ntk_fn

__all__ = ["empirical_nngp_fn", "empirical_ntk_fn", "empirical_kernel_fn",
           "assemble", "KINDS"]


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
    kw1, kw2 = _common.split_kwargs(kwargs, x1, x2)
    _common.check_params(f, params, x1, kw1)
    out1 = f(params, x1, **kw1)
    out2 = out1 if _common.all_none(x2) else f(params, x2, **kw2)

    def one(a, b):
      a = jax.numpy.asarray(a)
      b = jax.numpy.asarray(b)
      if a.ndim != b.ndim:
        raise ValueError(f"f(x1) of shape {a.shape} and f(x2) of shape "
                         f"{b.shape} must have the same number of axes.")
      return _common.contract(a, b, a.ndim, trace_axes, diagonal_axes)

    return tree_map(one, out1, out2)

  return nngp_fn


def empirical_ntk_fn(
    f: Callable,
    trace_axes: Axes = (-1,),
    diagonal_axes: Axes = (),
    vmap_axes=None,
    implementation: Union[NtkImplementation, int] = DEFAULT_NTK_IMPLEMENTATION,
    _j_rules: bool = DEFAULT_NTK_J_RULES,
    _s_rules: bool = DEFAULT_NTK_S_RULES,
    _fwd: Optional[bool] = DEFAULT_NTK_FWD,
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
  impl = _common.canonical_implementation(implementation)
  if _fwd is not DEFAULT_NTK_FWD:
    warnings.warn(f"empirical_ntk_fn: `_fwd={_fwd!r}` has no effect (reverse "
                  f"mode is always used for df/dy); it is accepted for "
                  f"neural-tangents compatibility.", UserWarning, stacklevel=2)
  if impl == NtkImplementation.AUTO:
    return validation.checked(auto_ntk_fn(
        f, trace_axes, diagonal_axes, vmap_axes, _j_rules=_j_rules,
        _s_rules=_s_rules, _fwd=_fwd), "empirical_ntk_fn")
  return validation.checked(method_ntk_fn(
      f, trace_axes, diagonal_axes, vmap_axes, impl, _j_rules, _s_rules,
      _fwd), "empirical_ntk_fn")


# Names an empirical kernel can give, and what ``get=None`` means.
KINDS = ("nngp", "ntk")


def assemble(results: dict, names: tuple, single: bool,
             name: str = "EmpiricalKernel"):
  """Per output leaf: the array (``single``) or a namedtuple of ``names``."""
  if single:
    return results[names[0]]
  cls = namedtuple_type(name, names)
  return tree_map(lambda *v: cls(*v), *[results[g] for g in names])


def empirical_kernel_fn(
    f: Callable,
    trace_axes: Axes = (-1,),
    diagonal_axes: Axes = (),
    vmap_axes=None,
    implementation: Union[NtkImplementation, int] = DEFAULT_NTK_IMPLEMENTATION,
    _j_rules: bool = DEFAULT_NTK_J_RULES,
    _s_rules: bool = DEFAULT_NTK_S_RULES,
    _fwd: Optional[bool] = DEFAULT_NTK_FWD,
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
    names, single = canonical_get(get, KINDS, default=KINDS,
                                  none_means=str(KINDS))
    results = {g: fns[g](x1, x2, params, **kwargs) for g in names}
    return assemble(results, names, single)

  kernel_fn.ntk_fn = fns["ntk"]  # e.g. its `method_for` under AUTO
  return kernel_fn
