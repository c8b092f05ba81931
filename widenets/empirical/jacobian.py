"""NTK by Jacobian contraction (`NtkImplementation.JACOBIAN_CONTRACTION`).

``Theta(x1, x2) = sum_p J1[o1, p] J2[o2, p]`` with ``J = df/dparams`` from
reverse mode. With ``vmap_axes`` the Jacobian of one slice (sample) at a time
is computed and vmapped, so no cross-sample zeros are ever formed.
Convolution weight gradients use `conv_grad` (a batched matmul instead of
XLA's slow grouped convolution). Under
``jit`` XLA contracts leaf by leaf, so the peak is the largest per-leaf
Jacobian, not the whole Jacobian.
"""
from __future__ import annotations

import operator
from typing import Callable, Optional

import jax
from jax.tree_util import tree_map, tree_reduce

from . import _common
from .conv_grad import with_fast_conv_grads

__all__ = ["jacobian_fn", "jacobian_contraction_ntk_fn"]


def jacobian_fn(f: Callable, spec: _common.VmapSpec, keys) -> Callable:
  """``j(params, x, *kw_args)``: tree like ``f(x)`` of trees like params,
  leaves of shape ``fx_leaf.shape + param_leaf.shape``."""
  if not spec.active:
    def j(params, x, *args):
      kw = dict(zip(keys, args))
      return jax.jacrev(with_fast_conv_grads(lambda p: f(p, x, **kw)))(
          params)
    return j
  g = with_fast_conv_grads(_common.per_sample_fn(f, spec, keys))
  jac = jax.jacrev(g)
  return jax.vmap(jac, in_axes=[None] + _common.vmap_in_axes(spec, keys),
                  out_axes=spec.fx_axis)


def contract_jacobians(fx1, j1, j2, trace_axes, diagonal_axes):
  """Per output leaf, sum over parameter leaves of `_common.contract`."""
  def per_output(fx, a, b):
    ndim = len(fx.shape)
    terms = jax.tree_util.tree_leaves(tree_map(
        lambda u, v: _common.contract(u, v, ndim, trace_axes, diagonal_axes),
        a, b))
    if not terms:  # no parameters: the NTK is zero.
      return _common.contract(jax.numpy.zeros(fx.shape, fx.dtype),
                              jax.numpy.zeros(fx.shape, fx.dtype), ndim,
                              trace_axes, diagonal_axes)
    return tree_reduce(operator.add, terms)
  return tree_map(per_output, fx1, j1, j2)


def jacobian_contraction_ntk_fn(f: Callable, trace_axes=(-1,),
                                diagonal_axes=(), vmap_axes=None, **unused):
  """``ntk_fn(x1, x2, params, **kwargs)`` by Jacobian contraction."""

  def ntk_fn(x1, x2: Optional = None, params=None, **kwargs):
    kw1, kw2 = _common.split_kwargs(kwargs, x1, x2)
    fx1 = _common.check_params(f, params, x1, kw1)
    spec = _common.canonical_vmap(vmap_axes, x1, fx1, kw1)
    keys = tuple(kwargs)
    j = jacobian_fn(f, spec, keys)
    j1 = j(params, x1, *[kw1[k] for k in keys])
    if _common.all_none(x2):
      j2 = j1
    else:
      _common.check_params(f, params, x2, kw2)
      j2 = j(params, x2, *[kw2[k] for k in keys])
    return contract_jacobians(fx1, j1, j2, trace_axes, diagonal_axes)

  return ntk_fn
