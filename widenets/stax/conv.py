"""Convolutions: `Conv`, `ConvTranspose`, `ConvLocal`.

Kernel: with the filter averaged over its ``F`` offsets (`stencil.conv`),
``nngp' = W_std**2 * mean_d nngp[o s + d, o' s + d] + b_std**2`` per spatial
axis, and the NTK as for `Dense` (`dense.affine_kernel`) with input width
``C_in * F`` under ``'standard'``. ``ConvLocal`` (unshared weights) keeps
only the spatial diagonal (other positions use independent weights).
"""
from __future__ import annotations

import string
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..kernel import Kernel
from . import draws, masking, stencil, validation
from .dense import affine_kernel, check_parameterization
from .layer import Requirements, layer
from .sharing import hyperparameters
from .stencil import Padding

__all__ = ["Conv", "ConvTranspose", "ConvLocal", "default_dimension_numbers"]

_SPATIAL_LETTERS = "".join(c for c in string.ascii_uppercase
                           if c not in "NCIO")


def default_dimension_numbers(n: int, channels_first: bool = False) -> tuple:
  """``('NAB..C', 'AB..IO', 'NAB..C')`` (or ``'NCAB..'`` channels first)."""
  sp = _SPATIAL_LETTERS[:n]
  lhs = "NC" + sp if channels_first else "N" + sp + "C"
  return lhs, sp + "IO", lhs


def _map_fields(k: Kernel, fn) -> Kernel:
  """``fn(mat, batch_ndim)`` on nngp/ntk (pair batch axes) and cov1/cov2."""
  return k.replace(
      nngp=fn(k.nngp, k.batch_ndim),
      ntk=None if k.ntk is None else fn(k.ntk, k.batch_ndim),
      cov1=fn(k.cov1, k.cov_batch_ndim),
      cov2=None if k.cov2 is None else fn(k.cov2, k.cov_batch_ndim))


def _spatial_sizes(k: Kernel) -> tuple:
  shape = k.nngp.shape[k.batch_ndim:]
  return tuple(shape if k.diagonal_spatial else shape[::2])


