"""Shared pieces of the empirical kernels: the implementation enum, axes,
kwargs splitting, ``vmap_axes`` canonicalization and the output contraction.

Output layout (as neural-tangents). For an output leaf ``f(x)`` of shape
``(A0, A1, ...)`` the kernel has, for each axis ``i`` in order: nothing if
``i`` is in ``trace_axes`` (summed, then divided by the traced size), one axis
``Ai`` if ``i`` is in ``diagonal_axes``, else the pair ``(Ai, Ai')`` (axes of
``f(x1)`` and ``f(x2)`` zipped). E.g. logits ``(N, K)`` with the defaults
``trace_axes=(-1,)`` give ``(N1, N2)``.
"""
from __future__ import annotations

import enum
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import tree_map

from ..axes import Axes, canonical_axes
from ..kernel import same_inputs

__all__ = ["NtkImplementation", "DEFAULT_NTK_IMPLEMENTATION",
           "DEFAULT_NTK_J_RULES", "DEFAULT_NTK_S_RULES", "DEFAULT_NTK_FWD",
           "canonical_implementation", "output_ids", "contract",
           "split_kwargs", "check_params", "check_trace_diagonal", "VmapSpec",
           "canonical_vmap", "vmap_in_axes", "per_sample_fn", "all_none",
           "trace_size", "shape_dtype"]


class NtkImplementation(enum.IntEnum):
  """How the finite-width NTK ``J(x1) J(x2)^T`` is computed.

  Attributes:
    AUTO: (``0``) compiles the other three for the given shapes and runs the
      one with the fewest estimated FLOPs (XLA cost analysis; a short timing
      where the estimate is unavailable). Works on CPU, GPU and TPU; ask
      ``ntk_fn.method_for(x1, x2, params)`` (or ``ntk_fn.choice``, its last
      call) what it picks.
    JACOBIAN_CONTRACTION: (``1``, the default) both Jacobians by reverse mode,
      then contracted. Best for small outputs and expensive forward passes
      (CNNs); simplest and most reliable.
    NTK_VECTOR_PRODUCTS: (``2``) the NTK as NTK-vector products (one VJP and
      one JVP per output of ``f(x1)``); no Jacobian contraction. Best for cheap
      forward passes relative to the parameter count (fully connected nets)
      and wide outputs.
    STRUCTURED_DERIVATIVES: (``3``) traces ``f`` to a jaxpr and contracts the
      per-primitive Jacobian structure directly (e.g. for ``y = x W`` uses
      ``(x1 x2^T) * (df1/dy df2/dy^T)``, never forming ``df/dW``). Usually the
      fastest, by orders of magnitude on fully connected nets.
  """
  AUTO = 0
  JACOBIAN_CONTRACTION = 1
  NTK_VECTOR_PRODUCTS = 2
  STRUCTURED_DERIVATIVES = 3


DEFAULT_NTK_IMPLEMENTATION = NtkImplementation.JACOBIAN_CONTRACTION
# Flags of neural-tangents' structured derivatives, accepted for compatibility.
DEFAULT_NTK_J_RULES: bool = True
DEFAULT_NTK_S_RULES: bool = True
DEFAULT_NTK_FWD: Optional[bool] = None


def canonical_implementation(implementation) -> NtkImplementation:
  """`NtkImplementation` from an enum value or an int ``0..3``."""
  try:
    if isinstance(implementation, bool):
      raise ValueError
    return NtkImplementation(implementation)
  except (ValueError, TypeError):
    raise ValueError(
        f"`implementation` must be an NtkImplementation or an int in "
        f"{[int(i) for i in NtkImplementation]} "
        f"({', '.join(i.name for i in NtkImplementation)}); got "
        f"{implementation!r}.") from None


def all_none(x) -> bool:
  return all(leaf is None for leaf in jax.tree_util.tree_leaves(
      x, is_leaf=lambda v: v is None))


