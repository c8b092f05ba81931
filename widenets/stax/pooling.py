"""Pooling over spatial axes: `AvgPool`, `SumPool` (windows, via
`stencil.pool`), and the readouts `GlobalAvgPool`, `GlobalSumPool`, `Flatten`.

Local pools and global pools mix positions, so they need covariances between
all pairs of positions; `Flatten` reads only same-position covariances, so a
network read out by it runs on the spatial diagonal.
"""
from __future__ import annotations

import functools
import operator
from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax

from ..axes import spatial_axes
from ..kernel import Kernel
from . import masking, stencil, validation
from .layer import Requirements, layer


def mean_spatial_diagonal(mat, batch_ndim: int, diagonal_spatial: bool):
  """Mean over spatial positions of ``mat[.., x, x, y, y, ..]``."""
  if mat is None or jnp.ndim(mat) <= batch_ndim:
    return mat
  if diagonal_spatial:
    return jnp.mean(mat, axis=tuple(range(batch_ndim, mat.ndim)))
  while mat.ndim > batch_ndim:
    mat = jnp.trace(mat, axis1=-2, axis2=-1) / mat.shape[-1]
  return mat


@layer
def Flatten(batch_axis: int = 0, batch_axis_out: int = 0):
  """Flattens all non-batch axes into one feature axis.

  Kernel: the mean over positions of the same-position covariances (only the
  spatial diagonal is needed, so a CNN read out by Flatten runs on
  ``diagonal_spatial`` covariances).
  """
  if batch_axis_out in (0, -2):
    batch_axis_out, channel_axis_out = 0, 1
  elif batch_axis_out in (1, -1):
    batch_axis_out, channel_axis_out = 1, 0
  else:
    raise ValueError(f"Flatten: batch_axis_out must be 0 or 1; got "
                     f"{batch_axis_out}.")

  def out_shape(input_shape):
    n = input_shape[batch_axis]
    rest = [s for i, s in enumerate(input_shape)
            if i != batch_axis % len(input_shape)]
    size = functools.reduce(operator.mul, rest, 1)
    return (n, size) if batch_axis_out == 0 else (size, n)

  init_fn = lambda rng, input_shape: (out_shape(input_shape), ())

  def apply_fn(params, inputs, **kwargs):
    x = jnp.moveaxis(inputs, batch_axis, 0).reshape(inputs.shape[batch_axis],
                                                    -1)
    return x if batch_axis_out == 0 else x.T

  def rule(k: Kernel, **kwargs) -> Kernel:
    f = lambda m, b: mean_spatial_diagonal(m, b, k.diagonal_spatial)
    ntk = k.ntk
    if ntk is not None and jnp.ndim(ntk) > 0:
      ntk = f(ntk, k.batch_ndim)
    return k.replace(
        nngp=f(k.nngp, k.batch_ndim), ntk=ntk,
        cov1=f(k.cov1, k.cov_batch_ndim),
        cov2=None if k.cov2 is None else f(k.cov2, k.cov_batch_ndim),
        is_gaussian=False, is_reversed=False, batch_axis=batch_axis_out,
        channel_axis=channel_axis_out, diagonal_spatial=False)

  def mask_fn(mask, input_shape):
    mask = jnp.broadcast_to(mask, tuple(input_shape))
    return apply_fn((), mask)

  return init_fn, apply_fn, rule, Requirements(
      readout=True, batch_axis=batch_axis), masking.MaskRule(mask_fn,
                                                             remask=False)


# --- local and global pooling ----------------------------------------------

def window_geometry(name: str, window_shape, strides, padding,
                    batch_axis: int, channel_axis: int):
  """Shared by every windowed pooling layer (AvgPool, SumPool, MaxPool).

  Returns ``(window_shape, strides, padding, windows_for, init_fn)``:
  ``windows_for(in_spatial)`` gives the per-axis `stencil` windows (with the
  layer's clear errors) and ``init_fn`` the output shape.
  """
  validation.known_padding(name, padding)
  window_shape = validation.positive_ints(name, "window_shape", window_shape)
  strides = validation.positive_ints(name, "strides", strides or None)
  strides = tuple(strides) if strides else (1,) * len(window_shape)
  padding = stencil.as_padding(padding)
  if len(strides) != len(window_shape):
    raise ValueError(f"{name}: window_shape {window_shape} and strides "
                     f"{strides} have different lengths.")

  def windows_for(in_spatial):
    if len(in_spatial) != len(window_shape):
      raise ValueError(
          f"{name}: window_shape {window_shape} has {len(window_shape)} "
          f"spatial axes but the input has {len(in_spatial)} (spatial shape "
          f"{tuple(in_spatial)}).")
    w = stencil.pool_windows(in_spatial, window_shape, strides, padding)
    stencil.check_windows(name, w, in_spatial, window_shape)
    return w

  def init_fn(rng, input_shape):
    input_shape = tuple(input_shape)
    axes = spatial_axes(len(input_shape), batch_axis, channel_axis)
    windows = windows_for(tuple(input_shape[a] for a in axes))
    out = list(input_shape)
    for a, w in zip(axes, windows):
      out[a] = w.raw_out
    return tuple(out), ()

  return window_shape, strides, padding, windows_for, init_fn


