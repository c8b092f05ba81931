"""Masking for variable-length inputs (padded sentences, ragged graphs).

``apply_fn(params, x, mask_constant=c)`` treats entries of ``x`` equal to
``c`` (``nan`` allowed) as missing: every layer zeroes masked inputs, pushes
the mask forward (its `MaskRule`) and returns a `MaskedArray`.
``kernel_fn(x1, x2, mask_constant=c)`` does the same with covariances: the
`Kernel` carries ``mask1``/``mask2`` (True = masked, in the layout of the
finite outputs) and layers that mix positions (pooling, attention) leave masked
positions out. `unmask_fn` turns a `MaskedArray`-returning ``apply_fn`` into an
array-returning one (masked entries zeroed), e.g. for Monte Carlo.

Masks must not vary over channels once they reach a layer that mixes
positions; a layer's ``mask_fn`` collapses the channel axis where the layer
mixes channels (Dense, Conv).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ..kernel import Kernel, pytree_dataclass

__all__ = ["MaskedArray", "MaskRule", "unmask_fn", "masked_apply",
           "mask_kernel", "propagate", "mask_prods", "pair_weights",
           "collapse_channels", "spatial_mask"]


@pytree_dataclass
class MaskedArray:
  """An array (or pytree) and its boolean mask (True = masked entry).

  Attributes:
    masked_value: the values (masked entries are not necessarily zero).
    mask: boolean, broadcastable to ``masked_value``; or ``None``.
  """
  masked_value: Any
  mask: Any


@dataclasses.dataclass(frozen=True)
class MaskRule:
  """How a layer moves masks: ``mask_fn(mask, input_shape) -> mask`` (None:
  keep the mask, collapsing channels if the channel count changes) and
  whether covariances touching masked outputs are zeroed afterwards."""
  mask_fn: Optional[Callable] = None
  remask: bool = True


def _zero(x, mask):
  if x is None or mask is None:
    return x
  return jnp.where(mask, jnp.zeros((), x.dtype), x)


def unmask_fn(fn: Callable) -> Callable:
  """Wraps an ``apply_fn`` so that `MaskedArray` outputs become arrays with
  the masked entries set to zero."""

  def unmask(x):
    return _zero(x.masked_value, x.mask) if isinstance(x, MaskedArray) else x

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    out = fn(*args, **kwargs)
    return jax.tree_util.tree_map(
        unmask, out, is_leaf=lambda x: isinstance(x, MaskedArray))

  return wrapped


def _as_masked(x, mask_constant) -> MaskedArray:
  if isinstance(x, MaskedArray):
    return MaskedArray(_zero(x.masked_value, x.mask), x.mask)
  if mask_constant is None:
    return MaskedArray(x, None)
  mask = jnp.isnan(x) if np.isnan(mask_constant) else x == mask_constant
  return MaskedArray(_zero(x, mask), mask)


def collapse_channels(mask, channel_axis: int):
  """A mask that does not vary over channels: masked iff all channels are."""
  if mask is None:
    return None
  return jnp.all(mask, axis=channel_axis, keepdims=True)


def _default_mask_fn(mask, out_shape, channel_axis: int = -1):
  """Keeps ``mask`` if it fits the output; else collapses the channels."""
  if mask is None:
    return None
  try:
    jnp.broadcast_shapes(mask.shape, tuple(out_shape))
    return mask
  except ValueError:
    pass
  m = collapse_channels(mask, channel_axis)
  try:
    jnp.broadcast_shapes(m.shape, tuple(out_shape))
    return m
  except ValueError:
    return None


def _is_masked(x) -> bool:
  return isinstance(x, MaskedArray)


def masked_apply(apply_fn: Callable, rule: Optional[MaskRule]) -> Callable:
  """``apply_fn`` accepting ``mask_constant=`` and `MaskedArray` inputs.

  Without either it runs ``apply_fn`` unchanged. Otherwise masked inputs are
  zeroed, ``apply_fn(params, values, mask=mask, **kwargs)`` runs, and the
  output is a `MaskedArray` with the mask moved by the layer's rule.
  """

  @functools.wraps(apply_fn)
  def wrapped(params, inputs, *, mask_constant=None, **kwargs):
    is_list = isinstance(inputs, (list, tuple))
    items = list(inputs) if is_list else [inputs]
    if mask_constant is None and not any(map(_is_masked, items)):
      return apply_fn(params, inputs, **kwargs)
    items = [_as_masked(x, mask_constant) for x in items]
    values = [m.masked_value for m in items]
    masks = [m.mask for m in items]
    if is_list:
      values, masks = type(inputs)(values), type(inputs)(masks)
      shapes = [v.shape for v in values]
    else:
      values, masks, shapes = values[0], masks[0], values[0].shape
    out = apply_fn(params, values, mask=masks, **kwargs)
    if rule is not None and rule.mask_fn is not None:
      has_mask = any(m is not None for m in (masks if is_list else [masks]))
      out_mask = rule.mask_fn(masks, shapes) if has_mask else None
    elif is_list:
      out_mask = None
    elif isinstance(out, (list, tuple)):  # one input, several outputs (FanOut)
      out_mask = [_default_mask_fn(masks, o.shape) for o in out]
    else:
      out_mask = _default_mask_fn(masks, out.shape)
    if isinstance(out, (list, tuple)):
      if not isinstance(out_mask, (list, tuple)):
        out_mask = [out_mask] * len(out)
      return [MaskedArray(o, m) for o, m in zip(out, out_mask)]
    return MaskedArray(out, out_mask)

  return wrapped


def window_centres(mask, axes, windows):
  """The mask at the centre of each window of a conv/pool along ``axes``."""
  for a, w in zip(axes, windows):
    start = (w.size - 1) // 2 - w.pad[0]
    idx = np.arange(w.raw_out) * w.stride + start
    if w.circular:
      idx = idx % w.n
    mask = jnp.take(mask, jnp.asarray(np.clip(idx, 0, w.n - 1)), axis=a)
  return mask


def check_position_mask(name: str, mask, channel_axis: int) -> None:
  """Pooling-type layers need masks that do not vary over channels."""
  if mask is not None and mask.shape[channel_axis] != 1:
    raise ValueError(
        f"{name}: the mask varies over channels (mask shape "
        f"{tuple(mask.shape)}, channel axis {channel_axis}); a layer that "
        f"mixes positions needs whole positions masked (mask shape with size "
        f"1 on the channel axis). Put a Dense/Conv layer first, or mask all "
        f"channels of a position.")


# --- kernels ------------------------------------------------------------------

def spatial_mask(mask, k: Kernel, strict: bool = True):
  """Finite-layout mask -> ``(N, X, Y, ...)`` (batch first, channel
  dropped); the channel axis must have size 1 (else an error, or ``None`` if
  not ``strict``)."""
  if mask is None:
    return None
  ndim = len(k.shape1)
  if mask.ndim != ndim:
    return None
  b, c = k.batch_axis % ndim, k.channel_axis % ndim
  if mask.shape[c] != 1:
    if not strict:
      return None
    raise ValueError(
        f"masks that differ between channels are not supported by "
        f"infinite-width layers that mix positions (got mask shape "
        f"{tuple(mask.shape)}, channel axis {c}); mask whole positions.")
  m = jnp.moveaxis(mask, (b, c), (0, -1))[..., 0]
  n = k.shape1[b] if m.shape[0] == 1 else m.shape[0]
  return m if m.shape[0] == n else jnp.broadcast_to(m, (n,) + m.shape[1:])


def _outer(m1, m2, both_batch: bool, diagonal_spatial: bool):
  """``m1[i] | m2[j]`` zipped over spatial axes, as covariances are laid
  out."""
  if diagonal_spatial:
    a, b = m1, m2
  else:
    a = m1.reshape(m1.shape[:1] + sum(((s, 1) for s in m1.shape[1:]), ()))
    b = m2.reshape(m2.shape[:1] + sum(((1, s) for s in m2.shape[1:]), ()))
  if both_batch:
    return a[:, None] | b[None, :]
  return a | b


def mask_prods(k: Kernel, strict: bool = True):
  """``(m11, m12, m22)``: boolean masks broadcastable to ``cov1``, ``nngp``
  and ``cov2``; True where either position is masked."""
  if k.packed:
    raise ValueError("masking: packed kernels cannot be masked.")
  m1 = spatial_mask(k.mask1, k, strict)
  m2 = spatial_mask(k.mask2, k, strict) if k.mask2 is not None else m1
  if m1 is None and m2 is None:
    return None, None, None
  if m1 is None:
    m1 = jnp.zeros_like(m2[:1])
  if m2 is None:
    m2 = jnp.zeros_like(m1[:1])
  both = not k.diagonal_batch
  m11 = _outer(m1, m1, both, k.diagonal_spatial)
  m22 = _outer(m2, m2, both, k.diagonal_spatial)
  m12 = _outer(m1, m2, True, k.diagonal_spatial)
  return m11, m12, m22


def pair_weights(k: Kernel):
  """``1 - mask_prods`` as floats (1 for pairs of unmasked positions)."""
  m11, m12, m22 = mask_prods(k)
  f = lambda m: None if m is None else (~m).astype(k.nngp.dtype)
  return f(m11), f(m12), f(m22)


def remask(k: Kernel) -> Kernel:
  """Zeroes covariances that involve a masked position."""
  if k.mask1 is None and k.mask2 is None:
    return k
  m11, m12, m22 = mask_prods(k, strict=False)
  if m12 is None:
    return k  # channel-varying mask: nothing position-wise to zero
  ntk = k.ntk
  if ntk is not None and jnp.ndim(ntk):
    ntk = _zero(ntk, m12)
  return k.replace(nngp=_zero(k.nngp, m12), ntk=ntk, cov1=_zero(k.cov1, m11),
                   cov2=_zero(k.cov2, m22))


def mask_kernel(k: Kernel) -> Kernel:
  """The input kernel of masked inputs (inputs are already zeroed)."""
  return k


def propagate(k_in, k_out, rule: Optional[MaskRule]):
  """Moves the masks of ``k_in`` through a layer whose rule produced
  ``k_out`` and zeroes covariances of masked outputs (if ``rule.remask``)."""
  is_leaf = lambda x: isinstance(x, Kernel)
  ins = jax.tree_util.tree_leaves(k_in, is_leaf=is_leaf)
  if all(k.mask1 is None and k.mask2 is None for k in ins):
    return k_out
  if isinstance(k_in, Kernel):
    m1, m2, s1, s2 = k_in.mask1, k_in.mask2, k_in.shape1, k_in.shape2
  else:
    m1 = [k.mask1 for k in k_in]
    m2 = [k.mask2 for k in k_in]
    s1 = [k.shape1 for k in k_in]
    s2 = [k.shape2 for k in k_in]
  outs = k_out if isinstance(k_out, (list, tuple)) else [k_out]
  if rule is not None and rule.mask_fn is not None:
    n1 = None if _all_none(m1) else rule.mask_fn(m1, s1)
    n2 = None if _all_none(m2) else rule.mask_fn(m2, s2)
  else:
    ref = ins[0]
    n1 = _default_mask_fn(ref.mask1, outs[0].shape1, ref.channel_axis)
    n2 = _default_mask_fn(ref.mask2, outs[0].shape2, ref.channel_axis)
  if not isinstance(n1, (list, tuple)):
    n1 = [n1] * len(outs)
  if not isinstance(n2, (list, tuple)):
    n2 = [n2] * len(outs)
  new = []
  for k, a, b in zip(outs, n1, n2):
    k = k.replace(mask1=a, mask2=b)
    if rule is None or rule.remask:
      k = remask(k)
    new.append(k)
  return new if isinstance(k_out, (list, tuple)) else new[0]


def _all_none(m) -> bool:
  if isinstance(m, (list, tuple)):
    return all(x is None for x in m)
  return m is None
