"""`Aggregate`: message passing over a graph on the spatial positions (graph
neural networks; Du et al. 2019, "Graph Neural Tangent Kernel").

Each input sample ``n`` comes with an adjacency ``A[n, i, j]`` (``i``, ``j``
multi-indices over the aggregated axes): the layer replaces every vertex with
the weighted sum of its predecessors, ``y[n, .., j] = sum_i x[n, .., i]
A[n, i, j]``. Kernel: ``K'[n1, n2, j, j'] = sum_{i, i'} A1[n1, i, j]
K[n1, n2, i, i'] A2[n2, i', j']``, and likewise for the NTK and ``cov1``/
``cov2`` (the layer has no parameters).

Patterns: ``DENSE``: ``(batch,) + agg_shape + agg_shape`` arrays (optionally
decoded by ``to_dense``); ``SPARSE``: integer edge lists ``(batch, n_edges, K,
2)`` (tails, heads; edges with a negative head coordinate are padding), which
are scattered into dense adjacencies here.
"""
from __future__ import annotations

import enum
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ..axes import spatial_axes
from ..kernel import Kernel
from .layer import Requirements, layer

__all__ = ["AggregateImplementation", "Aggregate", "DotGeneral"]


class AggregateImplementation(enum.Enum):
  """Pattern format of `Aggregate`: dense adjacency or sparse edge list."""
  DENSE = "DENSE"
  SPARSE = "SPARSE"


_LETTERS = "abcdefghijklmopqrstuvwxyz"  # no "n" (batch)


