"""Layers that pass or select activations without weights: `Identity`,
`Index` (with the `Slice` helper)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ..kernel import Kernel
from . import masking, validation
from .layer import Requirements, layer


@layer
def Identity():
  """``f(x) = x``; the kernel is unchanged."""
  init_fn = lambda rng, input_shape: (input_shape, ())
  apply_fn = lambda params, inputs, **kwargs: inputs
  rule = lambda k, **kwargs: k
  return init_fn, apply_fn, rule, Requirements()


class _Slice:
  """``Slice[1, :, 2:8:3] == (1, slice(None), slice(2, 8, 3))``: build the
  ``idx`` argument of `Index` with array-indexing syntax."""

  def __getitem__(self, idx):
    return idx


Slice = _Slice()


class IndexNotSupportedError(ValueError, NotImplementedError):
  """An index the infinite-width kernel has no meaning for (the channel axis,
  or an integer removing the batch axis): a ``ValueError``, and a
  ``NotImplementedError`` as neural-tangents raised."""


def _full_index(idx, ndim: int) -> list:
  idx = idx if isinstance(idx, tuple) else (idx,)
  if any(i is None for i in idx):
    raise ValueError("Index: new axes (None) are not supported.")
  n_ell = sum(i is Ellipsis for i in idx)
  if n_ell > 1:
    raise ValueError("Index: at most one Ellipsis.")
  if n_ell:
    e = idx.index(Ellipsis)
    fill = (slice(None),) * (ndim - len(idx) + 1)
    idx = idx[:e] + fill + idx[e + 1:]
  idx = tuple(idx) + (slice(None),) * (ndim - len(idx))
  if len(idx) != ndim:
    raise ValueError(f"Index: too many indices for a {ndim}-D input.")
  return list(idx)


@layer
def Index(idx, batch_axis: int = 0, channel_axis: int = -1):
  """``x[idx]``; build ``idx`` with `Slice` (``stax.Slice[:, ::2, 0]``).

  The channel axis must be kept whole; integers on spatial axes remove them.
  Kernel: the same slices of the covariances (both positions of each
  zipped pair; both batch axes for the batch axis).
  """

  def init_fn(rng, input_shape):
    validation.index_in_range("Index", idx, input_shape)
    return jax.eval_shape(lambda x: x[idx], jax.ShapeDtypeStruct(
        tuple(input_shape), jnp.float32)).shape, ()

  def apply_fn(params, inputs, **kwargs):
    validation.index_in_range("Index", idx, inputs.shape)
    return inputs[idx]

  def rule(k: Kernel, **kwargs) -> Kernel:
    ndim = len(k.shape1)
    validation.index_in_range("Index", idx, k.shape1)
    full = _full_index(idx, ndim)
    ca, ba = k.channel_axis % ndim, k.batch_axis % ndim
    if full[ca] != slice(None):
      raise IndexNotSupportedError(f"Index: the channel axis {ca} of inputs "
                       f"{tuple(k.shape1)} must be kept whole (':'): it has "
                       f"infinitely many channels in the limit; got "
                       f"{full[ca]!r}.")
    b_idx = full[ba]
    if isinstance(b_idx, int):
      raise IndexNotSupportedError(
          f"Index: an integer on the batch axis {ba} would "
                       f"remove it; use a slice such as {b_idx}:{b_idx + 1}.")
    if b_idx != slice(None) and k.packed:
      raise ValueError("Index: cannot slice the batch of a packed kernel.")
    sp = [full[i] for i in range(ndim) if i not in (ca, ba)]

    def take(mat, batch_ndim, batch_sliced):
      if mat is None or jnp.ndim(mat) == 0:
        return mat
      per_axis = 1 if k.diagonal_spatial else 2
      lead = [b_idx if batch_sliced else slice(None)] * batch_ndim
      return mat[tuple(lead) + tuple(s for s in sp for _ in range(per_axis))]

    nb = k.batch_ndim
    cb = k.cov_batch_ndim
    removed = [i for i in range(ndim) if isinstance(full[i], int)]
    shift = lambda a: a - sum(r < a for r in removed)
    return k.replace(
        nngp=take(k.nngp, nb, True), ntk=take(k.ntk, nb, True),
        cov1=take(k.cov1, cb, True), cov2=take(k.cov2, cb, True),
        batch_axis=shift(ba), channel_axis=shift(ca))

  # Packing (x2=None at half cost) needs the batch kept whole.
  t = idx if isinstance(idx, tuple) else (idx,)
  if batch_axis >= 0 and Ellipsis not in t[:batch_axis + 1]:
    packable = len(t) <= batch_axis or t[batch_axis] == slice(None)
  else:
    packable = False

  def mask_fn(mask, input_shape):
    return mask[idx]

  return init_fn, apply_fn, rule, Requirements(
      packable=packable, batch_axis=batch_axis,
      channel_axis=channel_axis), masking.MaskRule(mask_fn=mask_fn,
                                                   remask=False)
