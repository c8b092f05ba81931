"""Branching layers: `FanOut` and the fan-ins `FanInSum`, `FanInProd`,
`FanInConcat`.

Fan-ins assume the branches are independent given the inputs (each has its own
weights after the fork), as in neural-tangents.
"""
from __future__ import annotations

import functools
import warnings

import jax.numpy as jnp
import numpy as np

from ..axes import spatial_axes
from ..kernel import Kernel
from .layer import Requirements, layer


def _full_ntk(k: Kernel):
  if k.ntk is not None and jnp.ndim(k.ntk) == 0:
    return jnp.broadcast_to(k.ntk, k.nngp.shape)
  return k.ntk


def _check_fan_in(name: str, ks, same_shape: bool = True, axis=None):
  if isinstance(ks, Kernel) or len(ks) == 0:
    raise ValueError(f"{name}: expects a list of kernels from several "
                     f"branches (use FanOut and parallel before it).")
  k0 = ks[0]
  for k in ks[1:]:
    if (k.diagonal_batch, k.diagonal_spatial, k.packed) != (
        k0.diagonal_batch, k0.diagonal_spatial, k0.packed):
      raise ValueError(f"{name}: branches have different covariance layouts.")
    s1, s2, t1, t2 = k.shape1, k.shape2, k0.shape1, k0.shape2
    if axis is not None:
      drop = lambda s: tuple(s[:axis]) + tuple(s[axis + 1:])
      s1, s2, t1, t2 = map(drop, (s1, s2, t1, t2))
    if same_shape and (tuple(s1) != tuple(t1) or tuple(s2) != tuple(t2)):
      raise ValueError(
          f"{name}: all branches must have the same shape"
          f"{'' if axis is None else ' outside the concatenation axis'}; got "
          f"{[tuple(k.shape1) for k in ks]}.")


@layer
def FanOut(num: int):
  """Copies the input ``num`` times, for `parallel` branches."""
  if num < 1:
    raise ValueError(f"FanOut: num must be >= 1; got {num}.")
  init_fn = lambda rng, input_shape: ([input_shape] * num, ())
  apply_fn = lambda params, inputs, **kwargs: [inputs] * num
  rule = lambda k, **kwargs: [k] * num
  return init_fn, apply_fn, rule, Requirements()


def _check_same_shapes(name: str, inputs) -> None:
  # apply_fn broadcasts as neural-tangents' does; only name the layer and the
  # shapes when they cannot be combined at all.
  shapes = [tuple(jnp.shape(x)) for x in inputs]
  try:
    np.broadcast_shapes(*shapes)
  except ValueError:
    raise ValueError(f"{name}: all inputs must have the same shape; got "
                     f"{shapes}.") from None


def _same_shape_init(name):
  def init_fn(rng, input_shape):
    shapes = [tuple(s) for s in input_shape]
    if any(s != shapes[0] for s in shapes):
      raise ValueError(f"{name}: all inputs must have the same shape; got "
                       f"{shapes}.")
    return input_shape[0], ()
  return init_fn


@layer
def FanInSum():
  """Sums the branches: ``sum_i x_i``.

  Kernel: the sum of the branch kernels; all branches must be Gaussian
  (end in an affine layer) unless there is a single branch.
  """

  def apply_fn(params, inputs, **kwargs):
    _check_same_shapes("FanInSum", inputs)
    return functools.reduce(jnp.add, inputs)

  def rule(ks, **kwargs):
    _check_fan_in("FanInSum", ks)
    is_gaussian = all(k.is_gaussian for k in ks)
    if not is_gaussian and len(ks) != 1:
      raise ValueError(
          f"FanInSum: the sum's kernel is only known when every branch ends "
          f"in an affine layer (Dense/Conv...), i.e. is Gaussian; got "
          f"is_gaussian={[k.is_gaussian for k in ks]}.")
    add = lambda mats: None if mats[0] is None else sum(mats)
    ntk = None if ks[0].ntk is None else sum(k.ntk for k in ks)
    return ks[0].replace(
        nngp=add([k.nngp for k in ks]), cov1=add([k.cov1 for k in ks]),
        cov2=add([k.cov2 for k in ks]), ntk=ntk, is_gaussian=is_gaussian,
        mask1=None, mask2=None)

  return _same_shape_init("FanInSum"), apply_fn, rule, Requirements()


