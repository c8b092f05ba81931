"""The packed ``x2=None`` layout: upper-triangle blocks of sample pairs.

``x2=None`` kernels are symmetric, ``K[j, i] = K[i, j]`` with spatial pairs
swapped. Cutting the N samples into B blocks of b and keeping the
``B (B + 1) / 2`` block pairs ``bi <= bj`` halves the work as B grows, while
the per-layer gathers touch only ``O(N B)`` variances (whole blocks), not
``O(N**2)`` entries. A packable network (see `requirements`) runs as

  ``pad_rows`` (inputs to ``B * b`` samples) -> ``pack`` (kernel of the inputs)
  -> layers -> ``unpack`` -> ``trim_rows`` (back to the ``n`` samples),

the two pairs side by side below; `covariance` pairs packed covariances with
their variances for the layers in between.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..kernel import Kernel

__all__ = ["MAX_BLOCKS", "MIN_PACKED_BYTES", "worth_packing", "block_layout",
           "block_pairs", "pair_table", "packed_geometry",
           "diagonal_block_positions", "pair_variances", "pad_rows", "pack",
           "unpack", "trim_rows", "mirror", "swap_spatial_pairs"]

MAX_BLOCKS = 32
# Up to this many bytes of one whole (N, N) + S intermediate an x2=None
# kernel is computed on the whole grid: the packed layout's gathers and
# padding add distinct kernels to XLA's compile of every call, more than
# they save at run time on a small problem (benchmarks/ISSUE15.md, section
# 10). Shapes and dtypes only, so a call under an outer jax.jit takes the
# same branch.
MIN_PACKED_BYTES = 2 ** 18


def worth_packing(n: int, pair_elems: int, itemsize: int) -> bool:
  """Whether ``n`` samples run packed: ``pair_elems`` entries per pair of
  samples (the spatial covariances), ``itemsize`` bytes each."""
  return n > 1 and n * n * pair_elems * itemsize > MIN_PACKED_BYTES


def block_layout(n: int) -> tuple:
  """``(B, b)``: B blocks of b samples, ``B * b >= n`` (inputs are padded).

  Prefers an exact split (``B * b == n``, B within a factor 1.5 of
  `MAX_BLOCKS`, b a multiple of 8 if possible): without padding the unpacked
  kernel is the output itself, not a larger grid sliced into a copy.
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


def packed_geometry(k: Kernel) -> tuple:
  """``(B, b)`` of a packed kernel."""
  b = k.nngp.shape[1]
  return k.cov1.shape[0] // b, b


def diagonal_block_positions(n_blocks: int) -> np.ndarray:
  """Positions of the block pairs ``(bi, bi)`` in the packed order."""
  i = np.arange(n_blocks)
  return i * n_blocks - i * (i - 1) // 2


def pair_variances(nngp):
  """``(var1, var2)`` of packed ``(P, b, b)`` covariances of ``x2 = x1``,
  read off their diagonal blocks: ``var1[p, i, 0]`` is the variance of
  sample ``i`` of pair ``p``'s row block, ``var2[p, 0, j]`` that of sample
  ``j`` of its column block.

  One gather with constant indices (jnp indexing would assemble the indices
  in a kernel of its own at run time).
  """
  n_pairs, b = nngp.shape[0], nngp.shape[1]
  v = jax.lax.gather(
      nngp, _pair_variance_index(n_pairs, b),
      jax.lax.GatherDimensionNumbers(offset_dims=(),
                                     collapsed_slice_dims=(0, 1, 2),
                                     start_index_map=(0, 1, 2)),
      slice_sizes=(1, 1, 1),
      mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS)
  return v[0][:, :, None], v[1][:, None, :]


@functools.lru_cache(maxsize=64)
def _pair_variance_index(n_pairs: int, b: int) -> np.ndarray:
  """``(2, P, b, 3)`` int32 indices of those variances (NumPy)."""
  n_blocks = int(round((np.sqrt(8 * n_pairs + 1) - 1) / 2))
  bi, bj = np.triu_indices(n_blocks)
  pos = diagonal_block_positions(n_blocks)
  idx = np.empty((2, n_pairs, b, 3), np.int32)
  idx[..., 0] = np.stack([pos[bi], pos[bj]])[:, :, None]
  idx[..., 1] = idx[..., 2] = np.arange(b)
  idx.flags.writeable = False
  return idx


