"""`NtkImplementation.AUTO`: pick the cheapest NTK method for the shapes.

For each new combination of input/parameter shapes, the three methods are
compiled with ``jax.jit(...).lower(...).compile()`` (abstract shapes only, so
this also works under ``jit``/``vmap``) and their XLA cost analysis is
turned into one estimate ``flops + 8 * bytes accessed`` -- bytes matter
because Jacobian contraction is memory-bound on CPU/GPU, which is why a
FLOP count alone (neural-tangents' AUTO) picks wrongly there. Where a
backend reports no costs, each method is timed once on zeros instead. A
method that fails to compile is skipped.

Ask what was picked: ``ntk_fn.method_for(x1, x2, params, **kwargs)`` (the
method for those shapes), ``ntk_fn.choice`` (this function's last call) or
``ntk_fn.costs`` (all estimates per shape key); ``logging`` at INFO level
also reports each choice. Nothing is recorded process-wide.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax.tree_util import tree_map

from ._common import NtkImplementation, shape_dtype
from .methods import method_ntk_fn

__all__ = ["auto_ntk_fn", "BYTES_WEIGHT"]

log = logging.getLogger(__name__)

# FLOPs per byte accessed in the cost estimate (a roofline-style weight).
BYTES_WEIGHT = 8.0
_CANDIDATES = (NtkImplementation.JACOBIAN_CONTRACTION,
               NtkImplementation.NTK_VECTOR_PRODUCTS,
               NtkImplementation.STRUCTURED_DERIVATIVES)


def _is_array(v) -> bool:
  return isinstance(v, (jax.Array, jax.ShapeDtypeStruct)) or hasattr(
      v, "shape") and hasattr(v, "dtype")


def _shape_key(tree) -> tuple:
  leaves, treedef = jax.tree_util.tree_flatten(
      tree, is_leaf=lambda v: v is None)
  return (str(treedef),) + tuple(
      (tuple(jnp.shape(l)), str(jnp.result_type(l))) if _is_array(l)
      else repr(l) for l in leaves)


def _estimate(compiled) -> Optional[float]:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 -- backend without cost analysis
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or cost.get("flops") is None:
    return None
  flops = float(cost.get("flops", 0.0))
  bytes_ = float(cost.get("bytes accessed", 0.0))
  if flops <= 0 and bytes_ <= 0:
    return None
  return flops + BYTES_WEIGHT * bytes_


def _time(compiled, args) -> float:
  concrete = tree_map(lambda s: jnp.zeros(s.shape, s.dtype), args)
  jax.block_until_ready(compiled(*concrete))
  t = time.perf_counter()
  jax.block_until_ready(compiled(*concrete))
  return time.perf_counter() - t


def auto_ntk_fn(f: Callable, trace_axes=(-1,), diagonal_axes=(),
                vmap_axes=None, _j_rules: bool = True, _s_rules: bool = True,
                _fwd=None, **unused):
  """``ntk_fn(x1, x2, params, **kwargs)`` with the method chosen per shape."""
  fns = {i: method_ntk_fn(f, trace_axes, diagonal_axes, vmap_axes, i,
                          _j_rules, _s_rules, _fwd) for i in _CANDIDATES}
  cache: dict = {}

  def choose(x1, x2, params, kwargs):
    arrays = {k: v for k, v in kwargs.items()
              if all(_is_array(l) for l in jax.tree_util.tree_leaves(v))}
    static = {k: v for k, v in kwargs.items() if k not in arrays}
    args = tree_map(shape_dtype, (x1, x2, params, arrays),
                    is_leaf=lambda v: v is None)
    costs, timed = {}, False
    compiled_by, errors = {}, []
    for impl in _CANDIDATES:
      fn = fns[impl]
      try:
        compiled = jax.jit(
            lambda a, b, p, kw, fn=fn: fn(a, b, p, **kw, **static)).lower(
                *args).compile()
      except Exception as e:  # noqa: BLE001 -- skip a method that fails
        log.info("AUTO: %s failed to compile: %s", impl.name, e)
        errors.append(e)
        continue
      compiled_by[impl] = compiled
      costs[impl] = _estimate(compiled)
    if not compiled_by:  # the inputs are wrong: report the first error
      raise errors[0]
    if any(c is None for c in costs.values()):
      timed = True
      costs = {i: _time(c, args) for i, c in compiled_by.items()}
    best = min(costs, key=costs.get)
    log.info("AUTO picked %s (%s: %s)", best.name,
             "seconds" if timed else "cost estimates",
             {i.name: c for i, c in costs.items()})
    return best, costs

  def method_for(x1, x2: Optional = None, params=None,
                 **kwargs) -> NtkImplementation:
    """The method ``ntk_fn`` uses for these arguments' shapes (estimated on
    first sight of them)."""
    key = _shape_key((x1, x2, params, kwargs))
    if key not in cache:
      cache[key] = choose(x1, x2, params, kwargs)
    best, costs = cache[key]
    ntk_fn.costs[key] = costs
    return best

  def ntk_fn(x1, x2: Optional = None, params=None, **kwargs):
    best = method_for(x1, x2, params, **kwargs)
    ntk_fn.choice = best
    return fns[best](x1, x2, params, **kwargs)

  ntk_fn.method_for = method_for
  ntk_fn.choice = None
  ntk_fn.costs = {}
  return ntk_fn
