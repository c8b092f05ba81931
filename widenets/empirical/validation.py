"""NaN or inf in the inputs or parameters of an empirical kernel is an error.

Otherwise one NaN entry spreads through the parameter contraction into every
entry of the kernel. The check is one compiled call per input structure (one
fused ``all(isfinite)`` per argument) and one host transfer of three flags;
under `jax.jit` (tracers) it is skipped.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from .._tracing import all_concrete

__all__ = ["checked"]


def _finite(tree) -> jax.Array:
  ok = jnp.asarray(True)
  for leaf in jax.tree_util.tree_leaves(tree):
    if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
      ok = ok & jnp.all(jnp.isfinite(leaf))
  return ok


@jax.jit
def _flags(x1, x2, params):
  return jnp.stack([_finite(x1), _finite(x2), _finite(params)])


def _numeric(tree) -> bool:
  return all(hasattr(leaf, "dtype") or isinstance(leaf, (int, float, complex))
             for leaf in jax.tree_util.tree_leaves(tree))


def check_finite(where: str, x1, x2, params) -> None:
  """Raises a ValueError naming ``x1``, ``x2`` or ``params`` if not finite."""
  args = (x1, x2, params)
  if not all_concrete(args) or not all(_numeric(a) for a in args):
    return
  for name, arg, ok in zip(("x1", "x2", "params"), args,
                           jax.device_get(_flags(*args))):
    if not ok:
      shapes = jax.tree_util.tree_map(jnp.shape, arg)
      raise ValueError(f"{where}: `{name}` (shapes {shapes}) contains NaN or "
                       f"infinite values; the kernel would be all NaN.")


class checked:
  """``fn(x1, x2=None, params=None, ...)`` that first checks its arguments.

  Other attributes (e.g. ``choice``, which AUTO sets on its first call) are
  read from ``fn`` at the time they are asked for.
  """

  def __init__(self, fn: Callable, where: str):
    functools.update_wrapper(self, fn, updated=())
    self._fn, self._where = fn, where

  def __call__(self, x1, x2=None, params=None, *args, **kwargs):
    check_finite(self._where, x1, x2, params)
    return self._fn(x1, x2, params, *args, **kwargs)

  def __getattr__(self, name):
    if name.startswith("__") or name in ("_fn", "_where"):
      raise AttributeError(name)
    return getattr(self._fn, name)
