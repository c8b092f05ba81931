"""`LayerNorm`: normalization by the variance over chosen axes."""
from __future__ import annotations

import jax.numpy as jnp

from ..axes import canonical_axes, spatial_axes
from ..kernel import Kernel
from . import covariance, masking
from .layer import Requirements, layer
from .sharing import hyperparameters


@hyperparameters("eps")
@layer
def LayerNorm(axis=-1, eps: float = 1e-12, batch_axis: int = 0,
              channel_axis: int = -1):
  """``(x - mean(x)) / sqrt(eps + var(x))`` over ``axis`` (must include the
  channel axis; masked entries excluded from the mean).

  Kernel (Gaussian inputs): ``K[i, j, x, x'] / sqrt((eps + v_i(x)) (eps +
  v_j(x')))`` where ``v`` is the variance averaged over the non-channel axes
  in ``axis``.
  """

  def init_fn(rng, input_shape):
    return tuple(input_shape), ()

  def apply_fn(params, inputs, mask=None, **kwargs):
    axes = canonical_axes(axis, inputs.ndim, "LayerNorm: axis", "inputs")
    if mask is None:
      mean = jnp.mean(inputs, axes, keepdims=True)
      var = jnp.var(inputs, axes, keepdims=True)
    else:
      count = jnp.maximum(jnp.sum(~jnp.broadcast_to(mask, inputs.shape), axes,
                                  keepdims=True), 1)
      mean = jnp.sum(inputs, axes, keepdims=True) / count
      var = jnp.sum((inputs - mean)**2, axes, keepdims=True) / count
    return (inputs - mean) / jnp.sqrt(eps + var)

  def rule(k: Kernel, **kwargs) -> Kernel:
    if not k.is_gaussian:
      raise ValueError(f"LayerNorm: needs Gaussian inputs (an affine layer "
                       f"before it); got a kernel of shape {tuple(k.shape1)} "
                       f"that is not.")
    ndim = len(k.shape1)
    axes = canonical_axes(axis, ndim, "LayerNorm: axis", "inputs")
    ca, ba = k.channel_axis % ndim, k.batch_axis % ndim
    if ca not in axes:
      raise ValueError(f"LayerNorm: axis={axis} must include the channel axis "
                       f"{ca} (input shape {tuple(k.shape1)}) for the kernel "
                       f"to converge.")
    spatial = list(spatial_axes(ndim, ba, ca))
    sp_axes = tuple(1 + spatial.index(a) for a in axes if a in spatial)
    over_batch = ba in axes
    if not sp_axes and not over_batch:
      def pair_rule(cov, var1, var2, ntk):
        norm = jnp.sqrt((eps + var1) * (eps + var2))
        return cov / norm, None if ntk is None else ntk / norm
      return covariance.map_pairwise(k, pair_rule)

    red = ((0,) if over_batch else ()) + sp_axes

    def variances(cov, mask):
      d = covariance.spatial_diagonal(cov, k.cov_batch_ndim,
                                      k.diagonal_spatial) + eps
      m = masking.spatial_mask(mask, k)
      if m is None:
        return jnp.mean(d, red, keepdims=True)
      w = (~m).astype(d.dtype)
      return (jnp.sum(d * w, red, keepdims=True) /
              jnp.maximum(jnp.sum(jnp.broadcast_to(w, d.shape), red,
                                  keepdims=True), 1))

    def zipped(d, position):
      return covariance.expand(d, d.ndim - 1, position, k.diagonal_spatial)

    d1 = variances(k.cov1, k.mask1)
    d2 = d1 if k.cov2 is None else variances(k.cov2, k.mask2)

    def norm(mat, a, b, both):
      if mat is None or jnp.ndim(mat) == 0:
        return mat
      if both:
        p = zipped(a, 0)[:, None] * zipped(b, 1)[None, :]
      else:
        p = zipped(a, 0) * zipped(b, 1)
      return mat / jnp.sqrt(p)

    both = not k.diagonal_batch
    return k.replace(nngp=norm(k.nngp, d1, d2, True),
                     ntk=norm(k.ntk, d1, d2, True),
                     cov1=norm(k.cov1, d1, d1, both),
                     cov2=None if k.cov2 is None else norm(k.cov2, d2, d2,
                                                           both))

  ax = canonical_axes(axis, 64, "LayerNorm: axis", "inputs")
  mixes = any(a % 64 != channel_axis % 64 for a in ax)
  return init_fn, apply_fn, rule, Requirements(
      diagonal_spatial_ok=not mixes, packable=not mixes,
      blocker="LayerNorm" if mixes else None, batch_axis=batch_axis,
      channel_axis=channel_axis), masking.MaskRule(remask=False)
