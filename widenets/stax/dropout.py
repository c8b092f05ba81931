"""`Dropout`: random masking of units, inflating each unit's own variance."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ..kernel import Kernel
from . import covariance
from .layer import Requirements, layer


def _spatial_diagonal_mask(k: Kernel, mat, batch_ndim: int):
  """True on entries with ``x == x'`` in every zipped spatial pair."""
  if k.diagonal_spatial or mat.ndim == batch_ndim:
    return jnp.ones((), bool)
  sizes = mat.shape[batch_ndim::2]
  mask = jnp.ones((1,) * batch_ndim, bool)
  for s in sizes:
    eye = jnp.eye(s, dtype=bool).reshape((1,) * mask.ndim + (s, s))
    mask = mask[..., None, None] & eye
  return mask


@layer
def Dropout(rate: float, mode: str = "train"):
  """Dropout with keep probability ``rate`` (``rate=1`` keeps everything).

  ``mode='train'``: ``apply_fn`` needs ``rng`` and drops units; the kernel
  inflates the variance of each unit by ``1 / rate`` (entries pairing a unit
  with itself: the same input, the same position). ``mode='test'``: identity.
  """
  if mode not in ("train", "test"):
    raise ValueError(f"Dropout: mode must be 'train' or 'test'; got {mode!r}.")
  if not 0.0 < rate <= 1.0:
    raise ValueError(f"Dropout: rate (keep probability) must be in (0, 1]; "
                     f"got {rate}.")

  init_fn = lambda rng, input_shape: (input_shape, ())

  def apply_fn(params, inputs, rng=None, **kwargs):
    if mode == "test":
      return inputs
    if rng is None:
      raise ValueError("Dropout: apply_fn(..., rng=key) is required in "
                       "mode='train'.")
    keep = jax.random.bernoulli(rng, rate, inputs.shape)
    return jnp.where(keep, inputs / rate, 0)

  def rule(k: Kernel, **kwargs) -> Kernel:
    if mode == "test":
      return k
    if k.is_input:
      raise ValueError("Dropout: cannot be applied to the inputs directly; "
                       "put an affine layer (Dense/Conv) before it.")
    factor = 1.0 / rate

    def scale(mat, batch_mask, batch_ndim):
      if mat is None or jnp.ndim(mat) == 0:
        return mat
      batch_mask = jnp.reshape(batch_mask, jnp.shape(batch_mask) + (1,) * (
          mat.ndim - jnp.ndim(batch_mask)))  # explicit trailing spatial axes
      mask = batch_mask & _spatial_diagonal_mask(k, mat, batch_ndim)
      return mat * jnp.where(mask, factor, 1.0)

    nngp_mask = covariance.batch_diagonal_mask(k) & k.x1_is_x2
    cov_mask = (jnp.ones((), bool) if k.diagonal_batch else
                jnp.eye(k.cov1.shape[0], dtype=bool).reshape(
                    k.cov1.shape[:2] + (1,) * (k.cov1.ndim - 2)))
    return k.replace(
        nngp=scale(k.nngp, nngp_mask, k.batch_ndim),
        ntk=scale(k.ntk, nngp_mask, k.batch_ndim),
        cov1=scale(k.cov1, cov_mask, k.cov_batch_ndim),
        cov2=scale(k.cov2, cov_mask, k.cov_batch_ndim),
        is_gaussian=False)

  return init_fn, apply_fn, rule, Requirements()
