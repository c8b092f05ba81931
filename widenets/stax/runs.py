"""Runs of identical consecutive layers in `serial`, compiled as one loop.

XLA's compile time grows faster than linearly in the length of a straight-line
program of kernel rules (a deep convolutional `serial` network spent most of
its first call compiling). `serial` therefore finds runs where a block of
``p`` layers repeats ``r`` times and evaluates them as the block once (which
fixes the carried `Kernel` structure, e.g. channel counts and NTK shape) and
then a `jax.lax.scan` over the other ``r - 1`` repetitions, as `repeat` does;
a compiled program then grows linearly with the number of *distinct* blocks.

Two layers are the same when they are the same object, or when they are
`KernelFn`s made by the same layer factory with the same hyperparameters:
same name, requirements and code, and closures holding equal plain values
(numbers, strings, tuples, frozen dataclasses, ...) or, recursively, the
same functions. Anything else (arrays, foreign objects) must be the
identical object. A run whose block does not keep the kernel's structure,
or a run too short for a loop to compile faster (`MIN_REPEATS`;
`MIN_REPEATS_NO_SPATIAL` for blocks on covariances without spatial axes),
is left unrolled.
"""
from __future__ import annotations

import dataclasses
import fractions
import functools
import types
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from ..kernel import Kernel
from .covariance import n_spatial
from .overflow import FlagRecorder

__all__ = ["find_runs", "same_layer", "scan_block"]

# A run of fewer repetitions is left unrolled: the loop would not pay off
# (first calls, benchmarks/ISSUE15.md section 13: 3 x (Conv + Relu) and 4
# x (Conv + Relu) faster looped; 3 equal residual blocks about even).
MIN_REPEATS = 3
# Nor, on covariances without spatial axes (Dense and activation blocks,
# cheap to compile), does a run of fewer than this many: they compiled
# faster unrolled at 3 and 4 repetitions and looped from 6 on.
MIN_REPEATS_NO_SPATIAL = 5
# Longest block searched for (layers per repetition).
MAX_PERIOD = 8
# How deep closures are compared: a residual block (serial of parallel of
# serial) holds its layers about 20 levels down.
_MAX_DEPTH = 24
_PLAIN = (int, float, complex, str, bytes, bool, type(None), fractions.Fraction)


def _same_value(a, b, depth: int) -> bool:
  if a is b:
    return True
  if depth > _MAX_DEPTH or type(a) is not type(b):
    return False
  if isinstance(a, _PLAIN):
    return a == b
  if isinstance(a, (tuple, list)):
    return len(a) == len(b) and all(
        _same_value(x, y, depth + 1) for x, y in zip(a, b))
  if isinstance(a, dict):
    return a.keys() == b.keys() and all(
        _same_value(a[k], b[k], depth + 1) for k in a)
  if isinstance(a, (types.FunctionType, functools.partial)):
    return _same_function(a, b, depth + 1)
  if dataclasses.is_dataclass(a) and a.__dataclass_params__.frozen:
    return all(_same_value(getattr(a, f.name), getattr(b, f.name), depth + 1)
               for f in dataclasses.fields(a))
  if hasattr(a, "rule") and hasattr(a, "reqs"):
    return _same_kernel_fn(a, b, depth + 1)
  return False


def _cells(f) -> tuple:
  out = []
  for cell in f.__closure__ or ():
    try:
      out.append(cell.cell_contents)
    except ValueError:  # an empty cell
      out.append(_EMPTY)
  return tuple(out)


_EMPTY = object()


def _same_function(f, g, depth: int) -> bool:
  if f is g:
    return True
  if isinstance(f, functools.partial):
    return (isinstance(g, functools.partial) and
            _same_value(f.func, g.func, depth) and
            _same_value(f.args, g.args, depth) and
            _same_value(f.keywords, g.keywords, depth))
  return (isinstance(g, types.FunctionType) and
          f.__code__ is g.__code__ and f.__globals__ is g.__globals__ and
          _same_value(f.__defaults__, g.__defaults__, depth) and
          _same_value(f.__kwdefaults__, g.__kwdefaults__, depth) and
          _same_value(_cells(f), _cells(g), depth))


