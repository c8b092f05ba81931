"""The conv-covariance core: filters, pools, strides and transposes applied to
covariances over spatial positions.

Every spatial layer (Conv, ConvTranspose, ConvLocal, AvgPool, SumPool, the
mask of a conv) describes what it does to one spatial axis with a `Window`,
and this module turns it into an operation on covariances. The covariance
``K[.., x, x', y, y', ...]`` (zipped pairs; or ``K[.., x, y, ...]`` when only
the spatial diagonal is kept) of a layer's inputs maps to

* a shared-weight convolution (filter ``f``, stride ``s``, padded input ``P``):
  ``K'[o, o'] = mean_{d < f} P[o s + d, o' s + d]`` per spatial axis — the two
  positions move *together* (a diagonal stencil), so a spatially diagonal
  input gives a spatially diagonal output;
* a pool: ``K'[o, o'] = sum_{d, d' < f} P[o s + d, o' s + d']`` — the axes
  ``x`` and ``x'`` are pooled independently;
* a transposed convolution: the same stencil on the input dilated by ``s``
  (``s - 1`` zeros between entries), as `jax.lax.conv_transpose` does;
* a locally connected layer: the diagonal of the convolution, zero elsewhere.

Only the trailing spatial axes are touched, so the same code runs on full
``(N1, N2)``, sample-diagonal ``(N1,)`` and packed ``(N(N+1)/2,)`` batch
layouts.

The diagonal stencil over a zipped pair ``(x, x')`` is a `lax.reduce_window`
on the flattened pair with window dilation ``X + 1`` (the step ``(1, 1)``),
one axis pair at a time: a convolution with a 0/1 filter over the
``(X, X')`` plane wastes most taps, and a plain sum of shifted slices lets
XLA re-fuse each layer's elementwise work into the next layer's fusions,
keeping every layer's buffers alive; the reduce-window boundary materializes
each layer once.
"""
from __future__ import annotations

import dataclasses
import enum
from typing import Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["Padding", "Window", "conv_windows", "transpose_windows",
           "pool_windows", "conv", "pool", "pool_counts", "local",
           "take_spatial_diagonal", "embed_spatial_diagonal", "pad_axes",
           "fold_axes", "check_windows", "as_padding"]


class Padding(enum.Enum):
  """Padding of convolutional and pooling layers.

  Attributes:
    CIRCULAR: periodic boundary conditions (the input is a torus).
    SAME: zero padding; output size ``ceil(input / stride)``.
    VALID: no padding.
  """
  CIRCULAR = "CIRCULAR"
  SAME = "SAME"
  VALID = "VALID"


@dataclasses.dataclass(frozen=True)
class Window:
  """What a layer does along one spatial axis.

  The input of length ``n`` is dilated (``dilation - 1`` zeros between
  entries), padded by ``pad`` (zeros; by wrapping around if ``circular``), and
  output position ``o`` reads positions ``o * stride + d``, ``d < size``. If
  ``fold`` is set the output is wrapped around onto ``fold`` positions (summing
  entries ``fold`` apart, starting at ``fold_offset``): the transpose of
  circular padding.
  """
  n: int
  size: int
  stride: int = 1
  pad: tuple = (0, 0)
  dilation: int = 1
  circular: bool = False
  fold: int = 0
  fold_offset: int = 0

  @property
  def padded(self) -> int:
    return (self.n - 1) * self.dilation + 1 + self.pad[0] + self.pad[1]

  @property
  def raw_out(self) -> int:
    return (self.padded - self.size) // self.stride + 1

  @property
  def out(self) -> int:
    return self.fold or self.raw_out


def as_padding(padding) -> Padding:
  if isinstance(padding, Padding):
    return padding
  try:
    return Padding(str(padding).upper())
  except ValueError:
    raise ValueError(f"padding must be 'VALID', 'SAME' or 'CIRCULAR'; got "
                     f"{padding!r}.") from None


def conv_windows(in_shape: Sequence[int], filter_shape: Sequence[int],
                 strides: Sequence[int], padding) -> tuple:
  """Windows of a (shared or local) convolution or a pool over ``in_shape``."""
  padding = as_padding(padding)
  mode = "VALID" if padding == Padding.VALID else "SAME"
  pads = lax.padtype_to_pads(tuple(in_shape), tuple(filter_shape),
                             tuple(strides), mode)
  return tuple(
      Window(n=n, size=f, stride=s, pad=tuple(p),
             circular=padding == Padding.CIRCULAR)
      for n, f, s, p in zip(in_shape, filter_shape, strides, pads))


pool_windows = conv_windows


