"""Finiteness checks of a kernel computation, as values it returns.

Layers whose kernels can grow without bound (ReLU family, Exp, polynomials,
and `repeat` loops of them) record an all-finite flag in the `FlagRecorder`
that the computation passes to their rules explicitly (no module state, so
kernel functions run concurrently from many threads). The flags leave the one
compiled call as `OverflowFlags`, a pytree whose layer names are static (part
of its tree structure) and whose flags are boolean scalars; no host callback
splits XLA's fusions. After the call, `raise_on_overflow` names the first
layer that overflowed in a `KernelOverflowError`.

Under an outer ``jax.jit``/``grad``/``vmap`` nothing is concrete to check
after the call, so the compiled call guards its own outputs (`error_if`): a
``lax.cond`` on the all-finite flag whose false branch is a host callback
that raises. The finite path runs no callback; the error path surfaces as
JAX's runtime error carrying the same message as the direct call.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import jax
import jax.custom_batching
import jax.numpy as jnp
import numpy as np

__all__ = ["KernelOverflowError", "OverflowFlags", "FlagRecorder",
           "all_finite", "all_true", "raise_on_overflow", "error_if",
           "overflow_message", "float_dtype"]


class KernelOverflowError(FloatingPointError):
  """A kernel left the floating-point range (e.g. float32 in a deep net with
  large ``W_std``)."""


@jax.tree_util.register_pytree_node_class
class OverflowFlags:
  """All-finite flags of the layers of one computation, in layer order.

  ``names`` (static) are the layers' names, ``flags`` (leaves) boolean
  scalars, True where that layer's kernel is finite.
  """

  def __init__(self, names: Sequence[str] = (), flags: Sequence = ()):
    self.names = tuple(names)
    self.flags = tuple(flags)

  def tree_flatten(self):
    return self.flags, self.names

  @classmethod
  def tree_unflatten(cls, names, flags):
    return cls(names, flags)

  def all_ok(self):
    """One boolean scalar: every layer's kernel is finite."""
    ok = jnp.asarray(True)
    for flag in self.flags:
      ok = ok & flag
    return ok

  def __repr__(self) -> str:
    return f"OverflowFlags({dict(zip(self.names, self.flags))})"


class FlagRecorder:
  """Collects ``(layer name, all-finite flag)`` pairs while one computation
  is traced; created by that computation and handed to its rules.

  ``enabled=False``: records nothing. The common call runs so, checking only
  its outputs (a non-finite value anywhere propagates to them): per-layer
  flags would double XLA's compile time of deep networks. Only when the
  outputs are not finite is the computation compiled again with flags, to
  name the first layer that overflowed.
  """

  def __init__(self, enabled: bool = True):
    self.enabled = enabled
    self._names: list = []
    self._flags: list = []

  def child(self) -> "FlagRecorder":
    """A new recorder of the same kind (e.g. for a loop body)."""
    return FlagRecorder(self.enabled)

  def record(self, name: str, flag) -> None:
    """Records a precomputed all-finite ``flag`` for layer ``name``."""
    if not self.enabled:
      return
    self._names.append(name)
    self._flags.append(jnp.asarray(flag, bool))

  def record_finite(self, name: str, *arrays) -> None:
    """Records whether ``arrays`` (``None`` skipped) are all finite."""
    if not self.enabled:
      return
    flag = jnp.asarray(True)
    for a in arrays:
      if a is not None:
        flag = flag & jnp.all(jnp.isfinite(a))
    self.record(name, flag)

  def result(self) -> OverflowFlags:
    return OverflowFlags(self._names, self._flags)


def all_true(flags) -> Optional[bool]:
  """Whether every flag is True; None when they are traced (under an outer
  ``jit`` nothing is concrete to check)."""
  try:
    return all(bool(f) for f in flags)
  except (jax.errors.ConcretizationTypeError,
          jax.errors.TracerBoolConversionError):
    return None


