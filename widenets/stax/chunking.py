"""Row chunks: a whole network's kernel, ``c`` samples of ``x1`` at a time.

In a packable network (see `requirements.Requirements`) the entry ``(i, j)``
of every output depends only on ``x1[i]`` and ``x2[j]``. `map_rows` runs the
network on blocks of ``c`` rows of ``x1`` inside one compiled loop and writes
each block into the ``(N1, N2) + S`` outputs in place, so every intermediate
is ``(c, N2) + S`` instead of ``(N1, N2) + S``: XLA's temporaries shrink by
about ``N1 / c`` and the blocks stay in cache. ``x2``'s own covariances are
recomputed per block, which costs a fraction ``1 / c`` of the pair work;
blocks are kept at >= `MIN_ROWS` rows. A small problem (one ``(N1, N2) + S``
intermediate of at most `WHOLE_BLOCKS` blocks' bytes) runs in one piece:
there blocks gain nothing at run time, and the loop roughly doubles XLA's
compile time of the call.

Inside a block the batch diagonal ``i == j`` sits at ``j == i + offset``: the
block's kernel carries the offset (`Kernel.row_offset`), and the few rules
that need the diagonal ask `covariance.batch_diagonal_mask`.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from ..kernel import ARRAY_FIELDS, Kernel

__all__ = ["choose_rows", "map_rows"]

# Bytes of one (c, N2) + S block of one intermediate: small enough that a
# layer's few live blocks sit in L2/L3, large enough that per-block overheads
# (x2's covariances, loop steps) stay negligible (measurements in
# benchmarks/RESULTS.md).
BLOCK_BYTES = 2 ** 20
MIN_ROWS = 64
# Up to this many blocks' bytes the whole problem runs unblocked: on a 2-core
# x86 VM (2 MiB L2 per core) a 3-layer Erf network ran as fast in one piece
# as in blocks up to N1 = N2 ~ 1100 (4.8 MB per intermediate) and 30% slower
# from 1200 on; the loop costs 0.15-0.4 CPU s of XLA compile on a first call
# (benchmarks/ISSUE15.md, section 7). Depends on shapes and dtypes only, so
# a call under an outer jax.jit takes the same branch.
WHOLE_BLOCKS = 4

# Kernel fields with one entry per sample of x1 (cut into row blocks).
_ROW_FIELDS = ("nngp", "ntk", "cov1", "mask1")


def choose_rows(n1: int, pair_elems: int, itemsize: int) -> Optional[int]:
  """Rows per block for ``n1`` samples of x1, or None to run in one piece.

  ``pair_elems``: entries of one row of ``nngp`` (``N2`` times the spatial
  entries of one pair). None when the whole ``nngp`` takes at most
  ``WHOLE_BLOCKS * BLOCK_BYTES`` or there would be fewer than two blocks.
  Blocks have at least the rows that fit
  `BLOCK_BYTES` (and `MIN_ROWS`) and are as even as possible; the last one
  overlaps the previous by fewer rows than there are blocks (recomputed,
  equal).
  """
  row_bytes = max(1, pair_elems * itemsize)
  if n1 * row_bytes <= WHOLE_BLOCKS * BLOCK_BYTES:
    return None
  rows = max(MIN_ROWS, BLOCK_BYTES // row_bytes)
  if n1 < 2 * rows:
    return None
  return math.ceil(n1 / (n1 // rows))


def _is_kernel(x) -> bool:
  return isinstance(x, Kernel)


def _kernels(fn, *trees):
  return jax.tree_util.tree_map(fn, *trees, is_leaf=_is_kernel)


def map_rows(body: Callable, x1, rows: int):
  """``body(x1_block, offset) -> (out, flags, ok)`` over row blocks of x1.

  ``out``: a `Kernel` (or a tree of them) for the block; ``flags``: a pytree
  of boolean scalars (`overflow.OverflowFlags`); ``ok``: a boolean scalar. Returns the assembled ``out``
  (row fields ``nngp``, ``ntk``, ``cov1``, ``mask1`` of all ``N1`` rows; the
  others, e.g. ``cov2``, from the last block, as every block has them equal)
  and ``flags``/``ok`` AND-ed over blocks.
  """
  n = x1.shape[0]
  n_blocks = math.ceil(n / rows)

  def step(offset):
    return body(jax.lax.dynamic_slice_in_dim(x1, offset, rows), offset)

  out_s, flags_s, _ = jax.eval_shape(step, jnp.zeros((), jnp.int32))

  def empty(kk):
    def buf(name):
      s = getattr(kk, name)
      if s is None:
        return None
      shape = s.shape
      if name in _ROW_FIELDS and len(shape) > 0:
        shape = (n,) + tuple(shape[1:])
      return jnp.zeros(shape, s.dtype)
    return kk.replace(**{f: buf(f) for f in ARRAY_FIELDS})

  def merge(buf_k, new_k, offset):
    def put(name):
      b, v = getattr(buf_k, name), getattr(new_k, name)
      if v is None or name not in _ROW_FIELDS or jnp.ndim(v) == 0:
        return v
      return jax.lax.dynamic_update_slice_in_dim(b, v, offset, 0)
    return buf_k.replace(**{f: put(f) for f in ARRAY_FIELDS})

  def loop(i, carry):
    bufs, flags, ok = carry
    offset = jnp.minimum(i * rows, n - rows)
    out, new_flags, new_ok = step(offset)
    bufs = _kernels(lambda b, v: merge(b, v, offset), bufs, out)
    flags = jax.tree_util.tree_map(jnp.logical_and, flags, new_flags)
    return bufs, flags, ok & new_ok

  init = (_kernels(empty, out_s),
          jax.tree_util.tree_map(lambda f: jnp.ones(f.shape, f.dtype), flags_s),
          jnp.asarray(True))
  out, flags, ok = jax.lax.fori_loop(0, n_blocks, loop, init)

  def full_shape(kk):
    shape = list(kk.shape1)
    shape[kk.batch_axis] = n
    return kk.replace(shape1=tuple(shape))

  return _kernels(full_shape, out), flags, ok
