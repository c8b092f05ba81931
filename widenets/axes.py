"""Axis bookkeeping shared across the package."""
from __future__ import annotations

from typing import Sequence, Union

__all__ = ["Axes", "canonical_axes", "spatial_axes"]

Axes = Union[int, Sequence[int]]


def canonical_axes(axes: Axes, ndim: int, name: str,
                   what: str = "outputs") -> tuple[int, ...]:
  """Sorted, unique, non-negative axes of an ``ndim``-dimensional array.

  ``axes`` is an int or a sequence of ints in ``[-ndim, ndim)``; otherwise a
  ValueError names the argument ``name`` and ``what`` the array is.
  """
  axes = (axes,) if isinstance(axes, int) else tuple(axes)
  for a in axes:
    if not -ndim <= a < ndim:
      raise ValueError(f"`{name}`={axes} is out of range for {what} with "
                       f"{ndim} dimensions.")
  return tuple(sorted({a % ndim for a in axes}))


def spatial_axes(ndim: int, batch_axis: int, channel_axis: int
                 ) -> tuple[int, ...]:
  """The axes of an ``ndim``-dimensional input other than its batch and
  channel axes, in order."""
  skip = (batch_axis % ndim, channel_axis % ndim)
  return tuple(i for i in range(ndim) if i not in skip)
