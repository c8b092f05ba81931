"""Argument and input checks of layers, with messages naming the cause.

Layers call these at construction (hyperparameters) and at the call (inputs
and indices), so that bad values fail where they were given rather than as a
division by zero, an MLIR type error or an "overflow" deep inside the kernel.
Every message names the layer, the argument and the value. Values that are
tracers (layers built inside `jax.jit`/`jax.grad`, e.g. a traced ``W_std``)
are not looked at.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np

from .._tracing import is_concrete

__all__ = ["positive_int", "positive_ints", "finite_float", "positive_floats",
           "resize_shape", "index_in_range", "numeric_input",
           "known_padding", "known_parameterization"]


def positive_int(layer: str, arg: str, value) -> int:
  """``value`` as an int; it must be an integer > 0 (not a bool)."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{layer}: `{arg}` must be a positive integer; got "
                    f"{value!r} ({type(value).__name__}).")
  if value <= 0:
    raise ValueError(f"{layer}: `{arg}` must be a positive integer; got "
                     f"{value!r}.")
  return int(value)


def positive_ints(layer: str, arg: str, values: Optional[Sequence],
                  ) -> Optional[tuple]:
  """Each entry of ``values`` (``None`` passes) is an integer > 0."""
  if values is None:
    return None
  try:
    entries = tuple(values)
  except TypeError:
    raise TypeError(f"{layer}: `{arg}` must be a sequence of positive "
                    f"integers; got {values!r}.") from None
  for v in entries:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0:
      raise ValueError(f"{layer}: every entry of `{arg}` must be a positive "
                       f"integer; got {arg}={values!r}.")
  return entries


def finite_float(layer: str, arg: str, value, allow_none: bool = False
                 ) -> None:
  """``value`` is a finite real number (a scalar or array of them)."""
  if value is None and allow_none:
    return
  if value is None or isinstance(value, (str, bytes)):
    raise TypeError(f"{layer}: `{arg}` must be a finite number; got "
                    f"{value!r}.")
  if not is_concrete(value):
    return
  try:
    a = np.asarray(value, dtype=float)
  except (TypeError, ValueError):
    raise TypeError(f"{layer}: `{arg}` must be a finite number; got "
                    f"{value!r}.") from None
  if not np.all(np.isfinite(a)):
    raise ValueError(f"{layer}: `{arg}` must be finite; got {arg}={value!r}.")


def positive_floats(layer: str, arg: str, values: Sequence) -> None:
  """Each entry is a finite number > 0 (e.g. the width scalings ``s``)."""
  for v in tuple(values):
    if not is_concrete(v):
      continue
    try:
      ok = math.isfinite(float(v)) and float(v) > 0
    except (TypeError, ValueError):
      ok = False
    if not ok:
      raise ValueError(f"{layer}: every entry of `{arg}` must be a finite "
                       f"number > 0; got {arg}={tuple(values)!r}.")


def resize_shape(layer: str, shape: Sequence) -> None:
  """Target sizes of a resize: integers > 0, or -1 (keep the axis)."""
  for v in tuple(shape):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or (
        v <= 0 and v != -1):
      raise ValueError(f"{layer}: every entry of `shape` must be a positive "
                       f"integer or -1 (keep that axis); got shape="
                       f"{tuple(shape)!r}.")


def index_in_range(layer: str, idx, shape: Sequence[int]) -> None:
  """Integer entries of the index ``idx`` are within their axes' sizes.

  JAX clamps out-of-range integer indices; a layer must not. Slices are
  left alone (they clip as in NumPy).
  """
  entries = idx if isinstance(idx, tuple) else (idx,)
  ndim = len(shape)
  # Identity tests: entries may be index arrays, whose == is elementwise.
  ellipses = [i for i, e in enumerate(entries) if e is Ellipsis]
  if ellipses:
    e = ellipses[0]
    fill = ndim - (len(entries) - 1 - sum(x is None for x in entries))
    entries = entries[:e] + (slice(None),) * fill + entries[e + 1:]
  axis = 0
  for entry in entries:
    if entry is None:
      continue
    if axis >= ndim:
      raise ValueError(f"{layer}: index {idx!r} has more entries than the "
                       f"{ndim} axes of inputs of shape {tuple(shape)}.")
    if isinstance(entry, numbers.Integral) and not isinstance(entry, bool):
      size = shape[axis]
      if not -size <= entry < size:
        raise IndexError(f"{layer}: index {int(entry)} is out of range for "
                         f"axis {axis} of size {size} (inputs of shape "
                         f"{tuple(shape)}).")
    axis += 1


def known_padding(layer: str, padding) -> None:
  """``padding`` is 'VALID', 'SAME' or 'CIRCULAR' (any case) or a `Padding`."""
  name = getattr(padding, "value", padding)
  if not isinstance(name, str) or name.upper() not in ("VALID", "SAME",
                                                       "CIRCULAR"):
    raise ValueError(f"{layer}: `padding` must be 'VALID', 'SAME' or "
                     f"'CIRCULAR'; got padding={padding!r}.")


def known_parameterization(layer: str, parameterization) -> None:
  if not isinstance(parameterization, str) or parameterization.lower() not in (
      "ntk", "standard"):
    raise ValueError(f"{layer}: `parameterization` must be 'ntk' or "
                     f"'standard'; got parameterization={parameterization!r}.")


def numeric_input(layer: str, label: str, x, batch_axis: int = 0) -> None:
  """Inputs have a numeric dtype and no empty non-batch (feature) axis."""
  dtype = getattr(x, "dtype", None)
  if dtype is not None and not (jnp.issubdtype(dtype, jnp.number) or
                                jnp.issubdtype(dtype, jnp.bool_)):
    raise TypeError(f"{layer}: {label} must be a numeric array; got dtype "
                    f"{dtype} (shape {tuple(np.shape(x))}).")
  shape = tuple(np.shape(x))
  for i, d in enumerate(shape):
    if d == 0 and i != batch_axis % len(shape):
      raise ValueError(f"{layer}: {label} of shape {shape} has no entries on "
                       f"axis {i}; feature and spatial axes must be "
                       f"non-empty.")