# Leaves of at most this many entries are checked by one variadic reduction
# per shape (`_poison`); larger ones of one shape by one ``sum`` of their
# ``x - x``, which XLA:CPU runs as a vectorized library reduction (~3x
# faster per entry at 10**6 entries). ``x - x`` rather than ``x * 0``: XLA
# materializes the zero operand of the product as an array of its own (a
# kernel and a full-size write per call), not that of the difference.
FUSED_CHECK_UP_TO = 2 ** 16


def _poison(acc: tuple, new: tuple) -> tuple:
  """Reducer of `all_finite`'s variadic reduction: every result 0 while
  every entry combined so far is finite, NaN after any other (``x * 0`` is
  NaN exactly for inf and NaN, and NaN stays NaN). Symmetric in its
  operands, so any reduction order gives the same answer; the ``* 0``
  inside the reducer leaves XLA no separate kernel for it. An entry never
  combined (a one-entry operand) is returned as itself, and is checked as
  such."""
  poisoned = sum(x * 0 for x in acc) + sum(x * 0 for x in new)
  return (poisoned,) * len(acc)


def all_finite(tree, mask=None):
  """One boolean: every inexact leaf of ``tree`` is finite.

  ``mask(leaf) -> leaf`` replaces masked entries first (see
  `inputs.mask_inputs`). The checks are reductions that XLA fuses into few
  kernels (benchmarks/ISSUE15.md, sections 10 and 11): small leaves of one
  shape and dtype share one reduction, and so do large ones, as
  ``sum(x - x + y - y ...)`` (0 for finite entries, NaN otherwise; never an
  overflow of finite values).
  """
  ok = jnp.asarray(True)
  small, large = {}, {}
  for leaf in jax.tree_util.tree_leaves(tree):
    if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact):
      if mask is not None:
        leaf = mask(leaf)
      leaf = jnp.asarray(leaf)  # NumPy would warn on inf * 0
      if jnp.ndim(leaf) == 0:
        # A reduction over no axes would return its operands unreduced.
        ok = ok & jnp.isfinite(leaf)
      else:
        # A flag has no derivative; the general reduction has no JVP rule.
        group = small if np.size(leaf) <= FUSED_CHECK_UP_TO else large
        group.setdefault((jnp.shape(leaf), leaf.dtype), []).append(
            jax.lax.stop_gradient(leaf))
  for leaves in large.values():
    ok = ok & jnp.isfinite(jnp.sum(sum(leaf - leaf for leaf in leaves)))
  for (shape, dtype), leaves in small.items():
    zeros = tuple(np.zeros((), dtype) for _ in leaves)
    # Every result: XLA may treat the initial 0 as the reducer's identity
    # (which it is not) and return a single-entry operand's entry unreduced.
    for poisoned in jax.lax.reduce(tuple(leaves), zeros, _poison,
                                   tuple(range(len(shape)))):
      ok = ok & jnp.isfinite(poisoned)
  return ok


def overflow_message(layer: str, dtype=None) -> str:
  """The `KernelOverflowError` message naming ``layer``, whose kernel was
  computed in ``dtype`` (JAX's default float if None)."""
  dtype = jnp.dtype(jnp.result_type(float) if dtype is None else dtype)
  if jnp.finfo(dtype).bits > 32:
    hint = "Reduce W_std / depth."
  elif jnp.dtype(jnp.result_type(float)).itemsize < 8:
    hint = ("Enable float64 with jax.config.update('jax_enable_x64', True) "
            "before building inputs, or reduce W_std / depth.")
  else:
    hint = ("Pass float64 inputs (jax_enable_x64 is on: x.astype("
            "jnp.float64)), or reduce W_std / depth.")
  return (f"{layer}: the kernel overflowed "
          f"{dtype.name} (infinite or NaN variances or NTK; e.g. a "
          f"deep network with large W_std, whose kernel grows geometrically "
          f"with depth). {hint}")


