"""Elementwise helpers that trace to bare `jax.lax` primitives.

`jax.numpy.where`, ``clip``, ``diagonal``, ``signbit`` and ``copysign`` are
each a nested ``jit`` in the traced program: every call adds a sub-jaxpr
(with its own broadcasts and conversions) that is lowered as a separate
function and inlined again by XLA. Kernel rules call them dozens of times
per layer, so on a first call they cost tracing and lowering time for
nothing. These helpers compute the same values (the same primitives, in the
same order) as a few flat equations.
"""
from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["select", "clip", "diagonal", "signbit", "unit_sign"]


def _is_array(x) -> bool:
  return isinstance(x, (jax.Array, np.ndarray))


def _is_scalar(x) -> bool:
  return isinstance(x, (numbers.Number, np.generic))


def select(pred, on_true, on_false):
  """``jnp.where(pred, on_true, on_false)`` as one `jax.lax.select`.

  Shapes broadcast (explicitly, so it is clean under rank promotion
  ``'raise'`` as long as ranks agree or an operand is a scalar). A Python
  or NumPy scalar operand takes the dtype (and weak type) of the array
  operand, as under `jnp.where`'s promotion; two scalars take their common
  dtype. Operands of differing array dtypes fall back to `jnp.where`.
  """
  shape = np.broadcast_shapes(np.shape(pred), np.shape(on_true),
                              np.shape(on_false))
  pred = jnp.broadcast_to(pred, shape)
  if _is_array(on_true) and _is_array(on_false):
    if on_true.dtype != on_false.dtype:
      return jnp.where(pred, on_true, on_false)
    return lax.select(pred, jnp.broadcast_to(on_true, shape),
                      jnp.broadcast_to(on_false, shape))
  if _is_array(on_true) and _is_scalar(on_false):
    return lax.select(pred, jnp.broadcast_to(on_true, shape),
                      lax.full_like(on_true, on_false, shape=shape))
  if _is_scalar(on_true) and _is_array(on_false):
    return lax.select(pred, lax.full_like(on_false, on_true, shape=shape),
                      jnp.broadcast_to(on_false, shape))
  if isinstance(on_true, np.generic) or isinstance(on_false, np.generic):
    dtype = jnp.result_type(on_true, on_false)
    return lax.select(pred, lax.full(shape, on_true, dtype),
                      lax.full(shape, on_false, dtype))
  return jnp.where(pred, on_true, on_false)


def clip(x, lo: float, hi: float):
  """``jnp.clip(x, lo, hi)``: ``min(max(x, lo), hi)``."""
  return jnp.minimum(jnp.maximum(x, lo), hi)


def diagonal(x, axis: int):
  """Diagonal of the adjacent axes ``(axis, axis + 1)``, put at ``axis``.

  ``x[.., i, i, ..]`` for ``i < min(n1, n2)``: the two axes merged (a
  reshape, free in row-major layout) and read with stride ``n2 + 1``.
  Equals ``jnp.moveaxis(jnp.diagonal(x, axis, axis + 1), -1, axis)``.
  """
  axis = axis % x.ndim
  n1, n2 = x.shape[axis], x.shape[axis + 1]
  k = min(n1, n2)
  flat = x.reshape(x.shape[:axis] + (n1 * n2,) + x.shape[axis + 2:])
  if k == 0:
    return lax.slice_in_dim(flat, 0, 0, axis=axis)
  return lax.slice_in_dim(flat, 0, (k - 1) * (n2 + 1) + 1, stride=n2 + 1,
                          axis=axis)


def signbit(x):
  """``jnp.signbit(x)`` of a floating array: its sign bit (set for -0.0)."""
  bits = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[x.dtype.itemsize]
  return lax.bitcast_convert_type(x, bits) < 0


def unit_sign(x):
  """``jnp.copysign(1, x)``: ``-1`` where the sign bit of ``x`` is set
  (also for ``-0.0``), else ``1``, in ``x``'s dtype."""
  return lax.select(signbit(x), lax.full_like(x, -1), lax.full_like(x, 1))
