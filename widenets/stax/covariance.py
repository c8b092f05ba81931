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

import jax.numpy as jnp
import numpy as np

from ..kernel import Kernel
from . import chunking


def n_spatial(k: Kernel) -> int:
  """Number of spatial axes of the finite layer outputs."""
  return len(k.shape1) - 2 if k.channel_axis is not None else 0


def spatial_diagonal(cov, batch_ndim: int, diagonal_spatial: bool):
  """Variances ``cov[b.., x, x, y, y, ...]`` -> ``(b..., X, Y, ...)``.

  With ``batch_ndim == 2`` (a full batch covariance) the batch diagonal is
  taken too, so the result always has one batch axis.
  """
  if batch_ndim == 2:
    cov = jnp.moveaxis(jnp.diagonal(cov, axis1=0, axis2=1), -1, 0)
  if diagonal_spatial:
    return cov
  for _ in range((cov.ndim - 1) // 2):
    # The diagonal of the first zipped pair goes to the back, so after all
    # pairs the spatial axes are back in order.
    cov = jnp.diagonal(cov, axis1=1, axis2=2)
  return cov


def _expand(d, n_space: int, position: Optional[int], diagonal_spatial: bool):
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


# -- packed layout: upper-triangle blocks ------------------------------------
# x2=None kernels are symmetric, K[j, i] = K[i, j] with spatial pairs swapped.
# Cutting the N samples into B blocks of b and keeping the B (B + 1) / 2 block
# pairs (bi <= bj) halves the work as B grows, while the per-layer gathers touch
# only O(N B) variances (whole blocks), not O(N**2) entries.

MAX_BLOCKS = 32


def block_layout(n: int) -> tuple:
  """``(B, b)``: B blocks of b samples, ``B * b >= n`` (inputs are padded).

  Prefers an exact split (``B * b == n``, B within a factor 1.5 of
  `MAX_BLOCKS`, b a multiple of 8 if possible): without padding the unpacked
  kernel is the output itself, not a larger grid sliced into a copy (3-layer
  Erf at n=2000: 32 MB less of XLA temporaries).
  """
  if n > MAX_BLOCKS:
    exact = [d for d in range(int(MAX_BLOCKS / 1.5), int(MAX_BLOCKS * 1.5) + 1)
             if n % d == 0 and n // d >= 8]
    if exact:
      best = min(exact, key=lambda d: ((n // d) % 8 != 0, abs(d - MAX_BLOCKS)))
      return best, n // best
  n_blocks = max(1, min(n, MAX_BLOCKS))
  b = -(-n // n_blocks)
  return -(-n // b), b


def block_pairs(n_blocks: int):
  """Block indices ``(bi, bj)`` of the upper triangle ``bi <= bj``."""
  bi, bj = np.triu_indices(n_blocks)
  return jnp.asarray(bi, jnp.int32), jnp.asarray(bj, jnp.int32)


def pair_table(n_blocks: int):
  """``(B, B)`` int32: the position in `block_pairs` of block ``(I, J)`` or,
  below the diagonal, of ``(J, I)``."""
  bi, bj = np.triu_indices(n_blocks)
  table = np.empty((n_blocks, n_blocks), np.int32)
  table[bi, bj] = table[bj, bi] = np.arange(len(bi))
  return jnp.asarray(table)


def _packed_geometry(k: Kernel):
  b = k.nngp.shape[1]
  return k.cov1.shape[0] // b, b


def nngp_variances(k: Kernel):
  """``(var1, var2)`` broadcastable against ``k.nngp``.

  ``var1[i, j, x, x', ...] = cov1[i, x, x]`` and
  ``var2[i, j, x, x', ...] = cov2[j, x', x']`` (and the packed analogue).
  """
  ns = n_spatial(k)
  if k.cov2 is None:
    # x2 is x1: read the variances off nngp's own diagonal, so entries
    # (i, i) see exactly zero angle. cov1 holds the same numbers up to
    # round-off from differently fused ops, which arc-cosine kernels would
    # amplify to sqrt(eps).
    d1 = spatial_diagonal(batch_diagonal(k), 1, k.diagonal_spatial)
  else:
    d1 = spatial_diagonal(k.cov1, k.cov_batch_ndim, k.diagonal_spatial)
  d2 = d1 if k.cov2 is None else spatial_diagonal(
      k.cov2, k.cov_batch_ndim, k.diagonal_spatial)
  if k.packed:
    n_blocks, b = _packed_geometry(k)
    bi, bj = block_pairs(n_blocks)
    blocks = d1.reshape((n_blocks, b) + d1.shape[1:])
    v1 = blocks[bi][:, :, None]
    v2 = blocks[bj][:, None, :]
  else:
    v1, v2 = d1[:, None], d2[None, :]
  return (_expand(v1, ns, 0, k.diagonal_spatial),
          _expand(v2, ns, 1, k.diagonal_spatial))


def batch_diagonal(k: Kernel):
  """``nngp[i, i]`` for every ``i`` (``k`` describes ``x2 = x1``)."""
  if k.packed:
    n_blocks, b = _packed_geometry(k)
    diag_blocks = k.nngp[jnp.asarray(_diagonal_block_positions(n_blocks))]
    d = jnp.moveaxis(jnp.diagonal(diag_blocks, axis1=1, axis2=2), -1, 1)
    return d.reshape((n_blocks * b,) + d.shape[2:])
  return jnp.moveaxis(jnp.diagonal(k.nngp, axis1=0, axis2=1), -1, 0)


def _diagonal_block_positions(n_blocks: int) -> np.ndarray:
  """Positions of the block pairs ``(bi, bi)`` in the packed order."""
  i = np.arange(n_blocks)
  return i * n_blocks - i * (i - 1) // 2


def cov_variances(k: Kernel, cov):
  """``(var_a, var_b)`` broadcastable against ``cov`` (``cov1`` or ``cov2``)."""
  ns = n_spatial(k)
  d = spatial_diagonal(cov, k.cov_batch_ndim, k.diagonal_spatial)
  if not k.diagonal_batch:
    d_a, d_b = d[:, None], d[None, :]
  else:
    d_a = d_b = d
  return (_expand(d_a, ns, 0, k.diagonal_spatial),
          _expand(d_b, ns, 1, k.diagonal_spatial))


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
  a, b = cov_variances(k, k.cov1)
  cov1, _ = fn(k.cov1, a, b, None)
  cov2 = k.cov2
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


def swap_spatial_pairs(mat, batch_ndim: int, diagonal_spatial: bool):
  """``K[.., x, x', y, y']`` -> ``K[.., x', x, y', y]`` (the transposed pair)."""
  if diagonal_spatial or mat.ndim == batch_ndim:
    return mat
  n = (mat.ndim - batch_ndim) // 2
  perm = list(range(batch_ndim))
  for a in range(n):
    perm += [batch_ndim + 2 * a + 1, batch_ndim + 2 * a]
  return jnp.transpose(mat, perm)


def batch_diagonal_mask(k: Kernel):
  """Boolean, broadcastable to ``nngp``: True where ``i == j``."""
  extra = (1,) * (k.nngp.ndim - k.batch_ndim)
  if k.packed:
    n_blocks, b = _packed_geometry(k)
    bi, bj = block_pairs(n_blocks)
    mask = (bi == bj)[:, None, None] & jnp.eye(b, dtype=bool)
    return mask.reshape(mask.shape + extra)
  n1, n2 = k.nngp.shape[:2]
  offset = chunking.current_row_offset()
  if offset is None:
    return jnp.eye(n1, n2, dtype=bool).reshape((n1, n2) + extra)
  # A row block of x1 (see `chunking`): its row i is sample i + offset.
  mask = jnp.arange(n1)[:, None] + offset == jnp.arange(n2)[None, :]
  return mask.reshape((n1, n2) + extra)


def pack(k: Kernel) -> Kernel:
  """Keeps only the upper-triangle block pairs of a symmetric kernel.

  ``k.nngp`` must be ``(n, n) + S`` with ``n == B * b`` of `block_layout`.
  """
  n = k.nngp.shape[0]
  n_blocks, b = block_layout(n)
  if n_blocks * b != n:
    raise ValueError(f"pack: {n} samples do not fill {n_blocks} blocks of "
                     f"{b}; pad the inputs first.")
  bi, bj = block_pairs(n_blocks)

  def take(m):
    if m is None or jnp.ndim(m) == 0:
      return m
    m = m.reshape((n_blocks, b, n_blocks, b) + m.shape[2:])
    return jnp.moveaxis(m, 2, 1)[bi, bj]

  return k.replace(nngp=take(k.nngp), ntk=take(k.ntk), packed=True)


def unpack(k: Kernel) -> Kernel:
  """Inverse of `pack`: mirrors ``K[j, i] = K[i, j]`` with spatial pairs
  swapped."""
  n_blocks, b = _packed_geometry(k)
  # Every block (I, J) of the full grid gathered from its packed pair, and
  # transposed below the diagonal: one gather and a select per field (a
  # scatter into a zero grid kept one more full-size temporary per field).
  pair = pair_table(n_blocks)
  below = jnp.asarray(np.arange(n_blocks)[:, None] > np.arange(n_blocks))

  def full(p):
    if p is None or jnp.ndim(p) == 0:
      return p
    rest = p.shape[3:]
    blocks = p[pair]  # (B, B, b, b) + rest
    mirrored = jnp.swapaxes(swap_spatial_pairs(blocks, 4, k.diagonal_spatial),
                            2, 3)
    mask = below.reshape(below.shape + (1,) * (blocks.ndim - 2))
    out = jnp.where(mask, mirrored, blocks)
    out = jnp.moveaxis(out, 1, 2)
    return out.reshape((n_blocks * b, n_blocks * b) + rest)

  return k.replace(nngp=full(k.nngp), ntk=full(k.ntk), packed=False)
