"""NTK by NTK-vector products (`NtkImplementation.NTK_VECTOR_PRODUCTS`).

``Theta(x1, x2) v = J(x1) (J(x2)^T v)``: one VJP through ``f(x2)`` then one
JVP through ``f(x1)``, never contracting Jacobians. The kernel is obtained by
applying the transpose to the standard basis of ``f(x1)``'s outputs: row ``e``
is ``J(x2) (J(x1)^T e)`` (a VJP on ``f(x1)``, a JVP on ``f(x2)``).

With ``vmap_axes`` the VJPs run on one sample of ``x1`` at a time (the basis
is the outputs of that sample only), while the JVP runs on the whole ``x2``
batch, so its cost is ``N1 * K`` batched forward passes for ``K`` outputs per
sample.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import tree_map

from ..axes import canonical_axes
from . import _common
from .conv_grad import has_conv, with_fast_conv_grads

__all__ = ["ntk_vector_products_ntk_fn", "empirical_ntk_vp_fn"]


def _leaf_fn(fn: Callable, index: int) -> Callable:
  return lambda p: jax.tree_util.tree_leaves(fn(p))[index]


def _cotangent(fx, index: int, leaf_ct):
  """A tree like ``fx`` with ``leaf_ct`` at leaf ``index`` and zeros
  elsewhere."""
  leaves, treedef = jax.tree_util.tree_flatten(fx)
  cts = [leaf_ct if i == index else jnp.zeros(l.shape, l.dtype)
         for i, l in enumerate(leaves)]
  return jax.tree_util.tree_unflatten(treedef, cts)


def _rows(vjp_fn, fx_out, f2, params, index: int, shape, dtype):
  """``R[b] = J2 (J1^T e_b)`` for the standard basis ``e_b`` of one output
  leaf of the VJP side; returns ``shape + f2-leaf shape``."""
  size = int(np.prod(shape, dtype=np.int64))
  eye = jnp.eye(size, dtype=dtype).reshape((size,) + tuple(shape))

  def row(e):
    t, = vjp_fn(_cotangent(fx_out, index, e))
    return jax.jvp(_leaf_fn(f2, index), (params,), (t,))[1]

  r = jax.vmap(row)(eye)
  return r.reshape(tuple(shape) + r.shape[1:])


def _pairwise_rows(g, params, index: int, a, others, args, dtype):
  """Rows of sample ``a`` against each sample of ``others`` (axis 0),
  ``*O_a + (len(others),) + *O_b``, pair by pair as neural-tangents does:
  the transpose of ``delta -> J_a (J_b^T delta)`` applied to the basis of
  ``f(a)``. XLA simplifies this per-pair form better on fully connected
  networks; the batched form of `_rows` wins on convolutions, see
  `_prefers_pairs`."""
  fa = jax.eval_shape(lambda p: g(p, a, *args), params)
  la = jax.tree_util.tree_leaves(fa)[index]
  size = int(np.prod(la.shape, dtype=np.int64))
  eye = jnp.eye(size, dtype=dtype).reshape((size,) + tuple(la.shape))
  f_a = _leaf_fn(lambda p: g(p, a, *args), index)

  def pair(b):
    fb, pull = jax.vjp(lambda p: g(p, b, *args), params)
    lb = jax.tree_util.tree_leaves(fb)[index]

    def vjp_jvp(delta):
      t, = pull(_cotangent(fb, index, delta))
      return jax.jvp(f_a, (params,), (t,))[1]

    transposed = jax.linear_transpose(
        vjp_jvp, jax.ShapeDtypeStruct(lb.shape, lb.dtype))
    r = jax.vmap(lambda e: transposed(e)[0])(eye)
    return r.reshape(tuple(la.shape) + tuple(lb.shape))

  return jnp.moveaxis(jax.vmap(pair)(others), 0, len(la.shape))


def _prefers_pairs(g, params, x, args) -> bool:
  """Per-pair rows (`_pairwise_rows`) unless ``g`` has convolutions."""
  return not has_conv(lambda p, xa: g(p, xa, *args), params, x[0])


# Rows (tangent x output entries of f(x2)) pushed through one batched JVP:
# bounds the memory of the vmapped tangents, which otherwise grows as
# N1 * K * N2 activations.
_ROWS_PER_CHUNK = 1 << 15
# Chunks are unrolled (at most this many): XLA's CPU backend runs
# convolutions inside a `lax.map` loop markedly slower.
_MAX_CHUNKS = 8


def _map_samples(fn, in_axes, args, rows: int):
  """``vmap(fn, in_axes)(*args)``, over chunks of samples when ``rows`` per
  sample would exceed `_ROWS_PER_CHUNK` for the whole batch.

  Chunks are vmapped one after another, ordered by an optimization barrier
  so that XLA can reuse one chunk's buffers for the next.
  """
  n = None
  for a, ax in zip(args, in_axes):
    if ax is None:
      continue
    leaves = jax.tree_util.tree_leaves(a)
    ax_leaves = jax.tree_util.tree_structure(a).flatten_up_to(ax)
    for leaf, k in zip(leaves, ax_leaves):
      if k is not None:
        n = leaf.shape[k]
        break
    if n is not None:
      break
  if n is None:
    return jax.vmap(fn, in_axes=in_axes)(*args)
  size = max(1, min(n, _ROWS_PER_CHUNK // max(rows, 1)))
  n_chunks = -(-n // size)
  if n_chunks <= 1:
    return jax.vmap(fn, in_axes=in_axes)(*args)
  if n_chunks > _MAX_CHUNKS:
    return _loop_samples(fn, in_axes, args, size)
  size = -(-n // n_chunks)

  def chunk(start):
    stop = min(start + size, n)
    return [a if ax is None else tree_map(
        lambda v, k: v if k is None else jax.lax.slice_in_dim(
            v, start, stop, axis=k), a, ax, is_leaf=lambda v: v is None)
            for a, ax in zip(args, in_axes)]

  outs = []
  for start in range(0, n, size):
    part = chunk(start)
    if outs:
      outs, part = jax.lax.optimization_barrier((outs, part))
    outs.append(jax.vmap(fn, in_axes=in_axes)(*part))
  return tree_map(lambda *o: jnp.concatenate(o), *outs)


def _loop_samples(fn, in_axes, args, size: int):
  """`_map_samples` for many chunks: a `lax.map` loop (slower, bounded
  memory and compile time), or one vmap where `lax.map` cannot slice."""
  # lax.map slices every leaf of a mapped argument: only usable when no leaf
  # inside a mapped argument is itself unmapped.
  all_mapped = all(
      all(ax is not None for ax in jax.tree_util.tree_leaves(
          a, is_leaf=lambda v: v is None))
      for a in in_axes if a is not None)
  if not all_mapped:
    return jax.vmap(fn, in_axes=in_axes)(*args)
  mapped = [i for i, a in enumerate(in_axes) if a is not None]
  moved = [tree_map(lambda v, ax: jnp.moveaxis(v, ax, 0), args[i], in_axes[i])
           for i in mapped]

  def body(slices):
    full = list(args)
    for i, v in zip(mapped, slices):
      full[i] = v
    return fn(*full)

  return jax.lax.map(body, moved, batch_size=size)


def _symmetric_rows(rows_against: Callable, x, args: list,
                    out_shape: tuple):
  """``R[i, a, j, b] = Theta[(i, a), (j, b)]`` of ``x`` with itself, from
  the block pairs ``I <= J`` of `_MAX_CHUNKS` sample blocks only.

  ``rows_against(lo)(x_i, *args)`` gives one sample's rows against samples
  ``x[lo:]`` (``args``: unbatched keyword-argument values). Block ``I`` is
  computed against ``x[start_I:]`` (about (B + 1) / 2B of all pairs for B
  blocks); the rest is mirrored, so the result is exactly symmetric.
  """
  n = x.shape[0]
  n_blocks = min(_MAX_CHUNKS, n)
  size = -(-n // n_blocks)
  k = len(out_shape)
  full = (slice(None),) * k
  r = jnp.zeros((n,) + tuple(out_shape) + (n,) + tuple(out_shape),
                jnp.result_type(x.dtype, float))
  prev = None
  for lo in range(0, n, size):
    hi = min(lo + size, n)
    part = x[lo:hi]
    if prev is not None:
      prev, part = jax.lax.optimization_barrier((prev, part))
    block = jax.vmap(rows_against(lo), in_axes=[0] + [None] * len(args))(
        part, *args)  # (hi-lo, *O, n-lo, *O)
    prev = block
    perm = list(range(k + 1, 2 * k + 2)) + list(range(k + 1))
    # The block against itself: averaged with its transpose, so that the
    # whole kernel is exactly symmetric (its two halves differ by round-off).
    own = (slice(None),) + full + (slice(0, hi - lo),) + full
    block = block.at[own].set((block[own] + jnp.transpose(block[own], perm))
                              / 2)
    r = r.at[(slice(lo, hi),) + full + (slice(lo, n),) + full].set(
        block.astype(r.dtype))
    if hi < n:
      below = block[(slice(None),) + full + (slice(hi - lo, None),) + full]
      r = r.at[(slice(hi, n),) + full + (slice(lo, hi),) + full].set(
          jnp.transpose(below, perm).astype(r.dtype))
  return r


def _trace_and_diagonal(r, ndim: int, trace_axes, diagonal_axes):
  """Takes traces/diagonals of ``r`` of shape ``fx1.shape + fx2.shape``."""
  trace_axes = canonical_axes(trace_axes, ndim, "trace_axes")
  diagonal_axes = canonical_axes(diagonal_axes, ndim, "diagonal_axes")
  _common.check_trace_diagonal(r.shape[:ndim], r.shape[ndim:], trace_axes,
                               diagonal_axes)
  ids1, ids2, out = _common.output_ids(ndim, trace_axes, diagonal_axes)
  return (jnp.einsum(r, ids1 + ids2, out) /
          _common.trace_size(r.shape, trace_axes))


def ntk_vector_products_ntk_fn(f: Callable, trace_axes=(-1,),
                               diagonal_axes=(), vmap_axes=None, **unused):
  """``ntk_fn(x1, x2, params, **kwargs)`` by NTK-vector products."""

  def ntk_fn(x1, x2: Optional = None, params=None, **kwargs):
    kw1, kw2 = _common.split_kwargs(kwargs, x1, x2)
    fx1 = _common.check_params(f, params, x1, kw1)
    symmetric = _common.all_none(x2)
    if symmetric:
      x2, kw2, fx2 = x1, kw1, fx1
    else:
      fx2 = _common.check_params(f, params, x2, kw2)
    spec = _common.canonical_vmap(vmap_axes, x1, fx1, kw1)
    # x2=None: Theta is symmetric, so only pairs i <= j (by sample blocks)
    # are computed. Needs `plain` inputs: an ``rng`` among the keyword
    # arguments would draw differently for a block than for the batch.
    # Plain: array batches along axis 0 and no arrays among the keyword
    # arguments (then blocks of samples, or single samples, can be paired).
    plain = (spec.active and spec.x_axis == 0 and
             all(isinstance(x, (jax.Array, np.ndarray)) for x in (x1, x2)) and
             not any(hasattr(leaf, "shape") for leaf in
                     jax.tree_util.tree_leaves(kwargs)))
    symmetric = symmetric and plain and x1.shape[0] >= 4
    keys = tuple(kwargs)
    args = [kw1[k] for k in keys]
    if spec.active:
      g_plain = _common.per_sample_fn(f, spec, keys)
      g = with_fast_conv_grads(g_plain)
      # One trace of f decides the row form for every output leaf.
      prefer_pairs = plain and _prefers_pairs(g_plain, params, x1, args)
    leaves1 = jax.tree_util.tree_leaves(fx1)
    leaves2 = jax.tree_util.tree_leaves(fx2)
    out = []
    for i, (l1, l2) in enumerate(zip(leaves1, leaves2)):
      if len(l1.shape) != len(l2.shape):
        raise ValueError(f"f(x1) of shape {l1.shape} and f(x2) of shape "
                         f"{l2.shape} must have the same number of axes.")
      if not spec.active:
        f1 = lambda p: f(p, x1, **kw1)
        fx_out, vjp_fn = jax.vjp(f1, params)
        r = _rows(vjp_fn, fx_out, lambda p: f(p, x2, **kw2), params, i,
                  l1.shape, l1.dtype)
      else:
        axis = jax.tree_util.tree_leaves(spec.fx_axis)[i]
        pairs = prefer_pairs and axis == 0

        def against(others, i=i, pairs=pairs):
          if pairs:
            return lambda x, *a: _pairwise_rows(g, params, i, x, others, a,
                                                l1.dtype)
          f_other = lambda p: f(p, others, **kw2)

          def per_sample(x, *args):
            fx_s, vjp_fn = jax.vjp(lambda p: g(p, x, *args), params)
            shape = jax.tree_util.tree_leaves(fx_s)[i].shape
            return _rows(vjp_fn, fx_s, f_other, params, i, shape, l1.dtype)
          return per_sample

        # Symmetric blocks pay off for the batched form only (per-pair rows
        # gain nothing). A block's rows must fit `_ROWS_PER_CHUNK`.
        rows = l1.size // l1.shape[axis] * l2.size
        block = -(-l1.shape[axis] // _MAX_CHUNKS)
        if (symmetric and axis == 0 and not pairs and
            block * rows <= _ROWS_PER_CHUNK):
          r = _symmetric_rows(lambda lo: against(x1[lo:]), x1, args,
                              l1.shape[1:])
        elif pairs:
          r = _map_samples(against(x2), _common.vmap_in_axes(spec, keys),
                           [x1] + args, rows=rows)
          if symmetric:  # exactly symmetric, as the blocked form is
            k = l1.ndim
            r = (r + jnp.transpose(r, list(range(k, 2 * k)) +
                                   list(range(k)))) / 2
        else:
          r = _map_samples(against(x2), _common.vmap_in_axes(spec, keys),
                           [x1] + args, rows=rows)
          r = jnp.moveaxis(r, 0, axis)
      out.append(_trace_and_diagonal(r, len(l1.shape), trace_axes,
                                     diagonal_axes))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(fx1), out)

  return ntk_fn


def empirical_ntk_vp_fn(f: Callable, x1, x2: Optional, params,
                        **apply_fn_kwargs) -> Callable:
  """NTK-vector product ``v -> Theta(x1, x2) v`` without forming the NTK.

  Costs one VJP through ``f(x2)`` and one JVP through ``f(x1)`` per call
  (about ``N1 + N2`` forward passes), memory of one VJP.

  Args:
    f: ``f(params, x, **kwargs)``.
    x1, x2: inputs; ``x2=None`` means ``x2 = x1``.
    params: parameters the NTK is taken about.
    **apply_fn_kwargs: split between ``x1`` and ``x2`` as in
      `empirical_ntk_fn`.

  Returns:
    ``ntk_vp_fn(cotangents)``: ``cotangents`` shaped like ``f(params, x2)``;
    returns a tree shaped like ``f(params, x1)``:
    ``sum_{j,b} Theta[(i,a), (j,b)] v[j,b]`` (no trace over outputs).
  """
  kw1, kw2 = _common.split_kwargs(apply_fn_kwargs, x1, x2)
  _common.check_params(f, params, x1, kw1)
  f1 = lambda p: f(p, x1, **kw1)
  f2 = f1 if _common.all_none(x2) else (lambda p: f(p, x2, **kw2))

  def ntk_vp_fn(cotangents):
    t, = jax.vjp(f2, params)[1](cotangents)
    return jax.jvp(f1, (params,), (t,))[1]

  return ntk_vp_fn
