"""`KernelFn`: the public ``kernel_fn`` of a layer or network.

A layer's kernel rule is a pure function ``Kernel -> Kernel`` (or a list of
kernels for branching layers). `KernelFn` runs it on a `Kernel`
(``kernel_fn(kernel)``) or orchestrates a whole call on inputs
(``kernel_fn(x1, x2=None, get=None, **kwargs)``) as one compiled computation:

1. the covariance layout (`requirements`) and the strategy: the packed
   upper triangle for ``x2=None`` (`packing`; a small one on the whole grid,
   mirrored), row blocks of ``x1`` (`chunking`), or the whole grid; chosen
   from shapes and dtypes only, so the same under an outer ``jax.jit``;
2. the inputs' kernel (`inputs`), the layers' rules, and the unpacked,
   trimmed outputs with only the fields ``get`` asks for;
3. finiteness of inputs and outputs (`overflow`), returned as values and
   checked after the call; only when the outputs are not finite is the
   computation compiled again with per-layer flags, to name the layer.

The outputs pass through a `jax.lax.cond` on their finiteness before they are
unpacked (`_guard`): identity when finite; otherwise NaN in a direct call
(which then raises after the call), and in a traced call (under an outer
``jax.jit``, ``jax.grad`` or ``jax.vmap``, where nothing is concrete after
the call) a host callback that reruns the call eagerly on the concrete
values and raises its error (`_Rerun`, `overflow.error_if`). The
conditional is also a fusion boundary: without it, when the flags are dead
code (a traced call), XLA fuses the layers' elementwise NTK recursion into
the gather that unpacks the ``(N, N)`` outputs, which is several times
slower (see benchmarks/ISSUE15.md); so the direct and the traced call run
the same program. Small calls (outputs of at most
`packing.MIN_PACKED_BYTES`, on the whole grid) are checked after the
mirror instead, with no boundary and, in a direct call, no conditional:
their first call is mostly XLA compiling kernels, and this one has fewer
(benchmarks/ISSUE15.md, section 11).
"""
from __future__ import annotations

import functools
import threading
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from .._tracing import StaticArgs, all_concrete
from ..kernel import Kernel, check_get, get_from, same_inputs
from . import chunking, masking, packing, sharing
from .inputs import (inputs_to_kernel, is_kernel_tree, mask_inputs,
                     validate_inputs)
from .overflow import (FlagRecorder, KernelOverflowError, OverflowFlags,
                       all_finite, all_true, error_if, float_dtype,
                       overflow_message, raise_on_overflow)
from .requirements import Requirements

__all__ = ["KernelFn", "output_shape"]

# Keyword arguments that steer the whole computation rather than a layer.
_CONTROL_KWARGS = ("diagonal_batch", "diagonal_spatial", "mask_constant",
                   "batch_axis", "channel_axis")


def _freeze_shape(s):
  if isinstance(s, (list, tuple)) and s and isinstance(s[0], (list, tuple)):
    return tuple(_freeze_shape(x) for x in s)
  return tuple(s)


def output_shape(init_fn, in_shape):
  """The output shape ``init_fn`` reports for ``in_shape``, without compute.

  A layer's ``init_fn`` may carry ``init_fn.output_shape(in_shape)``, the
  same shape in plain Python (Dense, Conv: tracing their random draws took
  a quarter of a small network's first trace). Otherwise ``init_fn`` is
  traced abstractly on an abstract PRNG key (the shape and dtype of
  ``jax.random.PRNGKey(0)`` under the current configuration): no key is
  made, so nothing is staged into an enclosing trace.
  """
  shape_fn = getattr(init_fn, "output_shape", None)
  if shape_fn is not None:
    return shape_fn(_freeze_shape(in_shape))
  captured = {}

  def f(key):
    out, params = init_fn(key, _freeze_shape(in_shape))
    captured["shape"] = out
    return params

  jax.eval_shape(f, jax.eval_shape(jax.random.PRNGKey, 0))
  return captured["shape"]


def _has_masks(k) -> bool:
  return any(kk.mask1 is not None or kk.mask2 is not None
             for kk in jax.tree_util.tree_leaves(
                 k, is_leaf=lambda l: isinstance(l, Kernel)))


def _is_array(x) -> bool:
  return isinstance(x, (jax.Array, np.ndarray))