def _conv_layer(name: str, out_chan: int, filter_shape: Sequence[int],
                strides: Optional[Sequence[int]], padding, W_std: float,
                b_std: Optional[float], dimension_numbers, parameterization,
                s, transpose: bool, shared: bool):
  """The ``(init_fn, apply_fn, rule, reqs)`` of the three convolutions."""
  validation.known_parameterization(name, parameterization)
  validation.known_padding(name, padding)
  parameterization = check_parameterization(parameterization, s)
  validation.positive_int(name, "out_chan", out_chan)
  filter_shape = validation.positive_ints(name, "filter_shape", filter_shape)
  strides = validation.positive_ints(name, "strides", strides or None)
  validation.finite_float(name, "W_std", W_std)
  validation.finite_float(name, "b_std", b_std, allow_none=True)
  validation.positive_floats(name, "s", s)
  n_sp = len(filter_shape)
  strides = tuple(strides) if strides else (1,) * n_sp
  padding = stencil.as_padding(padding)
  if dimension_numbers is None:
    dimension_numbers = default_dimension_numbers(n_sp)
  lhs_spec, rhs_spec, out_spec = dimension_numbers
  if len(strides) != n_sp or len(rhs_spec) != n_sp + 2:
    raise ValueError(f"{name}: filter_shape {filter_shape}, strides "
                     f"{strides} and dimension_numbers {dimension_numbers} "
                     f"disagree on the number of spatial dimensions.")
  init_padding = "SAME" if padding == Padding.CIRCULAR else padding.name
  apply_padding = "VALID" if padding == Padding.CIRCULAR else padding.name
  rhs_sp = [c for c in rhs_spec if c not in "IO"]
  lhs_sp = [c for c in lhs_spec if c not in "NC"]
  out_sp = [c for c in out_spec if c not in "NC"]
  # Filter and strides in the order of the input's spatial axes.
  filt_in = tuple(filter_shape[rhs_sp.index(c)] for c in lhs_sp)
  strides_in = tuple(strides[rhs_sp.index(c)] for c in lhs_sp)
  make_windows = (stencil.transpose_windows if transpose
                  else stencil.conv_windows)
  width = out_chan * s[1] if (parameterization == "standard" and shared
                              ) else out_chan

  def windows_for(in_spatial):
    w = make_windows(in_spatial, filt_in, strides_in, padding)
    stencil.check_windows(name, w, in_spatial, filt_in)
    return w

  def fan_in(input_shape):
    return input_shape[lhs_spec.index("C")] * int(np.prod(filter_shape))

  def lax_conv(x, W, pad):
    # As Dense's matmul does: float32 inputs with the float64 weights that
    # `init_fn` draws under x64 (lax's convolutions need equal dtypes).
    dtype = jnp.promote_types(x.dtype, W.dtype)
    x, W = x.astype(dtype), W.astype(dtype)
    if transpose:
      return lax.conv_transpose(x, W, strides, pad,
                                dimension_numbers=dimension_numbers)
    if shared:
      return lax.conv_general_dilated(x, W, strides, pad,
                                      dimension_numbers=dimension_numbers)
    return lax.conv_general_dilated_local(
        x, W, strides, pad, filter_shape, dimension_numbers=dimension_numbers)

  def conv_kernel_shape(input_shape, chan):
    it = iter(filter_shape)
    return tuple(chan if c == "O" else input_shape[lhs_spec.index("C")]
                 if c == "I" else next(it) for c in rhs_spec)

  def output_shape(input_shape):
    input_shape = tuple(input_shape)
    if len(input_shape) != len(lhs_spec):
      raise ValueError(f"{name}: expected a {len(lhs_spec)}-D input "
                       f"({lhs_spec}); got input_shape {input_shape}.")
    windows_for(tuple(input_shape[lhs_spec.index(c)] for c in lhs_sp))
    rhs_shape = conv_kernel_shape(input_shape, width)
    if transpose:
      out = jax.eval_shape(
          lambda x, w: lax.conv_transpose(
              x, w, strides, init_padding,
              dimension_numbers=dimension_numbers),
          jax.ShapeDtypeStruct(input_shape, jnp.float32),
          jax.ShapeDtypeStruct(rhs_shape, jnp.float32)).shape
    else:
      out = jax.eval_shape(
          lambda x, w: lax.conv_general_dilated(
              x, w, strides, init_padding,
              dimension_numbers=dimension_numbers),
          jax.ShapeDtypeStruct(input_shape, jnp.float32),
          jax.ShapeDtypeStruct(rhs_shape, jnp.float32)).shape
    return tuple(int(d) for d in out)

  def init_fn(rng, input_shape):
    input_shape = tuple(input_shape)
    out = output_shape(input_shape)
    rhs_shape = conv_kernel_shape(input_shape, width)
    k1, k2 = jax.random.split(rng)
    if shared:
      W = draws.normal(k1, rhs_shape)
      b = draws.normal(k2, tuple(width if c == "C" else 1
                                 for c in out_spec))
    else:
      W = draws.normal(k1, tuple(
          out_chan if c == "O" else int(np.prod(rhs_shape)) // out_chan
          if c == "I" else out[out_spec.index(c)] for c in rhs_spec))
      b = draws.normal(k2, tuple(1 if c == "N" else out[i]
                                 for i, c in enumerate(out_spec)))
    if b_std is None:
      b = None
    if parameterization == "standard":
      W = W * (W_std / (fan_in(input_shape) / s[0])**0.5)
      b = None if b is None else b * b_std
    return out, (W, b)

  init_fn.output_shape = output_shape  # see `kernel_fn.output_shape`

  def apply_fn(params, inputs, **kwargs):
    W, b = params
    if parameterization == "ntk":
      norm, b_scale = W_std / fan_in(inputs.shape)**0.5, b_std
    else:
      norm, b_scale = 1.0 / s[0]**0.5, 1.0
    in_spatial = tuple(inputs.shape[lhs_spec.index(c)] for c in lhs_sp)
    windows = windows_for(in_spatial)
    x = inputs
    if padding == Padding.CIRCULAR and not transpose:
      for c, w in zip(lhs_sp, windows):
        x = stencil.pad_axes(x, (lhs_spec.index(c),), w)
    out = norm * lax_conv(x, W, apply_padding)
    if padding == Padding.CIRCULAR and transpose:
      for c, w in zip(lhs_sp, windows):
        out = stencil.fold_axes(out, (out_spec.index(c),), w)
    if b is not None:
      out = out + b_scale * b
    return out

  def rule(k: Kernel, **kwargs) -> Kernel:
    windows = windows_for(_spatial_sizes(k))
    input_width = fan_in(k.shape1) / s[0]
    if shared:
      k = _map_fields(k, lambda m, nb: stencil.conv(m, nb, windows,
                                                    k.diagonal_spatial))
      k = affine_kernel(k, W_std, b_std, parameterization, input_width)
    else:
      full = not k.diagonal_spatial
      k = _map_fields(k, lambda m, nb: stencil.local(m, nb, windows,
                                                     k.diagonal_spatial))
      # Biases and weights differ per position: only same-position entries
      # are correlated, so the affine update runs on the diagonal alone.
      k = affine_kernel(k.replace(diagonal_spatial=True), W_std, b_std,
                        parameterization, input_width)
      if full:
        k = _map_fields(k, stencil.embed_spatial_diagonal).replace(
            diagonal_spatial=False)
    k = k.replace(batch_axis=out_spec.index("N"),
                  channel_axis=out_spec.index("C"))
    perm = tuple(lhs_sp.index(c) for c in out_sp)
    if perm != tuple(range(n_sp)):
      k = k.transpose(perm)
    return k

  def mask_fn(mask, input_shape):
    # An output position is masked iff the input at its window's centre is
    # (a transposed convolution: iff any input reaching it is).
    mask = masking.collapse_channels(mask, lhs_spec.index("C"))
    if transpose:
      rhs_shape = [1 if c in "IO" else f for c, f in zip(
          rhs_spec, _insert_io(filter_shape, rhs_spec))]
      out = lax.conv_transpose(mask.astype(jnp.float32),
                               jnp.ones(rhs_shape, jnp.float32), strides,
                               init_padding,
                               dimension_numbers=dimension_numbers)
      return out > 0
    in_spatial = tuple(input_shape[lhs_spec.index(c)] for c in lhs_sp)
    mask = masking.window_centres(
        mask, [lhs_spec.index(c) for c in lhs_sp], windows_for(in_spatial))
    return jnp.transpose(mask, [lhs_spec.index(c) for c in out_spec])

  reqs = Requirements(batch_axis=lhs_spec.index("N"),
                      channel_axis=lhs_spec.index("C"))
  return init_fn, apply_fn, rule, reqs, masking.MaskRule(mask_fn)


