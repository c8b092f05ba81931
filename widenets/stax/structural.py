"""Layers that move or rescale activations without weights: `Identity`,
`Dropout`, `LayerNorm`, `Index` (with the `Slice` helper)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ..kernel import Kernel
from . import covariance
from .layer import Requirements, layer


@layer
def Identity():
  """``f(x) = x``; the kernel is unchanged."""
  init_fn = lambda rng, input_shape: (input_shape, ())
  apply_fn = lambda params, inputs, **kwargs: inputs
  rule = lambda k, **kwargs: k
  return init_fn, apply_fn, rule, Requirements()


def _spatial_diagonal_mask(k: Kernel, mat, batch_ndim: int):
  """True on entries with ``x == x'`` in every zipped spatial pair."""
  if k.diagonal_spatial or mat.ndim == batch_ndim:
    return jnp.ones((), bool)
  sizes = mat.shape[batch_ndim::2]
  mask = jnp.ones((1,) * batch_ndim, bool)
  for s in sizes:
    mask = mask[..., None, None] & jnp.eye(s, dtype=bool)
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


# --- LayerNorm -----------------------------------------------------------------

def _axes_tuple(axis, ndim: int) -> tuple:
  axis = (axis,) if isinstance(axis, int) else tuple(axis)
  return tuple(sorted({a % ndim for a in axis}))


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
    axes = _axes_tuple(axis, inputs.ndim)
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
    axes = _axes_tuple(axis, ndim)
    ca, ba = k.channel_axis % ndim, k.batch_axis % ndim
    if ca not in axes:
      raise ValueError(f"LayerNorm: axis={axis} must include the channel axis "
                       f"{ca} (input shape {tuple(k.shape1)}) for the kernel "
                       f"to converge.")
    spatial = [i for i in range(ndim) if i not in (ca, ba)]
    sp_axes = tuple(1 + spatial.index(a) for a in axes if a in spatial)
    over_batch = ba in axes
    if not sp_axes and not over_batch:
      def pair_rule(cov, var1, var2, ntk):
        norm = jnp.sqrt((eps + var1) * (eps + var2))
        return cov / norm, None if ntk is None else ntk / norm
      return covariance.map_pairwise(k, pair_rule)

    from . import masking
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
      return covariance._expand(d, d.ndim - 1, position, k.diagonal_spatial)

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

  ax = _axes_tuple(axis, 64)
  mixes = any(a % 64 != channel_axis % 64 for a in ax)
  return init_fn, apply_fn, rule, Requirements(
      diagonal_spatial_ok=not mixes, packable=not mixes,
      blocker="LayerNorm" if mixes else None, batch_axis=batch_axis,
      channel_axis=channel_axis), _mask_rule(remask=False)


def _mask_rule(**kw):
  from .masking import MaskRule
  return MaskRule(**kw)


# --- Index / Slice -------------------------------------------------------------

class _Slice:
  """``Slice[1, :, 2:8:3] == (1, slice(None), slice(2, 8, 3))``: build the
  ``idx`` argument of `Index` with array-indexing syntax."""

  def __getitem__(self, idx):
    return idx


Slice = _Slice()


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
    return jax.eval_shape(lambda x: x[idx], jax.ShapeDtypeStruct(
        tuple(input_shape), jnp.float32)).shape, ()

  def apply_fn(params, inputs, **kwargs):
    return inputs[idx]

  def rule(k: Kernel, **kwargs) -> Kernel:
    ndim = len(k.shape1)
    full = _full_index(idx, ndim)
    ca, ba = k.channel_axis % ndim, k.batch_axis % ndim
    if full[ca] != slice(None):
      raise ValueError(f"Index: the channel axis {ca} of inputs "
                       f"{tuple(k.shape1)} must be kept whole (':'); got "
                       f"{full[ca]!r}.")
    b_idx = full[ba]
    if isinstance(b_idx, int):
      raise ValueError(f"Index: an integer on the batch axis {ba} would "
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
      channel_axis=channel_axis), _mask_rule(mask_fn=mask_fn, remask=False)


# --- ImageResize ---------------------------------------------------------------

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
    sp = [i for i in range(ndim) if i not in (b, c)]

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
      batch_axis=batch_axis, channel_axis=channel_axis), _mask_rule(
          mask_fn=mask_fn)