@layer
def FanInProd():
  """Multiplies the branches elementwise: ``prod_i x_i``.

  Kernel (independent branches): ``nngp = prod_i nngp_i`` and
  ``ntk = sum_i ntk_i prod_{j != i} nngp_j``.
  """

  def apply_fn(params, inputs, **kwargs):
    _check_same_shapes("FanInProd", inputs)
    return functools.reduce(jnp.multiply, inputs)

  def rule(ks, **kwargs):
    _check_fan_in("FanInProd", ks)
    nngp, ntk = 1.0, 0.0
    with_ntk = all(k.ntk is not None for k in ks)
    for k in ks:
      if with_ntk:
        ntk = ntk * k.nngp + nngp * _full_ntk(k)
      nngp = nngp * k.nngp
    mul = lambda mats: functools.reduce(jnp.multiply, mats)
    cov2s = [k.cov2 for k in ks]
    return ks[0].replace(
        nngp=nngp, ntk=ntk if with_ntk else None,
        cov1=mul([k.cov1 for k in ks]),
        cov2=None if None in cov2s else mul(cov2s),
        is_gaussian=len(ks) == 1 and ks[0].is_gaussian,
        mask1=None, mask2=None)

  return _same_shape_init("FanInProd"), apply_fn, rule, Requirements()


def _block_diagonal(mats, axis: int):
  """Concatenates covariances along a zipped spatial pair ``(axis, axis+1)``
  with zero cross-blocks (independent branches)."""
  rows = []
  sizes = [m.shape[axis] for m in mats]
  for i, m in enumerate(mats):
    pads = [(0, 0)] * m.ndim
    pads[axis + 1] = (sum(sizes[:i]), sum(sizes[i + 1:]))
    rows.append(jnp.pad(m, pads))
  return jnp.concatenate(rows, axis)


@layer
def FanInConcat(axis: int = -1):
  """Concatenates the branches along ``axis``.

  Along the channel axis the kernel is the width-weighted mean of the branch
  kernels; along a spatial axis the covariances are concatenated, with zero
  covariance between positions from different branches (all branches must
  then be Gaussian).
  """

  def init_fn(rng, input_shape):
    shapes = [tuple(s) for s in input_shape]
    ndim = len(shapes[0])
    ax = axis % ndim
    rest = {s[:ax] + s[ax + 1:] for s in shapes}
    if len(rest) != 1:
      raise ValueError(f"FanInConcat: inputs must match outside axis {axis}; "
                       f"got shapes {shapes}.")
    out = list(shapes[0])
    out[ax] = sum(s[ax] for s in shapes)
    return tuple(out), ()

  def apply_fn(params, inputs, **kwargs):
    return jnp.concatenate(inputs, axis)

  def rule(ks, **kwargs):
    k0 = ks[0] if not isinstance(ks, Kernel) else ks
    ndim = len(k0.shape1)
    ax = axis % ndim
    _check_fan_in("FanInConcat", ks, axis=ax)
    if ax == k0.batch_axis:
      raise ValueError("FanInConcat: concatenating along the batch axis has "
                       "no kernel; concatenate the inputs instead.")
    if ax == k0.channel_axis:
      widths = [k.shape1[ax] for k in ks]
      total = sum(widths)

      def avg(mats):
        if mats[0] is None:
          return None
        return sum(w * m for w, m in zip(widths, mats)) / total

      return k0.replace(
          nngp=avg([k.nngp for k in ks]), cov1=avg([k.cov1 for k in ks]),
          cov2=avg([k.cov2 for k in ks]),
          ntk=None if k0.ntk is None else avg([_full_ntk(k) for k in ks]),
          is_gaussian=False, mask1=None, mask2=None)
    if not all(k.is_gaussian for k in ks):
      raise ValueError("FanInConcat: concatenation along a spatial axis needs "
                       "every branch to end in an affine layer (Gaussian).")
    spatial = list(spatial_axes(ndim, k0.batch_axis, k0.channel_axis))
    s = spatial.index(ax)

    def cat(mats, batch_ndim):
      if mats[0] is None:
        return None
      if k0.diagonal_spatial:
        return jnp.concatenate(mats, batch_ndim + s)
      return _block_diagonal(mats, batch_ndim + 2 * s)

    return k0.replace(
        nngp=cat([k.nngp for k in ks], k0.batch_ndim),
        ntk=cat([_full_ntk(k) for k in ks], k0.batch_ndim),
        cov1=cat([k.cov1 for k in ks], k0.cov_batch_ndim),
        cov2=cat([k.cov2 for k in ks], k0.cov_batch_ndim),
        is_gaussian=True, mask1=None, mask2=None)

  return init_fn, apply_fn, rule, Requirements()