def _pool_layer(name: str, window_shape, strides, padding,
                normalize_edges: bool, batch_axis: int, channel_axis: int,
                average: bool):
  window_shape, strides, padding, windows_for, init_fn = window_geometry(
      name, window_shape, strides, padding, batch_axis, channel_axis)
  edge_counts = normalize_edges and padding == stencil.Padding.SAME

  def apply_fn(params, inputs, **kwargs):
    axes = spatial_axes(inputs.ndim, batch_axis, channel_axis)
    windows = windows_for(tuple(inputs.shape[a] for a in axes))
    dims, steps = [1] * inputs.ndim, [1] * inputs.ndim
    x = inputs
    for a, w in zip(axes, windows):
      x = stencil.pad_axes(x, (a,), w)
      dims[a], steps[a] = w.size, w.stride
    out = lax.reduce_window(x, np.zeros((), x.dtype), lax.add, dims, steps,
                            "VALID")
    if not average:
      return out
    if edge_counts:
      counts = stencil.pool_counts(windows, out.dtype)
      return out / jnp.expand_dims(counts, (batch_axis % inputs.ndim,
                                            channel_axis % inputs.ndim))
    return out / np.prod(window_shape)

  def rule(k: Kernel, **kwargs) -> Kernel:
    shape = k.nngp.shape[k.batch_ndim:]
    windows = windows_for(tuple(shape[::2]))
    if average:
      if edge_counts:
        c = stencil.pool_counts(windows, k.nngp.dtype)
        norm = (c.reshape(sum(((d, 1) for d in c.shape), ())) *
                c.reshape(sum(((1, d) for d in c.shape), ())))
      else:
        norm = float(np.prod(window_shape))**2
    else:
      norm = 1.0

    def f(mat, batch_ndim):
      if mat is None or jnp.ndim(mat) == 0:
        return mat
      # Batch axes stated explicitly (no implicit rank promotion).
      lead = (1,) * (batch_ndim if jnp.ndim(norm) else 0)
      return stencil.pool(mat, batch_ndim, windows) / jnp.reshape(
          norm, lead + jnp.shape(norm))

    return k.replace(nngp=f(k.nngp, k.batch_ndim),
                     ntk=None if k.ntk is None else f(k.ntk, k.batch_ndim),
                     cov1=f(k.cov1, k.cov_batch_ndim),
                     cov2=None if k.cov2 is None else f(k.cov2,
                                                        k.cov_batch_ndim))

  def mask_fn(mask, input_shape):
    ndim = len(input_shape)
    masking.check_position_mask(name, mask, channel_axis % ndim)
    axes = spatial_axes(ndim, batch_axis, channel_axis)
    windows = windows_for(tuple(input_shape[a] for a in axes))
    return masking.window_centres(mask, axes, windows)

  return init_fn, apply_fn, rule, Requirements(
      diagonal_spatial_ok=False, blocker=name, batch_axis=batch_axis,
      channel_axis=channel_axis), masking.MaskRule(mask_fn)


@layer
def AvgPool(window_shape: Sequence[int],
            strides: Optional[Sequence[int]] = None, padding: str = "VALID",
            normalize_edges: bool = False, batch_axis: int = 0,
            channel_axis: int = -1):
  """Average pooling over windows of the spatial axes.

  Args:
    window_shape: window per spatial axis (in the inputs' axis order).
    strides: strides (default 1).
    padding: ``'VALID'``, ``'SAME'`` or ``'CIRCULAR'`` (periodic).
    normalize_edges: with ``'SAME'``, divide by the number of non-padding
      entries in each window (as `jax.example_libraries.stax.AvgPool`) rather
      than by the window size.
    batch_axis, channel_axis: axes of the inputs.

  Kernel: ``K'[o, o'] = sum_{d, d'} K[o s + d, o' s + d'] / (|w| |w'|)``
  (`stencil.pool`); needs covariances between all pairs of positions.
  """
  return _pool_layer("AvgPool", window_shape, strides, padding,
                     normalize_edges, batch_axis, channel_axis, True)