@layer
def Aggregate(aggregate_axis=None, batch_axis: int = 0,
              channel_axis: int = -1,
              to_dense: Optional[Callable] = lambda p: p,
              implementation: str = "DENSE"):
  """Graph aggregation ``y[n, .., j] = sum_i x[n, .., i] A[n, i, j]``.

  Args:
    aggregate_axis: spatial axes holding the vertices (default: all).
    batch_axis, channel_axis: axes of the inputs.
    to_dense: decodes a ``DENSE`` pattern (default: identity).
    implementation: ``'DENSE'`` or ``'SPARSE'`` (see the module docstring).

  ``apply_fn(params, x, pattern=A)``; ``kernel_fn(x1, x2, pattern=(A1, A2))``
  (``pattern=(None, None)``, the default, leaves the kernel unchanged).
  """
  impl = AggregateImplementation(
      implementation.name if isinstance(implementation, enum.Enum)
      else implementation)

  def agg_axes(ndim):
    b, c = batch_axis % ndim, channel_axis % ndim
    if aggregate_axis is None:
      return spatial_axes(ndim, b, c), b, c
    axes = (aggregate_axis,) if isinstance(aggregate_axis, int) else tuple(
        aggregate_axis)
    return tuple(sorted(a % ndim for a in axes)), b, c

  def dense(pattern, agg_shape):
    """Adjacency ``(batch,) + agg_shape * 2`` from either format."""
    if impl == AggregateImplementation.DENSE:
      return to_dense(pattern)
    k = len(agg_shape)
    if pattern.shape[-1] != 2:
      raise ValueError(f"Aggregate: a SPARSE pattern needs a trailing axis of "
                       f"2 (tails, heads); got shape {tuple(pattern.shape)}.")
    if k == 1 and pattern.ndim == 3:
      pattern = pattern[:, :, None, :]
    if pattern.ndim != 4 or pattern.shape[2] != k:
      raise ValueError(f"Aggregate: a SPARSE pattern must be (batch, n_edges, "
                       f"{k}, 2); got shape {tuple(pattern.shape)}.")
    size = int(np.prod(agg_shape))

    def one(edges):
      tails, heads = edges[..., 0], edges[..., 1]
      ravel = lambda ix: jnp.ravel_multi_index(tuple(ix.T), agg_shape,
                                               mode="wrap")
      t = jnp.where(jnp.all(tails >= 0, -1), ravel(tails), size - 1)
      h = ravel(heads)
      w = jnp.all(heads >= 0, -1).astype(jnp.float32)
      return jnp.zeros((size, size), jnp.float32).at[t, h].add(w)

    adj = jax.vmap(one)(pattern)
    return adj.reshape((pattern.shape[0],) + tuple(agg_shape) * 2)

  init_fn = lambda rng, input_shape: (tuple(input_shape), ())

  def apply_fn(params, inputs, *, pattern=None, **kwargs):
    if pattern is None:
      return inputs
    axes, b, _ = agg_axes(inputs.ndim)
    agg_shape = tuple(inputs.shape[a] for a in axes)
    adj = dense(pattern, agg_shape).astype(inputs.dtype)
    letters = iter(_LETTERS)
    x_sub = [next(letters) if i != b else "n" for i in range(inputs.ndim)]
    new = {a: next(letters) for a in axes}
    a_sub = "n" + "".join(x_sub[a] for a in axes) + "".join(new[a]
                                                            for a in axes)
    out_sub = [new.get(i, s) for i, s in enumerate(x_sub)]
    return jnp.einsum(f"{''.join(x_sub)},{a_sub}->{''.join(out_sub)}",
                      inputs, adj, precision=jax.lax.Precision.HIGHEST)

  def rule(k: Kernel, pattern=(None, None), **kwargs) -> Kernel:
    if pattern is None or not isinstance(pattern, (tuple, list)):
      pattern = (pattern, pattern)
    p1, p2 = pattern
    if p1 is None and p2 is None:
      return k
    if p1 is None or p2 is None:
      if k.cov2 is not None:
        raise ValueError("Aggregate: pass pattern=(pattern1, pattern2) for "
                         "x1 and x2 (only one was given).")
      p2 = p1 if p2 is None else p2
      p1 = p2 if p1 is None else p1
    ndim = len(k.shape1)
    axes, b, c = agg_axes(ndim)
    spatial = list(spatial_axes(ndim, b, c))
    sp_agg = [spatial.index(a) for a in axes]
    sizes = k.nngp.shape[k.batch_ndim::2]
    agg_shape = tuple(sizes[s] for s in sp_agg)
    a1 = dense(p1, agg_shape)
    a2 = a1 if p2 is p1 else dense(p2, agg_shape)

    def contract(mat, batch_letters, left, right):
      if mat is None or jnp.ndim(mat) == 0:
        return mat
      letters = iter(_LETTERS)
      n_sp = len(sizes)
      u = [next(letters) for _ in range(n_sp)]
      p = [next(letters) for _ in range(n_sp)]
      U = {s: next(letters) for s in sp_agg}
      P = {s: next(letters) for s in sp_agg}
      m_sub = batch_letters + "".join(x + y for x, y in zip(u, p))
      o_sub = batch_letters + "".join(U.get(s, u[s]) + P.get(s, p[s])
                                      for s in range(n_sp))
      l_sub = batch_letters[0] + "".join(u[s] for s in sp_agg) + "".join(
          U[s] for s in sp_agg)
      r_sub = batch_letters[-1] + "".join(p[s] for s in sp_agg) + "".join(
          P[s] for s in sp_agg)
      return jnp.einsum(f"{l_sub},{m_sub},{r_sub}->{o_sub}",
                        left.astype(mat.dtype), mat, right.astype(mat.dtype),
                        precision=jax.lax.Precision.HIGHEST)

    cb = "n" if k.diagonal_batch else "nN"
    return k.replace(
        nngp=contract(k.nngp, "nN", a1, a2),
        ntk=contract(k.ntk, "nN", a1, a2),
        cov1=contract(k.cov1, cb, a1, a1),
        cov2=None if k.cov2 is None else contract(k.cov2, cb, a2, a2))

  return init_fn, apply_fn, rule, Requirements(
      diagonal_spatial_ok=False, packable=False, blocker="Aggregate",
      batch_axis=batch_axis, channel_axis=channel_axis)


