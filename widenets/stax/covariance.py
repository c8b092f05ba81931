"""Covariance-layout helpers shared by every layer's kernel rule.

A layer never indexes batch axes by hand: it asks these helpers for the
variances that pair with each covariance entry, so the same rule runs on the
usual ``(N1, N2) + S`` grid and on the packed upper triangle used for
``x2=None`` (half the work).

Spatial layout ``S``: ``(X, Y, ...)`` if ``diagonal_spatial`` else
``(X, X', Y, Y', ...)``.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ..kernel import Kernel
from . import lax_ops, packing


def n_spatial(k: Kernel) -> int:
  """Number of spatial axes of the finite layer outputs."""
  return len(k.shape1) - 2 if k.channel_axis is not None else 0


# -- exact zero angle on the batch diagonal ----------------------------------
# Where x2 is x1, entry (i, i) of nngp pairs a covariance with the variances
# it equals. Arc-cosine kernels turn a round-off gap there (the same numbers
# from differently fused ops) into an angle of sqrt(eps), which deep networks
# amplify. One remedy, used everywhere: (1) the variances of the same inputs
# are read off nngp's own diagonal, `sample_diagonal` (the inputs' cov1/cov2
# and `nngp_variances` for x2=None), so that the numbers are identical; and
# (2) where an explicit x2 = x1 keeps them apart by an ulp per layer,
# `snap_unit_gaps` treats a gap of a few ulps as exactly zero.
# Both change values only: derivatives in the inputs are those of the exact
# formulas (`snapped`), since at x1 == x2 the two batches can still move apart
# (jax.jvp with different tangents, jax.grad in x1 alone).

# Gaps (in units of eps * sqrt(var1 var2)) `snap_unit_gaps` treats as
# round-off: a true angle below sqrt(2 * 8 eps) (~1e-3 in float32) is not
# resolvable from float32 covariances anyway.
SNAP_ULPS = 8


@jax.custom_jvp
def snapped(where, value, exact):
  """``where ? value : exact`` with the derivatives of ``exact``.

  ``value`` is ``exact`` up to round-off where ``where`` holds (the same
  numbers read off elsewhere, or an exact zero): the values are snapped, but
  derivatives of every order are those of the unsnapped formula ``exact``.
  Shapes: ``exact``'s; ``where`` and ``value`` broadcast against it.
  """
  return lax_ops.select(where, value, exact)


@snapped.defjvp
def _snapped_jvp(primals, tangents):
  where, value, exact = primals
  return snapped(where, value, exact), tangents[2]


def sample_diagonal(mat):
  """``mat[i, i, ...]`` of an ``(N, N, ...)`` covariance -> ``(N, ...)``."""
  return lax_ops.diagonal(mat, 0)


def snap_unit_gaps(cov, s):
  """``(s - cov, s + cov)`` with gaps of at most `SNAP_ULPS` ulps of ``s =
  sqrt(var1 var2)`` set to exactly 0 (a correlation of +-1 up to round-off).
  """
  tol = SNAP_ULPS * jnp.finfo(jnp.result_type(cov, float)).eps * s
  minus, plus = s - cov, s + cov
  zero = jnp.zeros((), minus.dtype)
  return (snapped(minus <= tol, zero, minus), snapped(plus <= tol, zero, plus))


def spatial_diagonal(cov, batch_ndim: int, diagonal_spatial: bool):
  """Variances ``cov[b.., x, x, y, y, ...]`` -> ``(b..., X, Y, ...)``.

  With ``batch_ndim == 2`` (a full batch covariance) the batch diagonal is
  taken too, so the result always has one batch axis.
  """
  if batch_ndim == 2:
    cov = sample_diagonal(cov)
  if diagonal_spatial:
    return cov
  for axis in range(1, 1 + (cov.ndim - 1) // 2):
    cov = lax_ops.diagonal(cov, axis)
  return cov


def expand(d, n_space: int, position: Optional[int], diagonal_spatial: bool):
  """Inserts singleton axes so spatial variances ``(..., X, Y)`` broadcast
  against a zipped layout: ``position`` 0 -> ``(X, 1, Y, 1)``, 1 ->
  ``(1, X, 1, Y)``."""
  if diagonal_spatial or n_space == 0:
    return d
  lead = d.ndim - n_space
  shape = list(d.shape[:lead])
  for s in d.shape[lead:]:
    shape += [s, 1] if position == 0 else [1, s]
  return d.reshape(shape)


def nngp_variances(k: Kernel):
  """``(var1, var2)`` broadcastable against ``k.nngp``.

  ``var1[i, j, x, x', ...] = cov1[i, x, x]`` and
  ``var2[i, j, x, x', ...] = cov2[j, x', x']`` (and the packed analogue).
  """
  ns = n_spatial(k)
  if k.packed and k.cov2 is None and k.nngp.ndim == 3:
    # No spatial axes: both by one gather (the general path below takes
    # three, each a kernel for XLA to compile).
    return packing.pair_variances(k.nngp)
  if k.cov2 is None:
    # x2 is x1: variances from nngp's own diagonal (see `sample_diagonal`).
    d1 = spatial_diagonal(batch_diagonal(k), 1, k.diagonal_spatial)
  else:
    d1 = spatial_diagonal(k.cov1, k.cov_batch_ndim, k.diagonal_spatial)
  d2 = d1 if k.cov2 is None else spatial_diagonal(
      k.cov2, k.cov_batch_ndim, k.diagonal_spatial)
  if k.packed:
    n_blocks, b = packing.packed_geometry(k)
    bi, bj = packing.block_pairs(n_blocks)
    blocks = d1.reshape((n_blocks, b) + d1.shape[1:])
    v1 = blocks[bi][:, :, None]
    v2 = blocks[bj][:, None, :]
  else:
    v1, v2 = d1[:, None], d2[None, :]
  return (expand(v1, ns, 0, k.diagonal_spatial),
          expand(v2, ns, 1, k.diagonal_spatial))


def batch_diagonal(k: Kernel):
  """``nngp[i, i]`` for every ``i`` (``k`` describes ``x2 = x1``)."""
  if k.packed:
    n_blocks, b = packing.packed_geometry(k)
    diag_blocks = k.nngp[jnp.asarray(packing.diagonal_block_positions(n_blocks))]
    d = lax_ops.diagonal(diag_blocks, 1)
    return d.reshape((n_blocks * b,) + d.shape[2:])
  return sample_diagonal(k.nngp)


def cov_variances(k: Kernel, cov):
  """``(var_a, var_b)`` broadcastable against ``cov`` (``cov1`` or ``cov2``)."""
  ns = n_spatial(k)
  d = spatial_diagonal(cov, k.cov_batch_ndim, k.diagonal_spatial)
  if not k.diagonal_batch:
    d_a, d_b = d[:, None], d[None, :]
  else:
    d_a = d_b = d
  return (expand(d_a, ns, 0, k.diagonal_spatial),
          expand(d_b, ns, 1, k.diagonal_spatial))


PairFn = Callable[..., tuple]


def map_pairwise(k: Kernel, fn: PairFn) -> Kernel:
  """Applies an elementwise rule to every covariance of ``k``.

  ``fn(cov, var1, var2, ntk)`` returns ``(new_cov, new_ntk)``; ``ntk`` is
  ``None`` for ``cov1``/``cov2`` and when the NTK is not computed. This is the
  one place that pairs covariances with their variances, for every layout.
  """
  v1, v2 = nngp_variances(k)
  ntk = k.ntk
  if ntk is not None:
    ntk = jnp.broadcast_to(ntk, k.nngp.shape)
  nngp, ntk = fn(k.nngp, v1, v2, ntk)
  cov1, cov2 = k.cov1, k.cov2
  if (cov2 is not None and k.cov_batch_ndim == 1
      and cov1.shape[1:] == cov2.shape[1:] and cov1.dtype == cov2.dtype):
    # One evaluation of the rule on both samples' variances (a copy of
    # O(N) entries): each application is a separate kernel for XLA to
    # compile, and the rule is elementwise, so the values are the same.
    both = jnp.concatenate([cov1, cov2], 0)
    a, b = cov_variances(k, both)
    both, _ = fn(both, a, b, None)
    return k.replace(nngp=nngp, ntk=ntk, cov1=both[:cov1.shape[0]],
                     cov2=both[cov1.shape[0]:])
  a, b = cov_variances(k, cov1)
  cov1, _ = fn(cov1, a, b, None)
  if cov2 is not None:
    a, b = cov_variances(k, cov2)
    cov2, _ = fn(cov2, a, b, None)
  return k.replace(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2)


def map_all(k: Kernel, fn: Callable, ntk: bool = True) -> Kernel:
  """Applies ``fn`` to ``nngp``, ``cov1``, ``cov2`` (and ``ntk`` if asked)."""
  return k.replace(
      nngp=fn(k.nngp), cov1=fn(k.cov1),
      cov2=None if k.cov2 is None else fn(k.cov2),
      ntk=fn(k.ntk) if ntk and k.ntk is not None and jnp.ndim(k.ntk) else k.ntk)


def batch_diagonal_mask(k: Kernel):
  """Boolean, broadcastable to ``nngp``: True where ``i == j``."""
  extra = (1,) * (k.nngp.ndim - k.batch_ndim)
  if k.packed:
    n_blocks, b = packing.packed_geometry(k)
    bi, bj = packing.block_pairs(n_blocks)
    mask = (bi == bj)[:, None, None] & jnp.eye(b, dtype=bool)[None]
    return mask.reshape(mask.shape + extra)
  n1, n2 = k.nngp.shape[:2]
  if k.row_offset is None:
    return jnp.eye(n1, n2, dtype=bool).reshape((n1, n2) + extra)
  # A row block of x1 (see `chunking`): its row i is sample i + offset.
  mask = jnp.arange(n1)[:, None] + k.row_offset == jnp.arange(n2)[None, :]
  return mask.reshape((n1, n2) + extra)


