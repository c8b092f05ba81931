"""`ImageResize`: `jax.image.resize` of the inputs and of their kernel."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ..axes import spatial_axes
from ..kernel import Kernel
from . import masking, validation
from .layer import Requirements, layer


@layer
def ImageResize(shape, method, antialias: bool = True,
                precision=jax.lax.Precision.HIGHEST, batch_axis: int = 0,
                channel_axis: int = -1):
  """`jax.image.resize` of the inputs to ``shape`` (``-1`` keeps an axis).

  Kernel (``'linear'`` and ``'nearest'``, which act linearly and separately
  on each axis): the covariances resized the same way along both positions of
  every zipped pair (the channel axis must be kept: ``-1``).
  """
  shape = tuple(shape)
  validation.resize_shape("ImageResize", shape)

  def target(input_shape):
    return tuple(int(d) if s == -1 else int(s)
                 for s, d in zip(shape, input_shape))

  def init_fn(rng, input_shape):
    return target(input_shape), ()

  def apply_fn(params, inputs, **kwargs):
    return jax.image.resize(inputs, target(inputs.shape), method,
                            antialias=antialias, precision=precision)

  def rule(k: Kernel, **kwargs) -> Kernel:
    m = (jax.image.ResizeMethod.from_string(method)
         if isinstance(method, str) else method)
    if m not in (jax.image.ResizeMethod.LINEAR,
                 jax.image.ResizeMethod.NEAREST):
      raise NotImplementedError(
          f"ImageResize: kernel_fn supports method 'linear' and 'nearest' "
          f"only; got {method!r}.")
    ndim = len(k.shape1)
    b, c = batch_axis % ndim, channel_axis % ndim
    if shape[c] != -1:
      raise ValueError(f"ImageResize: the channel axis {c} cannot be resized "
                       f"in the infinite-width limit; set shape[{c}] = -1 "
                       f"(got shape {shape}).")
    t1, t2 = target(k.shape1), target(k.shape2)
    sp = spatial_axes(ndim, b, c)

    def resize(mat, s1, s2, batch_ndim):
      if mat is None or jnp.ndim(mat) == 0:
        return mat
      out = list(mat.shape[:batch_ndim])
      if shape[b] != -1:
        out = [s1[b]] + ([s2[b]] if batch_ndim == 2 else [])
      for i in sp:
        out += [s1[i]] if k.diagonal_spatial else [s1[i], s2[i]]
      return jax.image.resize(mat, tuple(out), m, antialias=antialias,
                              precision=precision)

    return k.replace(
        nngp=resize(k.nngp, t1, t2, k.batch_ndim),
        ntk=resize(k.ntk, t1, t2, k.batch_ndim),
        cov1=resize(k.cov1, t1, t1, k.cov_batch_ndim),
        cov2=None if k.cov2 is None else resize(k.cov2, t2, t2,
                                                k.cov_batch_ndim))

  def mask_fn(mask, input_shape):
    # Masked only where every contribution is masked (content wins).
    return ~jax.image.resize(~mask, target(mask.shape), method,
                             antialias=antialias,
                             precision=precision).astype(bool)

  b_resized = shape[batch_axis] != -1
  sp_resized = any(s != -1 for i, s in enumerate(shape)
                   if i not in (batch_axis % len(shape),
                                channel_axis % len(shape)))
  return init_fn, apply_fn, rule, Requirements(
      diagonal_spatial_ok=not sp_resized, diagonal_batch_ok=not b_resized,
      packable=not b_resized, blocker="ImageResize" if sp_resized else None,
      batch_axis=batch_axis, channel_axis=channel_axis), masking.MaskRule(
          mask_fn=mask_fn)