def pad_rows(x1):
  """``x1`` padded to the ``B * b`` samples of `block_layout`.

  Padded with copies of the first sample, not zeros, so that no layer sees a
  degenerate zero variance; `trim_rows` drops them again.
  """
  n = x1.shape[0]
  n_blocks, b = block_layout(n)
  return jnp.concatenate([x1, jnp.repeat(x1[:1], n_blocks * b - n, 0)])


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
  n_blocks, b = packed_geometry(k)
  # Every block (I, J) of the full grid gathered from its packed pair, and
  # transposed below the diagonal: one gather and a select per field, so no
  # zero-filled grid is kept as an extra full-size temporary.
  pair = pair_table(n_blocks)
  below = jnp.asarray(np.arange(n_blocks)[:, None] > np.arange(n_blocks))

  def full(p):
    if p is None or jnp.ndim(p) == 0:
      return p
    rest = p.shape[3:]
    # The barrier keeps XLA from constant-folding this gather's transpose (a
    # scatter-add into the packed blocks) when the cotangent is a constant,
    # as in `jax.grad` of `sum(kernel)`: folding it took seconds at N=1000
    # and over a minute at N=2000. It is gone by the time XLA fuses.
    blocks = jax.lax.optimization_barrier(p[pair])  # (B, B, b, b) + rest
    mirrored = jnp.swapaxes(swap_spatial_pairs(blocks, 4, k.diagonal_spatial),
                            2, 3)
    mask = below.reshape(below.shape + (1,) * (blocks.ndim - 2))
    out = jnp.where(mask, mirrored, blocks)
    out = jnp.moveaxis(out, 1, 2)
    return out.reshape((n_blocks * b, n_blocks * b) + rest)

  return k.replace(nngp=full(k.nngp), ntk=full(k.ntk), packed=False)


def mirror(k: Kernel) -> Kernel:
  """An ``x2=None`` kernel computed on the whole grid (a small one, see
  `worth_packing`), exactly symmetric as an unpacked one is: ``K[j, i]``
  for ``i < j`` is ``K[i, j]`` with spatial pairs swapped (round-off of the
  two triangles can differ by an ulp)."""
  below = np.tri(k.nngp.shape[0], k=-1, dtype=bool)

  def full(p):
    if p is None or jnp.ndim(p) == 0:
      return p
    mask = jnp.asarray(below.reshape(below.shape + (1,) * (p.ndim - 2)))
    mirrored = jnp.swapaxes(swap_spatial_pairs(p, 2, k.diagonal_spatial), 0, 1)
    return jnp.where(mask, mirrored, p)

  return k.replace(nngp=full(k.nngp), ntk=full(k.ntk))


def trim_rows(k: Kernel, n: int) -> Kernel:
  """The kernel of the first ``n`` samples of an unpacked, padded ``k``
  (inverse of `pad_rows`)."""
  shape = list(k.shape1)
  shape[k.batch_axis] = n
  ntk = k.ntk if k.ntk is None or jnp.ndim(k.ntk) == 0 else k.ntk[:n, :n]
  return k.replace(nngp=k.nngp[:n, :n], cov1=k.cov1[:n], ntk=ntk,
                   shape1=tuple(shape), shape2=tuple(shape))


def swap_spatial_pairs(mat, batch_ndim: int, diagonal_spatial: bool):
  """``K[.., x, x', y, y']`` -> ``K[.., x', x, y', y]`` (the transposed pair)."""
  if diagonal_spatial or mat.ndim == batch_ndim:
    return mat
  n = (mat.ndim - batch_ndim) // 2
  perm = list(range(batch_ndim))
  for a in range(n):
    perm += [batch_ndim + 2 * a + 1, batch_ndim + 2 * a]
  return jnp.transpose(mat, perm)