@layer
def DotGeneral(*, lhs=None, rhs=None,
               dimension_numbers=(((), ()), ((), ())), precision=None,
               batch_axis: int = 0, channel_axis: int = -1):
  """``lax.dot_general`` of the inputs with a constant ``lhs`` or ``rhs``.

  Kernel: the same contraction applied to both positions of every
  covariance, ``K' = O K O^T``. Supported here: contracting and batch
  dimensions on spatial axes of the inputs (not their batch or channel axis).
  """
  if lhs is not None and rhs is not None:
    raise ValueError("DotGeneral: at most one of the constants lhs and rhs "
                     "may be given; the other factor is the inputs.")
  is_lhs = rhs is None
  other = jnp.asarray(lhs if is_lhs else rhs)
  (lc, rc), (lb, rb) = dimension_numbers
  in_c, o_c = (rc, lc) if is_lhs else (lc, rc)
  in_b, o_b = (rb, lb) if is_lhs else (lb, rb)

  def dot_fn(x):
    args = (other.astype(x.dtype), x) if is_lhs else (x, other.astype(x.dtype))
    return jax.lax.dot_general(*args, dimension_numbers, precision)

  def init_fn(rng, input_shape):
    return jax.eval_shape(dot_fn, jax.ShapeDtypeStruct(
        tuple(input_shape), other.dtype)).shape, ()

  def apply_fn(params, inputs, **kwargs):
    return dot_fn(inputs)

  def rule(k: Kernel, **kwargs) -> Kernel:
    if other.ndim == 0:  # a constant factor: covariances scale by its square
      var = other.astype(k.nngp.dtype)**2
      scale = lambda m: None if m is None else var * m
      return k.replace(nngp=scale(k.nngp), ntk=scale(k.ntk),
                       cov1=scale(k.cov1), cov2=scale(k.cov2))
    n = len(k.shape1)
    b, c = k.batch_axis % n, k.channel_axis % n
    ic = [a % n for a in in_c]
    ib = [a % n for a in in_b]
    oc = [a % other.ndim for a in o_c]
    ob = [a % other.ndim for a in o_b]
    if b in ic + ib or c in ic + ib:
      raise NotImplementedError(
          f"DotGeneral: contracting or batching the batch axis {b} or the "
          f"channel axis {c} of inputs {tuple(k.shape1)} is not supported.")
    if k.diagonal_spatial:
      raise ValueError("DotGeneral: needs full spatial covariances.")
    letters = iter("abdefghijklmopqrstuvwxyz")
    spatial = spatial_axes(n, b, c)
    u = {a: next(letters) for a in spatial}
    p = {a: next(letters) for a in spatial}
    o_free = [j for j in range(other.ndim) if j not in oc + ob]
    f_l = {j: next(letters).upper() for j in o_free}
    f_r = {j: next(letters).upper() for j in o_free}

    def other_sub(side, free):
      sub = [""] * other.ndim
      for a, j in zip(ic + ib, oc + ob):
        sub[j] = side[a]
      for j in o_free:
        sub[j] = free[j]
      return "".join(sub)

    in_free = [a for a in range(n) if a not in ic + ib]
    out_axes = ([("in", a) for a in ib] +
                ([("o", j) for j in o_free] + [("in", a) for a in in_free]
                 if is_lhs else
                 [("in", a) for a in in_free] + [("o", j) for j in o_free]))
    out_sp = [t for t in out_axes if t not in (("in", b), ("in", c))]
    out_sub = "".join(
        (u[a] + p[a]) if kind == "in" else (f_l[a] + f_r[a])
        for kind, a in out_sp)
    k_sub = "".join(u[a] + p[a] for a in spatial)

    def contract(mat, bl):
      if mat is None or jnp.ndim(mat) == 0:
        return mat
      return jnp.einsum(f"{other_sub(u, f_l)},{bl}{k_sub},"
                        f"{other_sub(p, f_r)}->{bl}{out_sub}",
                        other.astype(mat.dtype), mat,
                        other.astype(mat.dtype),
                        precision=jax.lax.Precision.HIGHEST)

    cb = "n" if k.diagonal_batch else "nN"
    return k.replace(
        nngp=contract(k.nngp, "nN"), ntk=contract(k.ntk, "nN"),
        cov1=contract(k.cov1, cb), cov2=contract(k.cov2, cb),
        batch_axis=out_axes.index(("in", b)),
        channel_axis=out_axes.index(("in", c)))

  return init_fn, apply_fn, rule, Requirements(
      diagonal_spatial_ok=other.ndim == 0, packable=other.ndim == 0,
      blocker=None if other.ndim == 0 else "DotGeneral",
      batch_axis=batch_axis, channel_axis=channel_axis)
