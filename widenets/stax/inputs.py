"""From raw inputs to the first `Kernel`: checks, masking, covariances.

``kernel_fn(x1, x2)`` validates its inputs here (`validate_inputs`: types,
ranks, shapes; their values are checked inside the compiled call), masks
entries equal to ``mask_constant`` (`mask_inputs`) and builds the kernel of
the inputs themselves, ``nngp = x1 . x2 / n_channels`` (`inputs_to_kernel`).
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from ..kernel import Kernel, same_inputs
from . import covariance, masking, validation

__all__ = ["is_kernel_tree", "validate_inputs", "mask_inputs",
           "inputs_to_kernel"]


def is_kernel_tree(x) -> bool:
  """Whether ``x`` is a `Kernel` or a (non-empty) tree of them."""
  leaves = jax.tree_util.tree_leaves(
      x, is_leaf=lambda l: isinstance(l, Kernel))
  return bool(leaves) and all(isinstance(l, Kernel) for l in leaves)


def validate_inputs(name: str, x1, x2, batch_axis: int = 0) -> None:
  """Static checks of ``kernel_fn``'s inputs (types, ranks, shapes), with
  errors naming the layer ``name``."""
  l1 = jax.tree_util.tree_leaves(x1)
  l2 = None if x2 is None else jax.tree_util.tree_leaves(x2)
  if not l1:
    raise ValueError(f"{name}: kernel_fn got no inputs.")
  for i, a in enumerate(l1):
    if not hasattr(a, "shape"):
      raise TypeError(f"{name}: inputs must be arrays; got "
                      f"{type(a).__name__}.")
    if a.ndim < 2:
      raise ValueError(
          f"{name}: inputs must be at least 2-D (a batch axis and a feature "
          f"axis); got shape {tuple(a.shape)}. For N scalar inputs use "
          f"x.reshape(-1, 1); for one example use x[None].")
    validation.numeric_input(name, "x1", a, batch_axis)
    if l2 is not None:
      validation.numeric_input(name, "x2", l2[i], batch_axis)
    if l2 is not None:
      b = l2[i]
      rest = lambda s: tuple(d for i, d in enumerate(s)
                             if i != batch_axis % len(s))
      if b.ndim != a.ndim or rest(b.shape) != rest(a.shape):
        raise ValueError(
            f"{name}: x1 and x2 must have the same shape apart from the batch "
            f"axis; got x1 {tuple(a.shape)} and x2 {tuple(b.shape)}.")


def mask_inputs(x, mask_constant: Optional[float]):
  """``(x with masked entries set to 0, mask)``: entries equal to
  ``mask_constant`` (NaN matches NaN) are masked; ``mask`` is None without a
  ``mask_constant``."""
  if mask_constant is None:
    return x, None
  if isinstance(mask_constant, jax.Array):
    mask = jnp.where(jnp.isnan(mask_constant), jnp.isnan(x),
                     x == mask_constant.astype(x.dtype))
  elif np.isnan(mask_constant):
    mask = jnp.isnan(x)
  else:
    mask = x == mask_constant
  return jnp.where(mask, 0, x), mask


def _channel_covariance(u, v, diag_batch: bool, diagonal_spatial: bool):
  """``u . v / C`` over the channels of ``(N, spatial..., C)`` arrays:
  ``(N, M) + S`` (``(N,) + S`` if ``diag_batch``), ``S`` zipped pairwise
  ``(X, X', Y, Y', ...)`` or only diagonal ``(X, Y, ...)``."""
  n_sp = u.ndim - 2
  letters = "abcdefghijklmnopqrstuvw"[:n_sp]
  primed = "ABCDEFGHIJKLMNOPQRSTUVW"[:n_sp]
  if diagonal_spatial:
    out_sp = v_sp = letters
  else:
    out_sp = "".join(x + y for x, y in zip(letters, primed))
    v_sp = primed
  if diag_batch:
    spec = f"n{letters}z,n{v_sp}z->n{out_sp}"
  else:
    spec = f"n{letters}z,m{v_sp}z->nm{out_sp}"
  return jnp.einsum(spec, u, v, precision=jax.lax.Precision.HIGHEST
                    ) / u.shape[-1]


def _batch_covariances(a, b, nngp, cov, diagonal_batch: bool, x1_is_x2):
  """``(cov1, cov2)`` of whole batches ``a`` and ``b`` (``None``: x2 is x1),
  taken from nngp's diagonal where the batches are the same inputs (see
  `covariance.sample_diagonal`)."""
  if b is None and diagonal_batch:
    return covariance.sample_diagonal(nngp), None
  cov1 = cov(a, a, diagonal_batch)
  if b is None:
    return cov1, None
  cov2 = cov(b, b, diagonal_batch)
  if a.shape == b.shape:
    # x2 passed equal to x1: x2=None's kernel to round-off.
    same = covariance.sample_diagonal(nngp) if diagonal_batch else nngp
    cov1 = covariance.snapped(x1_is_x2, same, cov1)
    cov2 = covariance.snapped(x1_is_x2, same, cov2)
  return cov1, cov2


def _row_block_covariances(a, b, nngp, cov, row_offset, x1_is_x2):
  """``(nngp, cov1, cov2)`` of rows ``row_offset:`` of x1 (``a``) against
  the whole x2 (``b``). Where the whole batches are the same inputs
  (``x1_is_x2``; None when their shapes differ), sample ``i`` of the block is
  sample ``i + row_offset`` of x2: its variances are x2's, also on nngp's
  diagonal, so that rules see exactly zero angle there."""
  cov2 = cov(b, b, True)
  cov1 = cov(a, a, True)
  if x1_is_x2 is not None:
    diag = jnp.arange(a.shape[0])[:, None] + row_offset == jnp.arange(
        b.shape[0])[None, :]
    diag = (diag & x1_is_x2).reshape(diag.shape + (1,) * (nngp.ndim - 2))
    nngp = covariance.snapped(diag, cov2[None], nngp)
    cov1 = covariance.snapped(x1_is_x2, jax.lax.dynamic_slice_in_dim(
        cov2, row_offset, a.shape[0]), cov1)
  return nngp, cov1, cov2


def inputs_to_kernel(x1, x2, *, diagonal_batch: bool, diagonal_spatial: bool,
                     compute_ntk: bool, batch_axis: int = 0,
                     channel_axis: Optional[int] = -1,
                     mask_constant: Optional[float] = None,
                     x1_is_x2=None, row_offset=None) -> Kernel:
  """The `Kernel` of raw inputs: ``nngp = x1 . x2 / n_channels``.

  Covariances are taken over the channel axis; other non-batch axes are
  spatial and kept pairwise (or only diagonally). ``channel_axis=None``
  flattens all non-batch axes into channels.

  ``row_offset`` (traced int): ``x1`` is rows ``offset:offset + len(x1)`` of
  the whole first batch (a `chunking` block; needs ``x2``, ``batch_axis=0``
  and ``diagonal_batch``); the kernel carries it (`Kernel.row_offset`), and
  ``x1_is_x2`` is then the whole batches' flag (Python ``False`` when their
  shapes differ).
  """
  dtype = jnp.result_type(float)
  x1 = jnp.asarray(x1)
  if not jnp.issubdtype(x1.dtype, jnp.floating):
    x1 = x1.astype(dtype)
  x2 = None if x2 is None else jnp.asarray(x2, x1.dtype)
  # Python False: the whole batches differ in shape (row blocks only).
  maybe_same = x1_is_x2 is not False
  x1_is_x2 = jnp.asarray(same_inputs(x1, x2) if x1_is_x2 is None
                         else x1_is_x2)
  if channel_axis is None:
    flat = lambda x: None if x is None else jnp.moveaxis(
        x, batch_axis, 0).reshape(x.shape[batch_axis], -1)
    x1, x2 = flat(x1), flat(x2)
    batch_axis, channel_axis = 0, 1
  batch_axis %= x1.ndim
  channel_axis %= x1.ndim
  x1, mask1 = mask_inputs(x1, mask_constant)
  mask2 = None
  if x2 is not None:
    x2, mask2 = mask_inputs(x2, mask_constant)

  def canon(x):  # -> (N, spatial..., C)
    return None if x is None else jnp.moveaxis(x, (batch_axis, channel_axis),
                                               (0, -1))

  a, b = canon(x1), canon(x2)
  cov = functools.partial(_channel_covariance,
                          diagonal_spatial=diagonal_spatial)
  nngp = cov(a, a if b is None else b, False)
  if row_offset is not None:
    nngp, cov1, cov2 = _row_block_covariances(
        a, b, nngp, cov, row_offset, x1_is_x2 if maybe_same else None)
  else:
    cov1, cov2 = _batch_covariances(a, b, nngp, cov, diagonal_batch,
                                    x1_is_x2)
  k = Kernel(
      nngp=nngp, ntk=jnp.zeros((), nngp.dtype) if compute_ntk else None,
      cov1=cov1, cov2=cov2, x1_is_x2=x1_is_x2,
      is_gaussian=False, is_reversed=False, is_input=True,
      diagonal_batch=diagonal_batch, diagonal_spatial=diagonal_spatial,
      shape1=tuple(x1.shape), shape2=tuple((x1 if x2 is None else x2).shape),
      batch_axis=batch_axis, channel_axis=channel_axis,
      mask1=mask1, mask2=mask2, row_offset=row_offset)
  return k if mask1 is None else masking.mask_kernel(k)