def _transpose_pads(f: int, s: int, padding: str) -> tuple:
  # The zero padding `lax.conv_transpose` puts around the dilated input.
  if padding == "SAME":
    total = f + s - 2
    lo = f - 1 if s > f - 1 else int(np.ceil(total / 2))
  else:
    total = f + s - 2 + max(f - s, 0)
    lo = f - 1
  return lo, total - lo


def transpose_windows(in_shape: Sequence[int], filter_shape: Sequence[int],
                      strides: Sequence[int], padding) -> tuple:
  """Windows of a transposed convolution (`lax.conv_transpose` semantics;
  CIRCULAR: the VALID result wrapped onto the SAME output size)."""
  padding = as_padding(padding)
  out = []
  for n, f, s in zip(in_shape, filter_shape, strides):
    if padding == Padding.CIRCULAR:
      lo, hi = _transpose_pads(f, s, "VALID")
      raw = (n - 1) * s + 1 + lo + hi - f + 1
      fold = n * s
      out.append(Window(n=n, size=f, stride=1, pad=(lo, hi), dilation=s,
                        fold=fold, fold_offset=(raw - fold) // 2))
    else:
      out.append(Window(n=n, size=f, stride=1, dilation=s,
                        pad=_transpose_pads(f, s, padding.name)))
  return tuple(out)


def check_windows(name: str, windows: Sequence[Window], in_shape,
                  filter_shape) -> None:
  """A clear error when a window does not fit (e.g. VALID and a filter
  larger than the input)."""
  for w in windows:
    if w.raw_out < 1:
      raise ValueError(
          f"{name}: window/filter shape {tuple(filter_shape)} does not fit "
          f"the spatial input shape {tuple(in_shape)} with this padding "
          f"(an axis of size {w.n} padded to {w.padded} < window {w.size}). "
          f"Use padding='SAME' or a smaller filter.")


# --- per-axis primitives ----------------------------------------------------

def pad_axes(x, axes: Sequence[int], w: Window):
  """Dilates and pads ``x`` along ``axes`` as ``w`` says."""
  if w.circular:
    widths = [(0, 0)] * x.ndim
    for a in axes:
      widths[a] = tuple(w.pad)
    return jnp.pad(x, widths, mode="wrap")
  if w.pad == (0, 0) and w.dilation == 1:
    return x
  config = [(0, 0, 0)] * x.ndim
  for a in axes:
    config[a] = (w.pad[0], w.pad[1], w.dilation - 1)
  return lax.pad(x, jnp.zeros((), x.dtype), config)


def _slice(x, axes: Sequence[int], start: int, w: Window):
  for a in axes:
    x = lax.slice_in_dim(x, start, start + (w.raw_out - 1) * w.stride + 1,
                         w.stride, a)
  return x


def fold_axes(x, axes: Sequence[int], w: Window):
  """Wraps ``x`` along ``axes`` onto ``w.fold`` positions: entry ``i`` adds
  to ``(i - fold_offset) mod fold``."""
  if not w.fold:
    return x
  m, c = w.fold, w.fold_offset
  for a in axes:
    length = x.shape[a]
    lo = (-c) % m
    hi = (-(lo + length)) % m
    widths = [(0, 0)] * x.ndim
    widths[a] = (lo, hi)
    x = jnp.pad(x, widths)
    shape = x.shape[:a] + ((lo + length + hi) // m, m) + x.shape[a + 1:]
    x = jnp.sum(x.reshape(shape), axis=a)
  return x


def _spatial_axes(mat, batch_ndim: int, diagonal_spatial: bool):
  """Per spatial dimension, the axes of ``mat`` holding it (1 or 2)."""
  n = mat.ndim - batch_ndim
  if diagonal_spatial:
    return [(batch_ndim + i,) for i in range(n)]
  return [(batch_ndim + 2 * i, batch_ndim + 2 * i + 1) for i in range(n // 2)]


def _is_array(mat) -> bool:
  return mat is not None and jnp.ndim(mat) > 0


# --- covariance operations --------------------------------------------------

def conv(mat, batch_ndim: int, windows: Sequence[Window],
         diagonal_spatial: bool):
  """Covariance after a shared-weight convolution, before the affine
  ``W_std**2 * . + b_std**2``: the mean over filter offsets ``d`` of the
  padded covariance at ``(o s + d, o' s + d)``. Works on zipped pairs or on
  the spatial diagonal alone (diagonal in, diagonal out)."""
  if not _is_array(mat):
    return mat
  axes = _spatial_axes(mat, batch_ndim, diagonal_spatial)
  for ax, w in zip(axes, windows):
    p = pad_axes(mat, ax, w)
    if len(ax) == 2 and w.stride == 1:
      out = _diagonal_window_sum(p, ax[0], w)
    else:
      terms = [_slice(p, ax, d, w) for d in range(w.size)]
      out = jnp.sum(jnp.stack(terms), axis=0)
    mat = fold_axes(out / w.size, ax, w)
  return mat


def _diagonal_window_sum(p, a: int, w: Window):
  """``sum_d p[o + d, o' + d]`` over the adjacent axes ``(a, a + 1)`` of the
  padded ``p``: flattening the pair turns the diagonal step ``(1, 1)`` into a
  step of ``m + 1`` (``m`` the padded size), i.e. a `lax.reduce_window` with
  window dilation ``m + 1``."""
  m = p.shape[a]
  flat = p.reshape(p.shape[:a] + (m * m,) + p.shape[a + 2:])
  dims = [1] * flat.ndim
  dil = [1] * flat.ndim
  dims[a], dil[a] = w.size, m + 1
  out = lax.reduce_window(flat, np.zeros((), p.dtype), lax.add, dims,
                          [1] * flat.ndim, "VALID", window_dilation=dil)
  # Flat position o * m + o' holds the sum for (o, o'); keep o, o' < out.
  length = out.shape[a]
  n_out = w.raw_out
  out = lax.pad(out, jnp.zeros((), out.dtype),
                [(0, 0, 0)] * a + [(0, n_out * m - length, 0)] +
                [(0, 0, 0)] * (out.ndim - a - 1))
  out = out.reshape(out.shape[:a] + (n_out, m) + out.shape[a + 1:])
  return lax.slice_in_dim(out, 0, n_out, 1, a + 1)


def pool(mat, batch_ndim: int, windows: Sequence[Window]):
  """Covariance after sum-pooling (full spatial layout only): each of ``x``
  and ``x'`` is summed over its own window."""
  if not _is_array(mat):
    return mat
  for ax, w in zip(_spatial_axes(mat, batch_ndim, False), windows):
    p = pad_axes(mat, ax, w)
    dims = [1] * p.ndim
    strides = [1] * p.ndim
    for a in ax:
      dims[a], strides[a] = w.size, w.stride
    mat = lax.reduce_window(p, np.zeros((), p.dtype), lax.add, dims, strides,
                            "VALID")
  return mat


def pool_counts(windows: Sequence[Window], dtype=jnp.float32):
  """Per output position, the number of non-padding inputs in its window
  (``(X_out, Y_out, ...)``)."""
  out = np.ones((), np.float64)
  for w in windows:
    ones = np.ones(w.n)
    padded = np.concatenate([np.zeros(w.pad[0]), ones, np.zeros(w.pad[1])])
    c = np.array([padded[o * w.stride:o * w.stride + w.size].sum()
                  for o in range(w.raw_out)])
    out = np.multiply.outer(out, c)
  return jnp.asarray(out, dtype)


def take_spatial_diagonal(mat, batch_ndim: int):
  """``K[.., x, x, y, y, ..] -> K[.., x, y, ..]`` (batch axes kept)."""
  if not _is_array(mat):
    return mat
  n = (mat.ndim - batch_ndim) // 2
  for _ in range(n):
    # Each diagonal lands at the back, so the order is restored at the end.
    mat = jnp.diagonal(mat, axis1=batch_ndim, axis2=batch_ndim + 1)
  return mat


def embed_spatial_diagonal(mat, batch_ndim: int):
  """``K[.., x, y, ..] -> K[.., x, x', y, y', ..]``, zero off the diagonal."""
  if not _is_array(mat):
    return mat
  n = mat.ndim - batch_ndim
  for i in range(n):
    a = batch_ndim + 2 * i
    size = mat.shape[a]
    eye = jnp.eye(size, dtype=mat.dtype).reshape(
        (1,) * a + (size, size) + (1,) * (mat.ndim - a - 1))
    mat = jnp.expand_dims(mat, a + 1) * eye
  return mat


def local(mat, batch_ndim: int, windows: Sequence[Window],
          diagonal_spatial: bool):
  """Spatial diagonal after a locally connected layer (unshared weights):
  that of a convolution; positions ``o != o'`` use independent weights and
  are uncorrelated. Returns the *diagonal* ``(.., X, Y, ..)`` layout."""
  if not _is_array(mat):
    return mat
  if not diagonal_spatial:
    mat = take_spatial_diagonal(mat, batch_ndim)
  return conv(mat, batch_ndim, windows, True)