_FIELDS = ("nngp", "ntk", "cov1", "cov2")


def _guard(out, get: Optional[tuple], check: Optional[tuple] = None,
           boundary: bool = True, extra=()):
  """``(out, ok)``: ``ok`` whether the fields ``get`` asks for are finite in
  every output kernel; ``out`` through ``lax.cond(ok, identity, NaN)`` (a
  fusion boundary; none without ``boundary``), or, with ``check = (report,
  payload, inputs_ok)`` (a traced call), through ``error_if(ok & inputs_ok,
  ...)``: ``report(*payload)`` raises on the host. ``extra``: more arrays
  whose finiteness ``ok`` includes."""
  fields = _FIELDS if get is None else tuple(f for f in _FIELDS if f in get)
  kernels = jax.tree_util.tree_leaves(
      out, is_leaf=lambda l: isinstance(l, Kernel))
  parts = [{f: getattr(kk, f) for f in fields
            if getattr(kk, f) is not None and jnp.ndim(getattr(kk, f))}
           for kk in kernels]
  ok = all_finite((parts, list(extra)))
  if check is None and not boundary:
    return out, ok
  if check is None:
    nan = lambda p: jax.tree_util.tree_map(
        lambda a: jnp.full_like(a, jnp.nan), p)
    parts = jax.lax.cond(ok, lambda p: p, nan, parts)
  else:
    report, payload, inputs_ok = check
    parts = error_if(parts, ok & inputs_ok, report, payload)
  kernels = [kk.replace(**p) for kk, p in zip(kernels, parts)]
  return jax.tree_util.tree_unflatten(
      jax.tree_util.tree_structure(
          out, is_leaf=lambda l: isinstance(l, Kernel)), kernels), ok


def _finish(kk: Kernel, get: Optional[tuple], n: Optional[int],
            mirror: bool = False) -> Kernel:
  """An output kernel as the user sees it: unpacked and trimmed to the ``n``
  samples (see `packing`) or, with ``mirror``, an ``x2=None`` kernel of the
  whole grid made exactly symmetric; a dense ``ntk``, no layout fields of
  the computation, and only the fields ``get`` asks for."""
  if kk.packed:
    kk = packing.trim_rows(packing.unpack(kk), n)
  elif mirror:
    kk = packing.mirror(kk)
  kk = kk.replace(row_offset=None)
  if kk.ntk is not None and jnp.ndim(kk.ntk) == 0:
    kk = kk.replace(ntk=jnp.broadcast_to(kk.ntk, kk.nngp.shape))
  if get is not None:
    # Drop what was not asked for, so XLA does not compute it.
    kk = kk.replace(**{f: None for f in ("nngp", "ntk", "cov1", "cov2")
                       if f not in get})
  return kk


# The key under which an array ``mask_constant`` travels with the dynamic
# arguments of the compiled call.
MASK_KEY = "__mask_constant__"


# How long the host waits for the eager rerun of a traced call that found
# non-finite values (`_Rerun`) before it reports without the layer's name.
RERUN_SECONDS = 120.0


