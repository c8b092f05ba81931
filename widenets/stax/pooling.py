"""Readouts and pooling over spatial axes: `Flatten` (more in the conv issue)."""
from __future__ import annotations

import functools
import operator

import jax.numpy as jnp

from ..kernel import Kernel
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

  return init_fn, apply_fn, rule, Requirements(readout=True,
                                               batch_axis=batch_axis)