def output_ids(ndim: int, trace_axes: Sequence[int],
               diagonal_axes: Sequence[int]):
  """Einsum ids of the output axes of ``f(x1)``, ``f(x2)`` and the kernel.

  Traced and diagonal axes share one id between the two sides; the kernel
  keeps non-traced axes in order, zipped (``i, i'``) unless diagonal.
  """
  ids1 = list(range(ndim))
  ids2 = [i if (i in trace_axes or i in diagonal_axes) else ndim + i
          for i in range(ndim)]
  out = []
  for i in range(ndim):
    if i in trace_axes:
      continue
    out += [i] if i in diagonal_axes else [i, ndim + i]
  return ids1, ids2, out


def trace_size(shape: Sequence[int], trace_axes: Sequence[int]) -> int:
  return int(np.prod([shape[a] for a in trace_axes], dtype=np.int64))


def contract(a: jax.Array, b: jax.Array, ndim: int, trace_axes: Axes,
             diagonal_axes: Axes) -> jax.Array:
  """``sum_p a[o1, p] b[o2, p]`` over the trailing (parameter) axes ``p``.

  ``a``: ``fx1.shape + P``, ``b``: ``fx2.shape + P``. The first ``ndim`` axes
  are output axes, contracted as in the module docstring; the result is
  divided by the traced size.
  """
  trace_axes = canonical_axes(trace_axes, ndim, "trace_axes")
  diagonal_axes = canonical_axes(diagonal_axes, ndim, "diagonal_axes")
  check_trace_diagonal(a.shape[:ndim], b.shape[:ndim], trace_axes,
                       diagonal_axes)
  size = trace_size(a.shape, trace_axes)
  if not diagonal_axes:
    return _gram(a, b, ndim, trace_axes) / size
  ids1, ids2, out = output_ids(ndim, trace_axes, diagonal_axes)
  a = a.reshape(a.shape[:ndim] + (-1,))
  b = b.reshape(b.shape[:ndim] + (-1,))
  extra = [2 * ndim]
  res = jnp.einsum(a, ids1 + extra, b, ids2 + extra, out)
  return res / size


def _gram(a: jax.Array, b: jax.Array, ndim: int, trace_axes) -> jax.Array:
  """``contract`` without diagonal axes, as one 2-D ``A^T B``.

  Parameter and traced axes are moved to the front and flattened into the
  contracting axis ``K``: ``A (K, M)``, ``B (K, N)``. XLA's CPU dot is fast
  on this form and slow when ``K`` is the minor axis of a ``(M, K)`` operand
  with small ``M`` (a Jacobian ``(samples, params)``); the transposes fuse
  into the Jacobian's producers.
  """
  free = [i for i in range(ndim) if i not in trace_axes]
  front = list(range(ndim, a.ndim)) + list(trace_axes)
  m_shape = [a.shape[i] for i in free]
  n_shape = [b.shape[i] for i in free]
  a2 = jnp.transpose(a, front + free).reshape(-1, int(np.prod(m_shape)))
  b2 = jnp.transpose(b, front + free).reshape(-1, int(np.prod(n_shape)))
  res = jax.lax.dot_general(a2, b2, (((0,), (0,)), ((), ())))
  res = res.reshape(m_shape + n_shape)
  k = len(free)  # zip: (i, i') per free output axis
  return jnp.transpose(res, [j for i in range(k) for j in (i, k + i)])


def check_trace_diagonal(shape1, shape2, trace_axes, diagonal_axes) -> None:
  for a in tuple(trace_axes) + tuple(diagonal_axes):
    if shape1[a] != shape2[a]:
      raise ValueError(
          f"f(x1) of shape {tuple(shape1)} and f(x2) of shape "
          f"{tuple(shape2)} must match on trace_axes {tuple(trace_axes)} "
          f"and diagonal_axes {tuple(diagonal_axes)}.")


# --- kwargs: rng and pairs split between x1 and x2 ---------------------------