def _insert_io(filter_shape, rhs_spec):
  """``filter_shape`` with placeholders at the ``I``/``O`` letters."""
  it = iter(filter_shape)
  return [1 if c in "IO" else next(it) for c in rhs_spec]


_CONV_DOC = """

  Args:
    out_chan: output channels (ignored by ``kernel_fn`` under ``'ntk'``).
    filter_shape: spatial filter shape, in the order of the spatial letters
      of ``dimension_numbers``' filter spec.
    strides: spatial strides (default all 1), same order.
    padding: ``'VALID'``, ``'SAME'`` or ``'CIRCULAR'`` (periodic).
    W_std: weight standard deviation.
    b_std: bias standard deviation; ``None``: no bias.
    dimension_numbers: ``(lhs_spec, rhs_spec, out_spec)`` as in
      `jax.lax.conv_general_dilated` (default ``('NHWC', 'HWIO', 'NHWC')``
      with letters ``A, B, D, ...`` for the spatial axes).
    parameterization: ``'ntk'`` or ``'standard'`` (as for `Dense`, with fan-in
      ``C_in * prod(filter_shape)``).
    s: width scalings ``(s_in, s_out)`` for ``'standard'``.
"""


@hyperparameters("W_std", "b_std")
@layer
def Conv(out_chan: int, filter_shape: Sequence[int],
         strides: Optional[Sequence[int]] = None, padding: str = "VALID",
         W_std: float = 1.0, b_std: Optional[float] = None,
         dimension_numbers: Optional[tuple] = None,
         parameterization: str = "ntk", s: tuple = (1, 1)):
  """General convolution ``W_std / sqrt(C_in F) * (x * W) + b_std * b``.

  Params ``(W, b)``: ``W`` with ``rhs_spec`` layout, ``b`` of shape
  ``(1, .., out_chan, .., 1)`` (or ``None``). Kernel: see the module.
  """
  return _conv_layer("Conv", out_chan, filter_shape, strides, padding, W_std,
                     b_std, dimension_numbers, parameterization, s,
                     transpose=False, shared=True)


@hyperparameters("W_std", "b_std")
@layer
def ConvTranspose(out_chan: int, filter_shape: Sequence[int],
                  strides: Optional[Sequence[int]] = None,
                  padding: str = "VALID", W_std: float = 1.0,
                  b_std: Optional[float] = None,
                  dimension_numbers: Optional[tuple] = None,
                  parameterization: str = "ntk", s: tuple = (1, 1)):
  """General transposed convolution (`jax.lax.conv_transpose`); CIRCULAR
  wraps the VALID output onto the SAME output shape."""
  return _conv_layer("ConvTranspose", out_chan, filter_shape, strides,
                     padding, W_std, b_std, dimension_numbers,
                     parameterization, s, transpose=True, shared=True)


@hyperparameters("W_std", "b_std")
@layer
def ConvLocal(out_chan: int, filter_shape: Sequence[int],
              strides: Optional[Sequence[int]] = None, padding: str = "VALID",
              W_std: float = 1.0, b_std: Optional[float] = None,
              dimension_numbers: Optional[tuple] = None,
              parameterization: str = "ntk", s: tuple = (1, 1)):
  """Locally connected layer: a convolution with separate weights (and
  biases) at every output position.

  Params: ``W`` of shape (rhs_spec layout) ``I = C_in * prod(filter_shape)``,
  ``O = out_chan``, spatial = output spatial shape; ``b`` of the output shape
  with batch size 1. Kernel: the convolution's spatial diagonal; zero between
  different positions.
  """
  return _conv_layer("ConvLocal", out_chan, filter_shape, strides, padding,
                     W_std, b_std, dimension_numbers, parameterization, s,
                     transpose=False, shared=False)


for _f in (Conv, ConvTranspose, ConvLocal):
  _f.__doc__ += _CONV_DOC
