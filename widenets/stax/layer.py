"""The layer protocol: ``(init_fn, apply_fn, kernel_fn)`` triples.

A layer's kernel rule is a pure function ``Kernel -> Kernel`` (or a list of
kernels for branching layers). `KernelFn` wraps it into the public
``kernel_fn(x1, x2=None, get=None, **kwargs)`` / ``kernel_fn(kernel)``.

Requirements algebra. Each layer states, in `Requirements`, what it can work
with; `serial` and `parallel` compose them, and the network-level result picks
the cheapest covariance layout that still gives exact outputs:

* ``diagonal_spatial``: covariances keep only ``x == x'`` spatial entries. A
  pointwise-in-space layer (Dense, Conv's diagonal part, activations) maps
  diagonal to diagonal; a readout (``Flatten``) consumes only the diagonal; a
  spatial-mixing layer (pooling, attention) needs all pairs. The network runs
  diagonal iff a readout removes the spatial axes and every layer before it
  accepts diagonals.
* ``diagonal_batch``: ``cov1`` keeps only the sample diagonal (all layers here
  accept it; a layer mixing samples would not).
* ``packable``: output pair ``(i, j)`` depends only on input pair ``(i, j)``, so
  ``x2=None`` can run on the ``i <= j`` pairs alone and be mirrored.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from .._memory import release_free_memory
from .._tracing import all_concrete
from ..kernel import Kernel, check_get, get_from
from . import chunking, covariance

__all__ = ["Requirements", "KernelFn", "layer", "inputs_to_kernel",
           "output_shape", "is_kernel_tree"]


@dataclasses.dataclass(frozen=True)
class Requirements:
  """What a layer (or a network) can compute with.

  Attributes:
    diagonal_spatial_ok: accepts spatially diagonal covariances.
    readout: its outputs have no spatial axes left.
    diagonal_batch_ok: accepts sample-diagonal ``cov1``/``cov2``.
    packable: pairs ``(i, j)`` are independent (``x2=None`` at half cost).
    blocker: name of the first layer that needs full spatial covariances.
    batch_axis, channel_axis: the input layout the first layer needs.
  """
  diagonal_spatial_ok: bool = True
  readout: bool = False
  diagonal_batch_ok: bool = True
  packable: bool = True
  blocker: Optional[str] = None
  batch_axis: Optional[int] = None
  channel_axis: Optional[int] = None

  def then(self, other: "Requirements") -> "Requirements":
    """Requirements of ``other(self(x))``."""
    spatial_ok = self.diagonal_spatial_ok and (
        self.readout or other.diagonal_spatial_ok)
    blocker = self.blocker if not self.diagonal_spatial_ok else (
        None if self.readout else other.blocker)
    return Requirements(
        diagonal_spatial_ok=spatial_ok,
        readout=self.readout or other.readout,
        diagonal_batch_ok=self.diagonal_batch_ok and other.diagonal_batch_ok,
        packable=self.packable and other.packable,
        blocker=blocker,
        batch_axis=self.batch_axis,
        channel_axis=self.channel_axis)

  def both(self, other: "Requirements") -> "Requirements":
    """Requirements of two parallel branches."""
    return Requirements(
        diagonal_spatial_ok=self.diagonal_spatial_ok and
        other.diagonal_spatial_ok,
        readout=self.readout and other.readout,
        diagonal_batch_ok=self.diagonal_batch_ok and other.diagonal_batch_ok,
        packable=self.packable and other.packable,
        blocker=self.blocker or other.blocker,
        batch_axis=self.batch_axis if self.batch_axis is not None
        else other.batch_axis,
        channel_axis=self.channel_axis if self.channel_axis is not None
        else other.channel_axis)

  @property
  def default_diagonal_spatial(self) -> bool:
    return self.diagonal_spatial_ok and self.readout


def is_kernel_tree(x) -> bool:
  leaves = jax.tree_util.tree_leaves(
      x, is_leaf=lambda l: isinstance(l, Kernel))
  return bool(leaves) and all(isinstance(l, Kernel) for l in leaves)


@functools.lru_cache(maxsize=4096)
def _output_shape_cached(init_fn, in_shape):
  captured = {}

  def f(key):
    out, params = init_fn(key, in_shape)
    captured["shape"] = out
    return params

  jax.eval_shape(f, jax.random.PRNGKey(0))
  return captured["shape"]


def _freeze_shape(s):
  if isinstance(s, (list, tuple)) and s and isinstance(s[0], (list, tuple)):
    return tuple(_freeze_shape(x) for x in s)
  return tuple(s)


def output_shape(init_fn, in_shape):
  """The output shape ``init_fn`` reports for ``in_shape``, without compute."""
  return _output_shape_cached(init_fn, _freeze_shape(in_shape))


# Keyword arguments that steer the whole computation rather than a layer.
_CONTROL_KWARGS = ("diagonal_batch", "diagonal_spatial", "mask_constant",
                   "batch_axis", "channel_axis")


class KernelFn:
  """Public ``kernel_fn`` of a layer or network.

  ``kernel_fn(x1, x2=None, get=None, **kwargs)`` on inputs, or
  ``kernel_fn(kernel, **kwargs)`` on a `Kernel` from a previous layer.

  Args of the call:
    x1: ``(N1, ...)`` inputs (batch axis first unless the first layer says
      otherwise; at least a batch and a feature axis), or a `Kernel`.
    x2: ``(N2, ...)`` inputs or ``None`` (meaning ``x2 = x1``; only the
      ``i <= j`` pairs are computed).
    get: ``'nngp'``, ``'ntk'``, any `Kernel` field, a tuple of them (returns a
      namedtuple in that order) or ``None`` (the whole `Kernel`).
    diagonal_batch, diagonal_spatial: override the covariance layout.
    mask_constant: inputs equal to it are masked (variable-length inputs).
    **kwargs: passed to every layer (e.g. ``pattern=(p1, p2)``, ``rng``).
  """

  def __init__(self, rule: Callable, reqs: Requirements, name: str,
               init_fn: Optional[Callable] = None, set_shapes: bool = True,
               mask_rule: Any = None, masks: bool = False):
    self.rule = rule
    # Primitive layers move masks (`masking.propagate`); combinators don't.
    self._masks = masks
    self._mask_rule = mask_rule
    self.reqs = reqs
    self.name = name
    self.__name__ = name
    self._init_fn = init_fn
    self._set_shapes = set_shapes and init_fn is not None
    self._jitted = jax.jit(self._compute, static_argnums=(3,))
    # Layer names of the finiteness flags each compiled call returns.
    self._flag_names: dict = {}
    # (config, input avals) already compiled ahead of their first call.
    self._compiled: set = set()

  def __repr__(self) -> str:
    return f"<kernel_fn of {self.name}>"

  # -- Kernel -> Kernel ----------------------------------------------------
  def apply(self, k, **kwargs):
    """Runs the rule on a `Kernel` (or list of them) and sets output shapes."""
    self._check_input(k)
    out = self.rule(k, **kwargs)
    if self._set_shapes:
      out = self._with_shapes(k, out)
    if self._masks and _has_masks(k):
      from . import masking
      out = masking.propagate(k, out, self._mask_rule)
    return out

  def _check_input(self, k) -> None:
    for kk in jax.tree_util.tree_leaves(
        k, is_leaf=lambda l: isinstance(l, Kernel)):
      if kk.diagonal_spatial and not self.reqs.diagonal_spatial_ok:
        raise ValueError(
            f"{self.name} needs covariances between all pairs of spatial "
            f"positions, but got a kernel with diagonal_spatial=True "
            f"(nngp shape {tuple(kk.nngp.shape)}). Call kernel_fn with "
            f"diagonal_spatial=False.")
      if kk.diagonal_batch and not self.reqs.diagonal_batch_ok:
        raise ValueError(
            f"{self.name} needs full sample-sample covariances; call "
            f"kernel_fn with diagonal_batch=False.")

  def _with_shapes(self, k_in, k_out):
    if isinstance(k_in, Kernel):
      s1, s2 = k_in.shape1, k_in.shape2
    else:
      s1 = [kk.shape1 for kk in k_in]
      s2 = [kk.shape2 for kk in k_in]
    o1 = output_shape(self._init_fn, s1)
    o2 = output_shape(self._init_fn, s2)
    if isinstance(k_out, Kernel):
      return k_out.replace(shape1=tuple(o1), shape2=tuple(o2))
    return [kk.replace(shape1=tuple(a), shape2=tuple(b))
            for kk, a, b in zip(k_out, o1, o2)]

  # -- public call -----------------------------------------------------------
  def __call__(self, x1_or_kernel, x2=None, get=None, **kwargs):
    get_t = check_get(get)
    if is_kernel_tree(x1_or_kernel):
      if x2 is not None:
        raise ValueError(f"{self.name}: pass either a Kernel or inputs "
                         f"(x1, x2), not a Kernel and x2.")
      kw = {k: v for k, v in kwargs.items()
            if k not in _CONTROL_KWARGS or v is not None}
      return get_from(self.apply(x1_or_kernel, **kw), get)

    x1 = x1_or_kernel
    if x2 is not None and not jax.tree_util.tree_leaves(x2):
      x2 = None  # a structure of Nones, e.g. (None, None): x2 = x1
    _validate_inputs(self.name, x1, x2, self.reqs.batch_axis or 0)
    diagonal_batch = kwargs.pop("diagonal_batch", None)
    diagonal_spatial = kwargs.pop("diagonal_spatial", None)
    mask_constant = kwargs.pop("mask_constant", None)
    if mask_constant is not None and not isinstance(mask_constant,
                                                    (int, float)):
      # An array (perhaps traced under the caller's jit): an argument of the
      # compiled call, not part of its static configuration.
      kwargs[_MASK_KEY] = jnp.asarray(mask_constant)
      mask_constant = _MASK_KEY
    if diagonal_spatial and not self.reqs.diagonal_spatial_ok:
      raise ValueError(
          f"{self.name}: diagonal_spatial=True was asked for, but layer "
          f"{self.reqs.blocker or '?'} needs covariances between all pairs "
          f"of spatial positions. Use diagonal_spatial=False (the default).")
    if diagonal_batch and not self.reqs.diagonal_batch_ok:
      raise ValueError(f"{self.name}: diagonal_batch=True was asked for, but "
                       f"the network needs full sample covariances.")
    if diagonal_spatial is None:
      diagonal_spatial = self.reqs.default_diagonal_spatial
    if diagonal_batch is None:
      diagonal_batch = self.reqs.diagonal_batch_ok

    static, dynamic = {}, {}
    for key, val in kwargs.items():
      leaves = jax.tree_util.tree_leaves(val)
      if leaves and all(isinstance(l, (jax.Array, np.ndarray)) for l in leaves):
        dynamic[key] = val
      else:
        static[key] = val
    packable = (x2 is None and self.reqs.packable and diagonal_batch and
                mask_constant is None and not dynamic and
                self.reqs.batch_axis in (None, 0) and
                isinstance(x1, (jax.Array, np.ndarray)) and x1.shape[0] > 1)
    row_chunk = None
    if (x2 is not None and self.reqs.packable and diagonal_batch and
        mask_constant is None and not dynamic and
        self.reqs.batch_axis in (None, 0) and
        all(isinstance(x, (jax.Array, np.ndarray)) for x in (x1, x2))):
      row_chunk = chunking.choose_rows(
          x1.shape[0], x2.shape[0] * self._pair_entries(x1, diagonal_spatial),
          jnp.dtype(jnp.result_type(x1.dtype, float)).itemsize)
    config = dict(
        get=get_t, diagonal_batch=bool(diagonal_batch),
        diagonal_spatial=bool(diagonal_spatial), mask_constant=mask_constant,
        packable=bool(packable), row_chunk=row_chunk,
        static=tuple(sorted(static.items())))
    key = _Hashable(config)
    args = (x1, x2, dynamic)
    if all_concrete(args):
      signature = (key, jax.tree_util.tree_structure(args),
                   tuple((np.shape(a), str(getattr(a, "dtype", type(a))))
                         for a in jax.tree_util.tree_leaves(args)))
      new = signature not in self._compiled
      if new:
        # Compile first and hand the compiler's freed memory back before the
        # call allocates its buffers (see `_memory`); jit reuses the result.
        self._jitted.lower(x1, x2, dynamic, key).compile()
        self._compiled.add(signature)
      if new or _output_bytes(x1, x2) >= _TRIM_BYTES:
        release_free_memory()
    out, flags, inputs_ok, out_ok = self._jitted(x1, x2, dynamic, key)
    for label, x, ok in (("x1", x1, inputs_ok[0]), ("x2", x2, inputs_ok[1])):
      if _all_true([ok]) is False:
        shape = tuple(jax.tree_util.tree_leaves(x)[0].shape)
        raise ValueError(f"{self.name}: {label} of shape {shape} contains "
                         f"NaN or infinite values.")
    _raise_on_overflow(self.name, self._flag_names.get(key, ()), flags,
                       out_ok)
    return get_from(out, get)

  def _pair_entries(self, x1, diagonal_spatial: bool) -> int:
    """Entries of ``nngp[i, j]`` at the inputs (the spatial covariances)."""
    channel = -1 if self.reqs.channel_axis is None else self.reqs.channel_axis
    spatial = [d for i, d in enumerate(x1.shape)
               if i not in (0, channel % x1.ndim)]
    size = int(np.prod(spatial)) if spatial else 1
    return size if diagonal_spatial else size * size

  def _compute(self, x1, x2, dynamic, config):
    c = dict(config.value)
    dynamic = dict(dynamic)
    if c["mask_constant"] == _MASK_KEY:
      c["mask_constant"] = dynamic.pop(_MASK_KEY)
    get = c["get"]
    compute_ntk = get is None or "ntk" in get
    reqs = self.reqs

    def to_kernel(a, b):
      return inputs_to_kernel(
          a, b, diagonal_batch=c["diagonal_batch"],
          diagonal_spatial=c["diagonal_spatial"], compute_ntk=compute_ntk,
          batch_axis=0 if reqs.batch_axis is None else reqs.batch_axis,
          channel_axis=-1 if reqs.channel_axis is None else reqs.channel_axis,
          mask_constant=c["mask_constant"])

    # Finiteness of inputs and outputs is checked inside the compiled call
    # (fused reductions) rather than by eager passes around it.
    inputs_ok = (_all_finite(x1, c["mask_constant"]),
                 _all_finite(x2, c["mask_constant"]))

    n = x1.shape[0] if c["packable"] else None

    def evaluate(k):
      with collect_finite_flags() as recorded:
        out = self.apply(k, **dict(c["static"]), **dynamic)
      self._flag_names[config] = tuple(name for name, _ in recorded)
      out = jax.tree_util.tree_map(finish, out,
                                   is_leaf=lambda l: isinstance(l, Kernel))
      return out, [flag for _, flag in recorded]

    def finish(kk):
      if kk.packed:
        kk = covariance.unpack(kk)
        shape = list(kk.shape1)
        shape[kk.batch_axis] = n
        kk = kk.replace(
            nngp=kk.nngp[:n, :n], cov1=kk.cov1[:n],
            ntk=kk.ntk if kk.ntk is None or jnp.ndim(kk.ntk) == 0
            else kk.ntk[:n, :n], shape1=tuple(shape), shape2=tuple(shape))
      if kk.ntk is not None and jnp.ndim(kk.ntk) == 0:
        kk = kk.replace(ntk=jnp.broadcast_to(kk.ntk, kk.nngp.shape))
      if get is not None:
        # Drop what was not asked for, so XLA does not compute it.
        drop = {f: None for f in ("nngp", "ntk", "cov1", "cov2")
                if f not in get}
        kk = kk.replace(**drop)
      return kk

    if c["row_chunk"]:
      # Whole network on row blocks of x1 (see `chunking`).
      flag = (same_inputs(x1, x2) if np.shape(x1) == np.shape(x2)
              else False)

      def block(x1_rows, offset):
        k = inputs_to_kernel(
            x1_rows, x2, diagonal_batch=True,
            diagonal_spatial=c["diagonal_spatial"], compute_ntk=compute_ntk,
            channel_axis=-1 if reqs.channel_axis is None
            else reqs.channel_axis, x1_is_x2=flag, row_offset=offset)
        with chunking.row_offset(offset):
          out, flags = evaluate(k)
        return out, flags, _all_finite(out)

      out, flags, out_ok = chunking.map_rows(block, x1, c["row_chunk"])
      return out, flags, inputs_ok, out_ok

    if c["packable"]:
      # Pad to whole blocks with copies of the first sample (not zeros, so no
      # layer sees a degenerate zero variance); trimmed in `finish`.
      n_blocks, b = covariance.block_layout(n)
      x1 = jnp.concatenate([x1, jnp.repeat(x1[:1], n_blocks * b - n, 0)])
    if x2 is None:
      k = jax.tree_util.tree_map(lambda a: to_kernel(a, None), x1)
    else:
      k = jax.tree_util.tree_map(to_kernel, x1, x2)
    if c["packable"]:
      k = covariance.pack(k)
    out, flags = evaluate(k)
    return out, flags, inputs_ok, _all_finite(out)

# The key under which an array ``mask_constant`` travels with the dynamic
# arguments of the compiled call.
_MASK_KEY = "__mask_constant__"

# Calls whose kernels are smaller than this skip the heap trim: many small
# calls (batching in small blocks) would each pay for it, for little memory.
_TRIM_BYTES = 1 << 22


def _output_bytes(x1, x2) -> int:
  """Bytes of one (N1, N2) float32 kernel of these inputs (a lower bound)."""
  a = jax.tree_util.tree_leaves(x1)[0]
  b = a if x2 is None else jax.tree_util.tree_leaves(x2)[0]
  return 4 * int(np.shape(a)[0]) * int(np.shape(b)[0])


def _has_masks(k) -> bool:
  return any(kk.mask1 is not None or kk.mask2 is not None
             for kk in jax.tree_util.tree_leaves(
                 k, is_leaf=lambda l: isinstance(l, Kernel)))


class KernelOverflowError(FloatingPointError):
  """A kernel left the floating-point range (e.g. float32 in a deep net with
  large ``W_std``)."""


_FLAG_COLLECTORS: list = []


class collect_finite_flags:
  """Collects ``(layer name, all-finite flag)`` pairs recorded while tracing.

  Layers whose kernels can grow without bound call `record_finite`; the flags
  come back as outputs of the one compiled call (no host callbacks inside the
  computation, which would split XLA's fusions), and `KernelFn.__call__`
  names the first layer that overflowed.
  """

  def __enter__(self):
    self.recorded = []
    _FLAG_COLLECTORS.append(self.recorded)
    return self.recorded

  def __exit__(self, *exc):
    _FLAG_COLLECTORS.pop()


def record_flag(name: str, flag) -> None:
  """Records a precomputed all-finite ``flag`` (see `record_finite`)."""
  if _FLAG_COLLECTORS:
    _FLAG_COLLECTORS[-1].append((name, flag))


def record_finite(name: str, *arrays) -> None:
  """Records whether ``arrays`` are all finite, for the error naming ``name``.

  Outside a `KernelFn` call (e.g. ``kernel_fn(kernel)``) it does nothing.
  """
  if not _FLAG_COLLECTORS:
    return
  flag = jnp.asarray(True)
  for a in arrays:
    if a is not None:
      flag = flag & jnp.all(jnp.isfinite(a))
  _FLAG_COLLECTORS[-1].append((name, flag))


def _all_true(flags) -> Optional[bool]:
  try:
    return all(bool(f) for f in flags)
  except (jax.errors.ConcretizationTypeError,
          jax.errors.TracerBoolConversionError):
    return None  # traced under an outer jit: nothing concrete to check


def _all_finite(tree, mask_constant=None):
  """One boolean: every inexact leaf of ``tree`` is finite (masked entries
  excepted)."""
  ok = jnp.asarray(True)
  for leaf in jax.tree_util.tree_leaves(tree):
    if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact):
      if mask_constant is not None:
        leaf = _masked(leaf, mask_constant)[0]
      ok = ok & jnp.all(jnp.isfinite(leaf))
  return ok


def _raise_on_overflow(network: str, names, flags, out_ok) -> None:
  ok = _all_true(list(flags) + [out_ok])
  if ok is None or ok:
    return
  bad = [n for n, f in zip(names, flags) if not bool(f)] or [network]
  dtype = jnp.result_type(float)
  hint = ("Enable float64 with jax.config.update('jax_enable_x64', True) "
          "before building inputs, or reduce W_std / depth."
          if jnp.finfo(dtype).bits <= 32 else "Reduce W_std / depth.")
  raise KernelOverflowError(
      f"{bad[0]}: the kernel overflowed {jnp.dtype(dtype).name} (infinite or "
      f"NaN variances or NTK; e.g. a deep network with large W_std, whose "
      f"kernel grows geometrically with depth). {hint}")


class _Hashable:
  """Static jit argument wrapper for a dict of hashable config values."""

  def __init__(self, value: dict):
    self.value = value
    self._key = tuple(sorted((k, freeze_static(v)) for k, v in value.items()))

  def __hash__(self):
    return hash(self._key)

  def __eq__(self, other):
    return isinstance(other, _Hashable) and self._key == other._key


def freeze_static(v):
  """A hashable stand-in for a (nested) static argument value."""
  if isinstance(v, dict):
    return tuple(sorted((k, freeze_static(x)) for k, x in v.items()))
  if isinstance(v, (list, tuple)):
    return tuple(freeze_static(x) for x in v)
  try:
    hash(v)
    return v
  except TypeError:
    return repr(v)


def _validate_inputs(name: str, x1, x2, batch_axis: int = 0) -> None:
  """Static checks (types, ranks, shapes); values are checked in the
  compiled call (`_all_finite`)."""
  l1 = jax.tree_util.tree_leaves(x1)
  l2 = None if x2 is None else jax.tree_util.tree_leaves(x2)
  if not l1:
    raise ValueError(f"{name}: kernel_fn got no inputs.")
  for i, a in enumerate(l1):
    if not hasattr(a, "shape"):
      raise TypeError(f"{name}: inputs must be arrays; got "
                      f"{type(a).__name__}.")
    if a.ndim < 2:
      raise ValueError(
          f"{name}: inputs must be at least 2-D (a batch axis and a feature "
          f"axis); got shape {tuple(a.shape)}. For N scalar inputs use "
          f"x.reshape(-1, 1); for one example use x[None].")
    if l2 is not None:
      b = l2[i]
      rest = lambda s: tuple(d for i, d in enumerate(s)
                             if i != batch_axis % len(s))
      if b.ndim != a.ndim or rest(b.shape) != rest(a.shape):
        raise ValueError(
            f"{name}: x1 and x2 must have the same shape apart from the batch "
            f"axis; got x1 {tuple(a.shape)} and x2 {tuple(b.shape)}.")


def _masked(x, mask_constant):
  if mask_constant is None:
    return x, None
  if isinstance(mask_constant, jax.Array):
    mask = jnp.where(jnp.isnan(mask_constant), jnp.isnan(x),
                     x == mask_constant.astype(x.dtype))
  elif np.isnan(mask_constant):
    mask = jnp.isnan(x)
  else:
    mask = x == mask_constant
  return jnp.where(mask, 0, x), mask


def same_inputs(x1, x2):
  """Traced boolean: ``x2`` is None or equals ``x1`` (the kernels' x1_is_x2)."""
  if x2 is None:
    return jnp.asarray(True)
  if jnp.shape(x2) != jnp.shape(x1):
    return jnp.asarray(False)
  return jnp.all(jnp.abs(jnp.asarray(x1) - jnp.asarray(x2)) < 1e-12)


def inputs_to_kernel(x1, x2, *, diagonal_batch: bool, diagonal_spatial: bool,
                     compute_ntk: bool, batch_axis: int = 0,
                     channel_axis: Optional[int] = -1,
                     mask_constant: Optional[float] = None,
                     x1_is_x2=None, row_offset=None) -> Kernel:
  """The `Kernel` of raw inputs: ``nngp = x1 . x2 / n_channels``.

  Covariances are taken over the channel axis; other non-batch axes are
  spatial and kept pairwise (or only diagonally). ``channel_axis=None``
  flattens all non-batch axes into channels.

  ``row_offset`` (traced int): ``x1`` is rows ``offset:offset + len(x1)`` of
  the whole first batch (a `chunking` block; needs ``x2``, ``batch_axis=0``
  and ``diagonal_batch``); ``x1_is_x2`` is then the whole batches' flag
  (Python ``False`` when their shapes differ).
  """
  dtype = jnp.result_type(float)
  x1 = jnp.asarray(x1)
  if not jnp.issubdtype(x1.dtype, jnp.floating):
    x1 = x1.astype(dtype)
  x2 = None if x2 is None else jnp.asarray(x2, x1.dtype)
  # Python False: the whole batches differ in shape (row blocks only).
  maybe_same = x1_is_x2 is not False
  x1_is_x2 = same_inputs(x1, x2) if x1_is_x2 is None else jnp.asarray(
      x1_is_x2)
  if channel_axis is None:
    flat = lambda x: None if x is None else jnp.moveaxis(
        x, batch_axis, 0).reshape(x.shape[batch_axis], -1)
    x1, x2 = flat(x1), flat(x2)
    batch_axis, channel_axis = 0, 1
  ndim = x1.ndim
  batch_axis %= ndim
  channel_axis %= ndim
  x1, mask1 = _masked(x1, mask_constant)
  mask2 = None
  if x2 is not None:
    x2, mask2 = _masked(x2, mask_constant)

  def canon(x):  # -> (N, spatial..., C)
    return None if x is None else jnp.moveaxis(x, (batch_axis, channel_axis),
                                               (0, -1))

  a, b = canon(x1), canon(x2)
  n_channels = a.shape[-1]
  n_sp = a.ndim - 2

  def cov(u, v, diag_batch):
    letters = "abcdefghijklmnopqrstuvw"[:n_sp]
    primed = "ABCDEFGHIJKLMNOPQRSTUVW"[:n_sp]
    if diagonal_spatial:
      out_sp = letters
      v_sp = letters
    else:
      out_sp = "".join(x + y for x, y in zip(letters, primed))
      v_sp = primed
    if diag_batch:
      spec = f"n{letters}z,n{v_sp}z->n{out_sp}"
    else:
      spec = f"n{letters}z,m{v_sp}z->nm{out_sp}"
    return jnp.einsum(spec, u, v, precision=jax.lax.Precision.HIGHEST
                      ) / n_channels

  nngp = cov(a, a if b is None else b, False)
  if row_offset is not None:
    # Where the whole batches are equal, sample i of this block is sample
    # i + offset of x2: put x2's variances there, so that rules see exactly
    # zero angle, as `covariance.nngp_variances` does for x2=None.
    cov2 = cov(b, b, True)
    cov1 = cov(a, a, True)
    if maybe_same:
      diag = jnp.arange(a.shape[0])[:, None] + row_offset == jnp.arange(
          b.shape[0])[None, :]
      diag = (diag & x1_is_x2).reshape(diag.shape + (1,) * (nngp.ndim - 2))
      nngp = jnp.where(diag, cov2[None], nngp)
      cov1 = jnp.where(x1_is_x2, jax.lax.dynamic_slice_in_dim(
          cov2, row_offset, a.shape[0]), cov1)
  elif b is None and diagonal_batch:
    # The same numbers as nngp's diagonal, so that rules see exactly zero
    # angle there (a separate reduction would differ by round-off, which the
    # arc-cosine kernels amplify to sqrt(eps)).
    cov1 = jnp.diagonal(nngp, axis1=0, axis2=1)
    cov1 = jnp.moveaxis(cov1, -1, 0)
  else:
    cov1 = cov(a, a, diagonal_batch)
  if row_offset is None:
    cov2 = None if b is None else cov(b, b, diagonal_batch)
  if row_offset is None and b is not None and a.shape == b.shape:
    # x2 passed equal to x1: take the same numbers from nngp's diagonal too,
    # so x2=x1 gives x2=None's kernel to round-off instead of sqrt(eps).
    same = (jnp.moveaxis(jnp.diagonal(nngp, axis1=0, axis2=1), -1, 0)
            if diagonal_batch else nngp)
    cov1 = jnp.where(x1_is_x2, same, cov1)
    cov2 = jnp.where(x1_is_x2, same, cov2)
  ntk = jnp.zeros((), nngp.dtype) if compute_ntk else None
  k = Kernel(
      nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2,
      x1_is_x2=x1_is_x2,
      is_gaussian=False, is_reversed=False, is_input=True,
      diagonal_batch=diagonal_batch, diagonal_spatial=diagonal_spatial,
      shape1=tuple(x1.shape), shape2=tuple((x1 if x2 is None else x2).shape),
      batch_axis=batch_axis, channel_axis=channel_axis,
      mask1=mask1, mask2=mask2 if x2 is not None else None)
  if mask1 is not None:
    from . import masking  # lazily: only masked inputs need it
    k = masking.mask_kernel(k)
  return k


Rule = Callable[..., Any]


def layer(fn: Callable[..., tuple]) -> Callable[..., tuple]:
  """Decorator for primitive layers.

  ``fn(*args, **kwargs)`` returns ``(init_fn, apply_fn, rule, reqs)`` where
  ``rule(kernel, **kwargs) -> kernel`` is the covariance rule; the decorated
  function returns the public triple with a `KernelFn`. An optional fifth
  element, a `masking.MaskRule`, says how the layer moves masks (default:
  unchanged, covariances of masked positions zeroed).
  A function returning neural-tangents' triple ``(init_fn, apply_fn,
  kernel_fn)``, with ``kernel_fn(kernel, **kwargs) -> kernel`` (see
  `widenets.stax.custom` for `requires` and `supports_masking`), works too.
  """

  @functools.wraps(fn)
  def make(*args, **kwargs):
    parts = fn(*args, **kwargs)
    if len(parts) == 3:
      # neural-tangents' form: (init_fn, apply_fn, kernel_fn) (`custom`).
      from . import custom
      parts = custom.from_triple(*parts)
    init_fn, apply_fn, rule, reqs, *mask_rule = parts
    mask_rule = mask_rule[0] if mask_rule else None
    name = _layer_name(fn.__name__, args, kwargs)
    from . import masking
    apply_fn = masking.masked_apply(apply_fn, mask_rule)
    kernel_fn = KernelFn(rule, reqs, name, init_fn=init_fn,
                         mask_rule=mask_rule, masks=True)
    # As neural-tangents: the three functions are named after the layer
    # (``'Relu'``); messages and reprs use ``name`` (with its arguments).
    for f in (init_fn, apply_fn, kernel_fn):
      try:
        f.__name__ = fn.__name__
      except (AttributeError, TypeError):
        pass
    return init_fn, apply_fn, kernel_fn

  return make


def _layer_name(base: str, args, kwargs) -> str:
  parts = [repr(a) for a in args if isinstance(a, (int, float, str, tuple))]
  parts += [f"{k}={v!r}" for k, v in kwargs.items()
            if isinstance(v, (int, float, str, tuple, bool))]
  return f"{base}({', '.join(parts)})"