def _split_key(key, x1, x2):
  # Same inputs must see the same dropout mask, different inputs different
  # ones (as neural-tangents).
  if key is None or all_none(x2):
    return key, key
  if isinstance(key, tuple) and len(key) == 2:
    key1, key2 = key
    other = jnp.where(same_inputs(key1, key2), jax.random.fold_in(key2, 1), key2)
    return key1, jnp.where(same_inputs(x1, x2), key1, other)
  if isinstance(key, (jax.Array, np.ndarray)):
    return key, jnp.where(same_inputs(x1, x2), key, jax.random.fold_in(key, 1))
  raise TypeError(f"`rng` must be a PRNG key, a pair of keys or None; got "
                  f"{type(key).__name__}.")


def split_kwargs(kwargs: dict, x1=None, x2=None) -> tuple[dict, dict]:
  """Keyword arguments for ``f(x1)`` and ``f(x2)``.

  ``rng`` is split (equal keys iff ``x1 == x2``); a pair ``(a, b)`` gives
  ``a`` to ``x1`` and ``b`` to ``x2``; anything else goes to both.
  """
  kw1, kw2 = {}, {}
  for k, v in kwargs.items():
    if k == "rng" and not all_none(x2):
      kw1[k], kw2[k] = _split_key(v, x1, x2)
    elif isinstance(v, tuple) and len(v) == 2:
      kw1[k], kw2[k] = v
    else:
      kw1[k] = kw2[k] = v
  return kw1, kw2


# --- vmap_axes -----------------------------------------------------------------


class VmapSpec(NamedTuple):
  """Canonical ``vmap_axes``: per-leaf non-negative axes (or None)."""
  x_axis: Any    # tree like x (ints) or None
  fx_axis: Any   # tree like f(x) (ints) or None
  kw_axes: dict  # {name: tree like kwargs[name]}

  @property
  def active(self) -> bool:
    return not (all_none(self.x_axis) and all_none(self.fx_axis)
                and all_none(self.kw_axes))


def _is_sequence(x) -> bool:
  return type(x) in (list, tuple)


def _sequences_like(axis, tree):
  """``axis`` with each list/tuple that lines up with a list/tuple of ``tree``
  (same length) given that one's type: ``(0, 0)`` fits outputs ``[a, b]``.

  A sequence of axes reads the same as a list or a tuple (as in
  neural-tangents, where `parallel` returns its input's container type, so
  the axes a user writes for the inputs fit the outputs too)."""
  if _is_sequence(axis) and _is_sequence(tree) and len(axis) == len(tree):
    return type(tree)(_sequences_like(a, t) for a, t in zip(axis, tree))
  if isinstance(axis, dict) and isinstance(tree, dict):
    return {k: _sequences_like(v, tree[k]) if k in tree else v
            for k, v in axis.items()}
  return axis


def _broadcast_axis(axis, tree, what: str):
  if axis is None:
    return None
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  if isinstance(axis, int):
    return jax.tree_util.tree_unflatten(treedef, [axis] * len(leaves))
  axis = _sequences_like(axis, tree)
  try:
    return tree_map(lambda a, _: a, axis, tree,
                    is_leaf=lambda v: v is None)
  except (ValueError, TypeError) as e:
    raise ValueError(
        f"vmap_axes: {what} axes {axis!r} do not match the structure of "
        f"{what} ({treedef}).") from e