class _Rerun:
  """Host side of a traced call's checks (`overflow.error_if`): raises the
  direct call's error for the concrete values the traced program saw.

  Non-finite inputs are found with NumPy (the input check's ``ValueError``).
  An overflow is named by rerunning the call eagerly (`KernelOverflowError`
  naming the first layer), on the host CPU and in a thread of its own: JAX
  computations started from inside a callback can wait on the very program
  that called back, so after `RERUN_SECONDS` the error names the network
  only.

  A static part of the compiled call's configuration: equal for networks of
  equal structure (which share a program; the hyperparameter values travel
  as arguments), otherwise for the same network only.
  """

  def __init__(self, network: "KernelFn", node):
    self.network = network
    self.node = node
    # Thread-local settings of the caller, for the host thread.
    self.x64 = jnp.dtype(jnp.result_type(float)).itemsize == 8
    self._key = (("structure", node.structure) if node is not None
                 else ("network", id(network)), self.x64)

  def __hash__(self):
    return hash(self._key)

  def __eq__(self, other):
    return isinstance(other, _Rerun) and self._key == other._key

  def __call__(self, c: dict, x1, x2, dynamic, hyper) -> None:
    if c["mask_constant"] is None:
      _raise_on_bad_inputs(self.network.name, x1, x2)
    found = []
    worker = threading.Thread(
        target=lambda: found.append(self._rerun(c, x1, x2, dynamic, hyper)),
        daemon=True)
    worker.start()
    worker.join(RERUN_SECONDS)
    if found and found[0] is not None:
      raise found[0]
    raise KernelOverflowError(
        overflow_message(self.network.name, float_dtype(x1)) +
        " (Call kernel_fn outside "
        "jax.jit / grad / vmap on the same inputs to name the layer.)")

  def _rerun(self, c: dict, x1, x2, dynamic, hyper):
    """The direct call's error, or None."""
    try:
      with jax.enable_x64(self.x64), \
          jax.default_device(jax.devices("cpu")[0]):
        network = self.network
        if self.node is not None:
          # Python numbers back to Python numbers: as float64 arrays (under
          # x64) they would promote a float32 kernel to float64.
          weak = c.get("weak_hyper", (False,) * len(hyper))
          values = jax.tree_util.tree_unflatten(
              jax.tree_util.tree_structure(self.node.hyper),
              [h.item() if w and np.ndim(h) == 0 else h
               for h, w in zip(hyper, weak)])
          network = self.node.rebuild(values)[2]
        kwargs = dict(dict(c["static"]), **dynamic)
        mask_constant = kwargs.pop(MASK_KEY, c["mask_constant"])
        network(x1, x2, c["get"], diagonal_batch=c["diagonal_batch"],
                diagonal_spatial=c["diagonal_spatial"],
                mask_constant=mask_constant, **kwargs)
    except (KernelOverflowError, ValueError) as error:
      return error
    except Exception:  # noqa: BLE001 - then the network is named only
      return None
    return None


def _bad_input(name: str, label: str, x) -> ValueError:
  shape = tuple(jax.tree_util.tree_leaves(x)[0].shape)
  return ValueError(f"{name}: {label} of shape {shape} contains NaN or "
                    f"infinite values.")


def _raise_on_bad_inputs(name: str, x1, x2) -> None:
  """The bad-input ``ValueError`` if concrete ``x1`` or ``x2`` holds a NaN
  or an inf (checked in NumPy)."""
  for label, x in (("x1", x1), ("x2", x2)):
    leaves = [np.asarray(a) for a in jax.tree_util.tree_leaves(x)]
    if any(np.issubdtype(a.dtype, np.inexact) and
           not np.all(np.isfinite(a)) for a in leaves):
      raise _bad_input(name, label, x)