def float_dtype(tree):
  """The floating dtype a kernel of ``tree``'s arrays is computed in (that
  of its first leaf, promoted with a Python float), or None."""
  leaves = [l for l in jax.tree_util.tree_leaves(tree) if hasattr(l, "dtype")]
  return jnp.result_type(leaves[0].dtype, float) if leaves else None


def raise_on_overflow(network: str, flags: OverflowFlags, out_ok,
                      out=None) -> None:
  """Raises `KernelOverflowError` naming the first layer whose flag is
  False (``network`` if only the final output check failed); the message
  names the dtype of the kernels ``out``."""
  ok = all_true(list(flags.flags) + [out_ok])
  if ok is None or ok:
    return
  bad = [n for n, f in zip(flags.names, flags.flags) if not bool(f)]
  raise KernelOverflowError(overflow_message((bad or [network])[0],
                                             float_dtype(out)))


# -- raising inside a traced computation ---------------------------------------

def error_if(parts, ok, report: Callable, payload):
  """``parts`` unchanged where ``ok``; otherwise the host runs
  ``report(*payload)``, which raises (the error surfaces as JAX's runtime
  error of the computation, with ``report``'s message in it).

  ``ok``: a boolean scalar; ``payload``: a tuple of arrays (pytrees) that
  ``report`` needs to explain the failure (e.g. the inputs, to rerun the
  call eagerly). The check is a ``lax.cond``: the finite path runs no
  callback and copies nothing to the host.

  Transformations: the derivative passes through (``d out = d parts``);
  under ``jax.vmap`` the batch's flags are reduced to one (``all``), so the
  conditional stays a conditional (not a ``select`` that would run the
  callback every time) and the host reports the first failing member.
  """
  return _error_if(report, 0)(parts, ok, tuple(payload))


def _error_if(report: Callable, depth: int):
  """`error_if` for a payload nested under ``depth`` levels of ``vmap``:
  ``(members' flags, their payloads)`` pairs, batch axis first."""

  @jax.custom_batching.custom_vmap
  def check(parts, ok, payload):
    # The flag reaches the host as the int32 that `lax.cond` makes of it
    # anyway (one value, so XLA fuses the conversion into the reduction
    # computing the flag instead of compiling a kernel for it).
    ok_index = ok.astype(jnp.int32)

    def fail(operands):
      parts, payload = operands
      shapes = jax.tree_util.tree_map(
          lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), parts)
      host = functools.partial(_report_first, report, depth, shapes)
      return jax.pure_callback(host, shapes, ok_index, payload,
                               vmap_method="sequential")

    return jax.lax.cond(ok, lambda operands: operands[0], fail,
                        (parts, payload))

  @check.def_vmap
  def _batched(axis_size, in_batched, parts, ok, payload):
    parts_batched, ok_batched, payload_batched = in_batched

    def batch(a, batched):
      return a if batched else jnp.broadcast_to(a, (axis_size,) + a.shape)

    members = batch(ok, ok_batched)
    payload = jax.tree_util.tree_map(batch, payload, payload_batched)
    out = _error_if(report, depth + 1)(parts, jnp.all(members),
                                       (members, payload))
    return out, parts_batched

  @jax.custom_jvp
  def checked(parts, ok, payload):
    return check(parts, ok, payload)

  @checked.defjvp
  def _jvp(primals, tangents):
    return checked(*primals), tangents[0]

  return checked


def _report_first(report: Callable, depth: int, shapes, ok, payload):
  """Host side of `error_if`: the first failing member's ``report``."""
  if bool(np.all(ok)):
    # Only reached if a transformation evaluated both branches; the
    # conditional then discards this value.
    return jax.tree_util.tree_map(
        lambda s: np.zeros(s.shape, s.dtype), shapes)
  for _ in range(depth):
    members, payload = payload
    first = int(np.flatnonzero(~np.asarray(members, bool))[0])
    payload = jax.tree_util.tree_map(lambda a, i=first: a[i], payload)
  report(*payload)
  raise KernelOverflowError(
      "a kernel computation found infinite or NaN values, which its "
      "direct recomputation did not reproduce.")