@layer
def SumPool(window_shape: Sequence[int],
            strides: Optional[Sequence[int]] = None, padding: str = "VALID",
            batch_axis: int = 0, channel_axis: int = -1):
  """Sum pooling over windows of the spatial axes (see `AvgPool`)."""
  return _pool_layer("SumPool", window_shape, strides, padding, False,
                     batch_axis, channel_axis, False)


def _global_pool_layer(name: str, batch_axis: int, channel_axis: int,
                       average: bool):

  def init_fn(rng, input_shape):
    ndim = len(input_shape)
    keep = (batch_axis % ndim, channel_axis % ndim)
    return tuple(input_shape[i] for i in range(ndim) if i in keep), ()

  def apply_fn(params, inputs, mask=None, **kwargs):
    axes = spatial_axes(inputs.ndim, batch_axis, channel_axis)
    if average:
      if mask is None:
        return jnp.mean(inputs, axes)
      keep = 1 - mask.astype(inputs.dtype)
      return jnp.sum(inputs * keep, axes) / jnp.maximum(
          jnp.sum(jnp.broadcast_to(keep, inputs.shape), axes), 1)
    return jnp.sum(inputs, axes)

  def rule(k: Kernel, **kwargs) -> Kernel:
    ndim = len(k.shape1)
    batch_first = batch_axis % ndim < channel_axis % ndim

    def f(mat, batch_ndim, weight=None):
      if mat is None or jnp.ndim(mat) <= batch_ndim:
        return mat
      axes = tuple(range(batch_ndim, mat.ndim))
      if weight is not None:
        total = jnp.sum(mat * weight, axes)
        if average:
          total = total / jnp.maximum(jnp.sum(
              jnp.broadcast_to(weight, mat.shape), axes), 1)
        return total
      # A matrix-vector product: XLA's CPU reduction of a large operand
      # materialized a same-sized broadcast constant.
      size = int(np.prod(mat.shape[batch_ndim:]))
      flat = mat.reshape(mat.shape[:batch_ndim] + (size,))
      ones = jnp.full((size,), 1.0 / size if average else 1.0, mat.dtype)
      return jnp.dot(flat, ones, precision=lax.Precision.HIGHEST)

    w12 = w11 = w22 = None
    if k.mask1 is not None or k.mask2 is not None:
      masking.check_position_mask(name, k.mask1, k.channel_axis % ndim)
      w11, w12, w22 = masking.pair_weights(k)
    return k.replace(
        nngp=f(k.nngp, k.batch_ndim, w12),
        ntk=None if k.ntk is None else f(k.ntk, k.batch_ndim, w12),
        cov1=f(k.cov1, k.cov_batch_ndim, w11),
        cov2=None if k.cov2 is None else f(k.cov2, k.cov_batch_ndim, w22),
        batch_axis=0 if batch_first else 1,
        channel_axis=1 if batch_first else 0, is_reversed=False,
        mask1=None, mask2=None)

  def mask_fn(mask, input_shape):
    ndim = len(input_shape)
    masking.check_position_mask(name, mask, channel_axis % ndim)
    return jnp.all(mask, spatial_axes(ndim, batch_axis, channel_axis))

  return init_fn, apply_fn, rule, Requirements(
      readout=True, diagonal_spatial_ok=False, blocker=name,
      batch_axis=batch_axis, channel_axis=channel_axis), masking.MaskRule(
          mask_fn, remask=False)


@layer
def GlobalAvgPool(batch_axis: int = 0, channel_axis: int = -1):
  """Mean over (and removal of) all spatial axes.

  Kernel: the mean of ``K[x, x']`` over all pairs of positions (masked
  positions excluded), so it needs the full spatial covariance.
  """
  return _global_pool_layer("GlobalAvgPool", batch_axis, channel_axis, True)


@layer
def GlobalSumPool(batch_axis: int = 0, channel_axis: int = -1):
  """Sum over (and removal of) all spatial axes; kernel: the sum of
  ``K[x, x']`` over all pairs of positions."""
  return _global_pool_layer("GlobalSumPool", batch_axis, channel_axis, False)