def _report_network(name: str, x1=None, x2=None) -> None:
  if x1 is not None:  # the inputs, when the flag covers them too
    _raise_on_bad_inputs(name, x1, x2)
  raise KernelOverflowError(overflow_message(name, float_dtype(x1)))


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

  Raises `KernelOverflowError` naming the first layer whose kernel left the
  floating-point range (and ``ValueError`` for NaN or infinite inputs);
  under ``jax.jit``/``grad``/``vmap`` the same message arrives in JAX's
  runtime error, raised from inside the computation (see `_Rerun`).

  Construction: ``rule(kernel, **kwargs)``, or ``rule(kernel, flags,
  **kwargs)`` with ``records_flags=True`` (``flags``: the computation's
  `overflow.FlagRecorder`; combinators pass it on to their layers).
  """

  def __init__(self, rule: Callable, reqs: Requirements, name: str,
               init_fn: Optional[Callable] = None, set_shapes: bool = True,
               mask_rule: Any = None, masks: bool = False,
               records_flags: bool = False):
    self.rule = rule
    # Primitive layers move masks (`masking.propagate`); combinators don't.
    self._masks = masks
    self._mask_rule = mask_rule
    self._records_flags = records_flags
    self.reqs = reqs
    self.name = name
    self.__name__ = name
    self._init_fn = init_fn
    self._set_shapes = set_shapes and init_fn is not None
    self._shapes: dict = {}  # input shape -> output shape (`_output_shape`)
    self._jitted = jax.jit(self._compute, static_argnums=(3,))

  def __repr__(self) -> str:
    return f"<kernel_fn of {self.name}>"

  @property
  def pairwise(self) -> bool:
    """Whether the kernel of two samples depends on those two alone (no
    layer mixes samples), with samples on axis 0 of the inputs: then the
    blocks of one call on concatenated inputs equal separate calls
    (`predict` uses this to compile one program instead of three)."""
    return self.reqs.packable and self.reqs.batch_axis in (None, 0)

  # -- Kernel -> Kernel ----------------------------------------------------
  def apply(self, k, flags: Optional[FlagRecorder] = None, /, **kwargs):
    """Runs the rule on a `Kernel` (or list of them) and sets output shapes.

    ``flags``: where layers record their overflow flags (a throwaway
    recorder if None).
    """
    self._check_input(k)
    if self._records_flags:
      out = self.rule(k, FlagRecorder() if flags is None else flags,
                      **kwargs)
    else:
      out = self.rule(k, **kwargs)
    if self._set_shapes:
      out = self._with_shapes(k, out)
    if self._masks and _has_masks(k):
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
    o1, o2 = self._output_shape(s1), self._output_shape(s2)
    if isinstance(k_out, Kernel):
      return k_out.replace(shape1=tuple(o1), shape2=tuple(o2))
    return [kk.replace(shape1=tuple(a), shape2=tuple(b))
            for kk, a, b in zip(k_out, o1, o2)]

  def _output_shape(self, in_shape):
    """`output_shape` of this layer's ``init_fn``, once per input shape
    (a plain-Python memo of shapes on this instance: many traces of the
    same network, and both inputs of a call, share it)."""
    key = _freeze_shape(in_shape)
    shape = self._shapes.get(key)
    if shape is None:
      shape = self._shapes[key] = _freeze_shape(
          output_shape(self._init_fn, key))
    return shape

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
    validate_inputs(self.name, x1, x2, self.reqs.batch_axis or 0)
    config, dynamic = self._config(x1, x2, get_t, kwargs)
    node = sharing.architecture(self)
    hyper = () if node is None else jax.tree_util.tree_leaves(node.hyper)
    if not all_concrete((x1, x2, dynamic, hyper)):
      # Traced: the program itself raises (see `_Rerun`).
      config = StaticArgs(dict(config.value, rerun=_Rerun(self, node)))
    result = None
    if node is not None and sharing.concrete(node.hyper):
      # One program for every network of this structure (see `sharing`).
      try:
        result = sharing.compute(node, x1, x2, dynamic, config)
      except Exception:  # noqa: BLE001 - rerun below: its own message
        # A layer that cannot take traced hyperparameters, or bad input:
        # this network's own program (errors then name its layers by
        # their values).
        result = None
    if result is None:
      result = self._jitted(x1, x2, dynamic, config, hyper)
    out, flags, inputs_ok, out_ok = result
    if config.value["rerun"] is None and all_true([out_ok]) is None:
      # Concrete inputs, but a network closing over tracers (built inside
      # the caller's transformation from undeclared values).
      out = error_if(out, out_ok & inputs_ok[0] & inputs_ok[1],
                     functools.partial(_report_network, self.name),
                     (x1, x2) if config.value["fold_inputs"] else ())
    for label, x, ok in (("x1", x1, inputs_ok[0]), ("x2", x2, inputs_ok[1])):
      if all_true([ok]) is False:
        raise _bad_input(self.name, label, x)
    if all_true([out_ok]) is False:
      if config.value["fold_inputs"]:
        _raise_on_bad_inputs(self.name, x1, x2)
      # Only now: the same computation with per-layer flags, to name the
      # first layer that overflowed.
      layers = StaticArgs(dict(config.value, check_layers=True))
      _, flags, _, out_ok = self._jitted(x1, x2, dynamic, layers)
    raise_on_overflow(self.name, flags, out_ok, out)
    return get_from(out, get)

  def _config(self, x1, x2, get_t, kwargs) -> tuple:
    """``(static config, dynamic kwargs)`` of a call on inputs: the layout
    and strategy (packed, row blocks or whole), static layer kwargs."""
    kwargs = dict(kwargs)
    diagonal_batch = kwargs.pop("diagonal_batch", None)
    diagonal_spatial = kwargs.pop("diagonal_spatial", None)
    mask_constant = kwargs.pop("mask_constant", None)
    if mask_constant is not None and not isinstance(mask_constant,
                                                    (int, float)):
      # An array (perhaps traced under the caller's jit): an argument of the
      # compiled call, not part of its static configuration.
      kwargs[MASK_KEY] = jnp.asarray(mask_constant)
      mask_constant = MASK_KEY
    reqs = self.reqs
    if diagonal_spatial and not reqs.diagonal_spatial_ok:
      raise ValueError(
          f"{self.name}: diagonal_spatial=True was asked for, but layer "
          f"{reqs.blocker or '?'} needs covariances between all pairs "
          f"of spatial positions. Use diagonal_spatial=False (the default).")
    if diagonal_batch and not reqs.diagonal_batch_ok:
      raise ValueError(f"{self.name}: diagonal_batch=True was asked for, but "
                       f"the network needs full sample covariances.")
    if diagonal_spatial is None:
      diagonal_spatial = reqs.default_diagonal_spatial
    if diagonal_batch is None:
      diagonal_batch = reqs.diagonal_batch_ok

    static, dynamic = {}, {}
    for key, val in kwargs.items():
      leaves = jax.tree_util.tree_leaves(val)
      (dynamic if leaves and all(map(_is_array, leaves)) else static)[key] = val
    # Pairs (i, j) independent of each other, and plain arrays in layout 0.
    pairwise = (reqs.packable and diagonal_batch and mask_constant is None
                and not dynamic and reqs.batch_axis in (None, 0))
    packable, mirror, row_chunk, small = False, False, None, False
    arrays = pairwise and _is_array(x1) and (x2 is None or _is_array(x2))
    if arrays:
      entries = self._pair_entries(x1, diagonal_spatial)
      itemsize = jnp.dtype(jnp.result_type(x1.dtype, float)).itemsize
      if x2 is None:
        packable = packing.worth_packing(x1.shape[0], entries, itemsize)
        mirror = small = not packable
      else:
        row_chunk = chunking.choose_rows(
            x1.shape[0], x2.shape[0] * entries, itemsize)
        small = row_chunk is None and not packing.worth_packing(
            max(x1.shape[0], x2.shape[0]), entries, itemsize)
    # Inputs on one grid are checked through their kernel (`_evaluate`),
    # not by reductions over the inputs themselves: a non-finite entry of
    # an input makes its own variance (and its row of x1 x2^T) non-finite.
    # A failure is then told apart on the host (NumPy).
    fold_inputs = bool(arrays and row_chunk is None and not packable
                       and np.size(x1)
                       and (x2 is None or np.size(x2)))
    config = StaticArgs(dict(
        get=get_t, diagonal_batch=bool(diagonal_batch),
        diagonal_spatial=bool(diagonal_spatial), mask_constant=mask_constant,
        packable=bool(packable), mirror=mirror, row_chunk=row_chunk,
        small=small, fold_inputs=fold_inputs,
        check_layers=False, rerun=None,
        static=tuple(sorted(static.items()))))
    return config, dynamic

  def _pair_entries(self, x1, diagonal_spatial: bool) -> int:
    """Entries of ``nngp[i, j]`` at the inputs (the spatial covariances)."""
    channel = -1 if self.reqs.channel_axis is None else self.reqs.channel_axis
    spatial = [d for i, d in enumerate(x1.shape)
               if i not in (0, channel % x1.ndim)]
    size = int(np.prod(spatial)) if spatial else 1
    return size if diagonal_spatial else size * size

  # -- the compiled computation ----------------------------------------------
  def _compute(self, x1, x2, dynamic, config: StaticArgs, hyper=()):
    """``(outputs, OverflowFlags, (x1 finite, x2 finite), outputs finite)``.

    Finiteness is checked inside the compiled call (fused reductions)
    rather than by eager passes around it. ``hyper``: the network's
    hyperparameter values (leaves of its architecture's), which a traced
    call's error path needs to rebuild it on the host.
    """
    c = dict(config.value)
    payload = (x1, x2, dynamic, tuple(hyper))
    if c["mask_constant"] == MASK_KEY:
      dynamic = dict(dynamic)
      c["mask_constant"] = dynamic.pop(MASK_KEY)
    mask_constant = c["mask_constant"]
    mask = (None if mask_constant is None
            else lambda leaf: mask_inputs(leaf, mask_constant)[0])
    if c["fold_inputs"]:
      # Checked through the inputs' kernel instead (`_evaluate`).
      inputs_ok = (jnp.asarray(True), jnp.asarray(True))
    else:
      inputs_ok = (all_finite(x1, mask), all_finite(x2, mask))
    if c["rerun"] is not None:
      # Which values were Python numbers (weakly typed): the host gets them
      # back as arrays, and must not let them promote a float32 kernel.
      weak = tuple(bool(getattr(jax.typeof(h), "weak_type", False))
                   for h in hyper)
      c["check"] = (functools.partial(c["rerun"],
                                      dict(config.value, weak_hyper=weak)),
                    payload, inputs_ok[0] & inputs_ok[1])
    if c["row_chunk"]:
      out, flags, out_ok = self._compute_rows(x1, x2, dynamic, c)
      return out, flags, inputs_ok, out_ok
    n = x1.shape[0] if c["packable"] else None
    if c["packable"]:
      x1 = packing.pad_rows(x1)
    to_kernel = functools.partial(self._inputs_kernel, c)
    if x2 is None:
      k = jax.tree_util.tree_map(lambda a: to_kernel(a, None), x1)
    else:
      k = jax.tree_util.tree_map(to_kernel, x1, x2)
    if c["packable"]:
      k = packing.pack(k)
    out, flags, out_ok = self._evaluate(k, c, dynamic, n)
    return out, flags, inputs_ok, out_ok

  def _compute_rows(self, x1, x2, dynamic, c):
    """The whole network on row blocks of ``x1`` (see `chunking`)."""
    x1_is_x2 = same_inputs(x1, x2) if np.shape(x1) == np.shape(x2) else False

    def block(x1_rows, offset):
      k = self._inputs_kernel(c, x1_rows, x2, x1_is_x2=x1_is_x2,
                              row_offset=offset)
      return self._evaluate(k, c, dynamic, None)

    return chunking.map_rows(block, x1, c["row_chunk"])

  def _inputs_kernel(self, c: dict, x1, x2, **kwargs) -> Kernel:
    reqs = self.reqs
    return inputs_to_kernel(
        x1, x2, diagonal_batch=c["diagonal_batch"],
        diagonal_spatial=c["diagonal_spatial"],
        compute_ntk=c["get"] is None or "ntk" in c["get"],
        batch_axis=0 if reqs.batch_axis is None else reqs.batch_axis,
        channel_axis=-1 if reqs.channel_axis is None else reqs.channel_axis,
        mask_constant=c["mask_constant"], **kwargs)

  def _evaluate(self, k, c: dict, dynamic: dict, n: Optional[int]) -> tuple:
    """``(outputs, OverflowFlags, outputs finite)`` of the layers on the
    inputs' kernel (per-layer flags only if ``c['check_layers']``)."""
    flags = FlagRecorder(enabled=c["check_layers"])
    out = self.apply(k, flags, **dict(c["static"]), **dynamic)
    finish = lambda out: jax.tree_util.tree_map(
        lambda kk: _finish(kk, c["get"], n, c["mirror"]), out,
        is_leaf=lambda l: isinstance(l, Kernel))
    extra = []
    if c["fold_inputs"]:
      # A small call checks x1 x2^T: it has the outputs' shape, so one
      # reduction covers both; a larger one, the inputs' variances.
      inputs = jax.tree_util.tree_leaves(
          k, is_leaf=lambda l: isinstance(l, Kernel))
      extra = ([kk.nngp for kk in inputs] if c["small"] else
               [v for kk in inputs for v in (kk.cov1, kk.cov2)
                if v is not None])
    if c["small"] and not c["mirror"]:
      # Checked as the user sees them: no boundary, so the last layer fuses
      # into the check (fewer kernels to compile; a small program's first
      # call is mostly XLA's compile).
      out, ok = _guard(finish(out), c["get"], c.get("check"), boundary=False,
                       extra=extra)
    elif c["small"]:
      # Checked before the mirror: the check's reduction makes XLA write
      # the kernel out once, and the mirror copies those values. Fused
      # into one loop, the mirror recomputed each entry at two positions,
      # and the two copies could differ by an ulp.
      out, ok = _guard(out, c["get"], c.get("check"), boundary=False,
                       extra=extra)
      out = finish(out)
    else:
      out, ok = _guard(out, c["get"], c.get("check"), extra=extra)
      out = finish(out)
    return out, flags.result(), ok