def canonical_vmap(vmap_axes, x, fx, kwargs: dict) -> VmapSpec:
  """Checks ``vmap_axes`` against ``x``, ``f(x)`` (shapes) and ``kwargs``.

  ``vmap_axes`` is ``None``, an axis (tree) used for inputs and outputs, or
  a triple ``(in_axes, out_axes, kwargs_axes)``.
  """
  if vmap_axes is None:
    return VmapSpec(None, None, {})
  if isinstance(vmap_axes, tuple) and len(vmap_axes) == 3 and (
      isinstance(vmap_axes[2], dict) or vmap_axes[2] is None):
    x_axis, fx_axis, kw_axes = vmap_axes
  else:
    x_axis, fx_axis, kw_axes = vmap_axes, vmap_axes, {}
  kw_axes = dict(kw_axes or {})
  for k in kw_axes:
    if k not in kwargs:
      raise ValueError(f"vmap_axes: kwargs_axes names {k!r}, which is not a "
                       f"keyword argument of f (got {sorted(kwargs)}).")
  x_axis = _broadcast_axis(x_axis, x, "inputs")
  fx_axis = _broadcast_axis(fx_axis, fx, "outputs")
  kw_axes = {k: _broadcast_axis(a, kwargs[k], f"kwarg {k!r}")
             for k, a in kw_axes.items()}

  sizes = set()

  def canon(axis, leaf, what):
    if axis is None:
      return None
    shape = jnp.shape(leaf)
    if not isinstance(axis, (int, np.integer)) or not (
        -len(shape) <= axis < len(shape)):
      raise ValueError(f"vmap_axes: {what} axis {axis!r} is invalid for an "
                       f"array of shape {tuple(shape)}.")
    sizes.add(shape[axis])
    return int(axis) % len(shape)

  x_axis = None if x_axis is None else tree_map(
      lambda a, l: canon(a, l, "input"), x_axis, x)
  fx_axis = None if fx_axis is None else tree_map(
      lambda a, l: canon(a, l, "output"), fx_axis, fx)
  kw_axes = {k: None if a is None else tree_map(
      lambda a_, l: canon(a_, l, f"kwarg {k!r}"), a, kwargs[k])
             for k, a in kw_axes.items()}
  if len(sizes) > 1:
    raise ValueError(
        f"vmap_axes {vmap_axes!r}: inputs, outputs and kwargs must have the "
        f"same size along their vmap axes; got sizes {sorted(sizes)} (input "
        f"shapes {tree_map(jnp.shape, x)}, output shapes "
        f"{tree_map(jnp.shape, fx)}).")
  if (x_axis is None) != (fx_axis is None):
    raise ValueError(f"vmap_axes {vmap_axes!r}: in_axes and out_axes must be "
                     f"both None or both set.")
  return VmapSpec(x_axis, fx_axis, kw_axes)


def _expand(tree, axes):
  if axes is None:
    return tree
  return tree_map(lambda v, a: v if a is None else jnp.expand_dims(v, a),
                  tree, axes, is_leaf=lambda v: v is None)


def _squeeze(tree, axes):
  if axes is None:
    return tree
  return tree_map(lambda v, a: v if a is None else jnp.squeeze(v, a),
                  tree, axes, is_leaf=lambda v: v is None)


def per_sample_fn(f: Callable, spec: VmapSpec, keys: Sequence[str]):
  """``g(params, x_i, *kw_i)``: ``f`` on one slice along the vmap axes.

  The slice is re-expanded to a batch of one before calling ``f`` and the
  output squeezed, so ``f`` sees the shapes it expects.
  """
  def g(params, x, *args):
    kw = {k: _expand(v, spec.kw_axes.get(k)) for k, v in zip(keys, args)}
    return _squeeze(f(params, _expand(x, spec.x_axis), **kw), spec.fx_axis)
  return g


def vmap_in_axes(spec: VmapSpec, keys: Sequence[str]) -> list:
  return [spec.x_axis] + [spec.kw_axes.get(k) for k in keys]


def check_params(f: Callable, params, x, kwargs: dict):
  """``jax.eval_shape(f, params, x)``, turning failures into a clear error."""
  try:
    return jax.eval_shape(lambda p, x_: f(p, x_, **kwargs), params, x)
  except Exception as e:  # noqa: BLE001 -- re-raised with context
    raise ValueError(
        f"Calling f(params, x) failed: params (shapes "
        f"{tree_map(jnp.shape, params)}) do not seem to match f for inputs "
        f"of shape {tree_map(jnp.shape, x)}: {type(e).__name__}: {e}") from e


def shape_dtype(a) -> Optional[jax.ShapeDtypeStruct]:
  """The abstract shape and dtype of an array(-like) ``a``; None stays None."""
  if a is None:
    return None
  return jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a))