def _same_kernel_fn(a, b, depth: int) -> bool:
  attrs = ("name", "reqs", "_masks", "_set_shapes")
  if type(a) is not type(b) or any(
      getattr(a, n, None) != getattr(b, n, None) for n in attrs):
    return False
  return all(_same_value(getattr(a, n, None), getattr(b, n, None), depth)
             for n in ("rule", "_init_fn", "_mask_rule"))


def same_layer(a, b) -> bool:
  """Whether kernel functions ``a`` and ``b`` compute the same rule."""
  return _same_value(a, b, 0)


def find_runs(fns: Sequence) -> list[tuple[int, int, int]]:
  """``(start, period, repeats)`` of each maximal run, in order.

  Layers outside runs come back as ``(i, 1, 1)``. At each position the block
  length covering the most layers (with at least `MIN_REPEATS` repetitions)
  is taken greedily.
  """
  n = len(fns)
  same = functools.lru_cache(maxsize=None)(
      lambda i, j: same_layer(fns[i], fns[j]))
  out, i = [], 0
  while i < n:
    best = (1, 1)
    for p in range(1, min(MAX_PERIOD, (n - i) // MIN_REPEATS) + 1):
      r = 1
      while i + (r + 1) * p <= n and all(
          same(i + k, i + r * p + k) for k in range(p)):
        r += 1
      if r >= MIN_REPEATS and p * r > best[0] * best[1]:
        best = (p, r)
    out.append((i,) + best)
    i += best[0] * best[1]
  return out


def _avals(shapes):
  """Structure and (shape, dtype, weak_type) leaves of `jax.eval_shape`'s
  output; a loop carry must keep all of them."""
  leaves, treedef = jax.tree_util.tree_flatten(shapes)
  return treedef, [(x.shape, x.dtype, getattr(x, "weak_type", False))
                   for x in leaves]


def _min_loop(k) -> int:
  """Repetitions from which a run carrying ``k`` compiles as a loop."""
  kernels = jax.tree_util.tree_leaves(
      k, is_leaf=lambda l: isinstance(l, Kernel))
  if any(isinstance(kk, Kernel) and n_spatial(kk) for kk in kernels):
    return MIN_REPEATS
  return MIN_REPEATS_NO_SPATIAL


def _keeps_structure(block: Callable, k) -> bool:
  """Whether one more repetition of ``block`` leaves ``k``'s structure,
  shapes and dtypes as they are (a loop carry must)."""
  out = jax.eval_shape(lambda x: block(x, FlagRecorder()), k)
  return _avals(out) == _avals(jax.eval_shape(lambda x: x, k))


def scan_block(block: Callable, k, repeats: int, flags: FlagRecorder):
  """``block`` applied ``repeats`` times to ``k``; a loop where it can be.

  Args:
    block: ``(kernel, recorder) -> kernel`` (one repetition of the run);
      it records its layers' overflow flags in the recorder it is given.
    k: the carried kernel (a `Kernel` or a list of them).
    repeats: number of applications, >= 1.
    flags: the enclosing computation's recorder. Flags recorded inside the
      loop body leave it as loop outputs (a recorder of the body's own, not
      tracers of the body kept by the enclosing one), then are recorded once
      per layer for the whole run.
  """
  k = block(k, flags)  # fixes the carried structure
  if repeats == 1:
    return k
  # The cheap test first: a short run is not traced once more for nothing.
  if repeats < _min_loop(k) or not _keeps_structure(block, k):
    for _ in range(repeats - 1):
      k = block(k, flags)
    return k

  names = []

  def step(carry, _):
    body = flags.child()
    carry = block(carry, body)
    recorded = body.result()
    names[:] = recorded.names
    return carry, list(recorded.flags)

  k, oks = jax.lax.scan(step, k, None, repeats - 1)
  for name, ok in zip(names, oks):
    flags.record(name, jnp.all(ok))
  return k
