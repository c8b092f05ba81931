"""`BlockJob`: a kernel function bound to its arguments, run one block at a time.

Calling convention (as neural-tangents' ``batch``): the kernel function is
``kernel_fn(x1, x2, *args, **kwargs)``.

* positional ``args``: array pytrees (e.g. the ``params`` of an empirical
  kernel, the ``key`` of a Monte Carlo sample) are passed whole to every block;
  anything else (``get``) is static.
* keyword ``kwargs``: ``rng=key`` is split into one key per row block and one
  per column block and passed as ``rng=(key_i, key_j)``; a pair
  ``name=(v1, v2)`` of arrays with a leading sample axis is sliced like ``x1``
  and ``x2``; other arrays are passed whole; anything else is static.

The job jits ``kernel_fn`` on one block (the jitted function is rebuilt after
pickling, so a job can travel to Dask workers).
"""
from __future__ import annotations

import collections
import functools
import hashlib
import re
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from . import blocks
from .._tracing import freeze_static, is_concrete

__all__ = ["BlockJob", "is_array_tree", "describe_fn", "fingerprint",
           "all_finite", "has_tracers"]


def is_array_tree(v) -> bool:
  """Whether ``v`` is a non-empty pytree whose leaves are all arrays."""
  if v is None:
    return False
  leaves = jax.tree_util.tree_leaves(v)
  return bool(leaves) and all(isinstance(l, (np.ndarray, jax.Array))
                              for l in leaves)


def _is_pair(v) -> bool:
  return (isinstance(v, tuple) and len(v) == 2 and not hasattr(v, "_fields")
          and all(a is None or is_array_tree(a) for a in v)
          and any(a is not None for a in v))


# Jitted block functions by (kernel_fn, static arguments, ...), oldest first.
_FN_CACHE: "collections.OrderedDict" = collections.OrderedDict()


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def describe_fn(fn) -> str:
  """A description of a function stable across processes (no addresses)."""
  name = getattr(fn, "name", None) or getattr(fn, "__qualname__", None) or \
      getattr(fn, "__name__", None)
  text = f"{type(fn).__module__}.{type(fn).__qualname__}:{name}:{fn!r}"
  return _ADDRESS.sub("", text)


def _static_repr(v) -> str:
  return _ADDRESS.sub("", repr(v))


def fingerprint(*trees) -> str:
  """sha256 over the bytes, shapes and dtypes of every array leaf."""
  h = hashlib.sha256()
  for tree in trees:
    for leaf in jax.tree_util.tree_leaves(tree):
      a = np.ascontiguousarray(np.asarray(leaf))
      h.update(f"{a.shape}{a.dtype.str};".encode())
      h.update(memoryview(a).cast("B"))
    h.update(b"|")
  return h.hexdigest()


def all_finite(tree):
  """One boolean: every inexact array leaf of ``tree`` is finite."""
  ok = jnp.asarray(True)
  for leaf in jax.tree_util.tree_leaves(tree):
    if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact):
      ok = ok & jnp.all(jnp.isfinite(leaf))
  return ok


def _closure_arrays(fn, depth: int = 2) -> list:
  """Arrays held in ``fn``'s closure cells (and nested closures)."""
  found = []
  for cell in getattr(fn, "__closure__", None) or ():
    try:
      v = cell.cell_contents
    except ValueError:  # empty cell
      continue
    if callable(v) and depth > 0:
      found += _closure_arrays(v, depth - 1)
      continue
    try:
      leaves = jax.tree_util.tree_leaves(v)
    except Exception:  # noqa: BLE001 - not a pytree
      continue
    found += [l for l in leaves if isinstance(l, (np.ndarray, jax.Array))]
  return found


def _host(a):
  """A numpy copy of a concrete array; a tracer as it is."""
  return np.asarray(a) if is_concrete(a) else a


def has_tracers(tree) -> bool:
  """Whether any array leaf of ``tree`` is a tracer (inside `jit`, `grad`,
  `vmap`: its value is not known)."""
  return any(isinstance(leaf, jax.Array) and not is_concrete(leaf)
             for leaf in jax.tree_util.tree_leaves(tree))


class BlockJob:
  """``kernel_fn`` with its non-input arguments sorted into static/dynamic."""

  def __init__(self, kernel_fn, args: tuple = (), kwargs: Optional[dict] = None):
    kwargs = dict(kwargs or {})
    self.kernel_fn = kernel_fn
    self.static_args: dict[int, Any] = {}
    self.array_args: dict[int, Any] = {}
    for i, a in enumerate(args):
      (self.array_args if is_array_tree(a) else self.static_args)[i] = a
    self.n_args = len(args)
    self.static_kwargs: dict[str, Any] = {}
    self.array_kwargs: dict[str, Any] = {}
    self.pair_kwargs: dict[str, tuple] = {}
    self.rng = None
    for k, v in kwargs.items():
      if k == "rng" and is_array_tree(v):
        self.rng = v
      elif _is_pair(v):
        self.pair_kwargs[k] = v
      elif is_array_tree(v):
        self.array_kwargs[k] = v
      else:
        self.static_kwargs[k] = v
    self._jitted: dict = {}
    # Set when kernel_fn cannot be traced (it compiles ahead of time or runs
    # host code): blocks are then called eagerly, one by one.
    self.eager = False

  # Pickling (Dask): drop jitted functions, they are rebuilt on first use.
  def __getstate__(self):
    state = dict(self.__dict__)
    state["_jitted"] = {}
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)

  # -- metadata ----------------------------------------------------------------
  def description(self) -> dict:
    """The architecture and static arguments, for store metadata."""
    return {
        "kernel_fn": describe_fn(self.kernel_fn),
        "static_args": {str(i): _static_repr(v)
                        for i, v in sorted(self.static_args.items())},
        "static_kwargs": {k: _static_repr(v)
                          for k, v in sorted(self.static_kwargs.items())},
        "array_args": sorted(self.array_args),
        "array_kwargs": sorted(self.array_kwargs),
        "pair_kwargs": sorted(self.pair_kwargs),
        "rng": self.rng is not None,
    }

  def arrays_fingerprint(self) -> str:
    """Hash of the array arguments (params, keys, pairs) of the call, and of
    arrays the kernel function closes over (a Monte Carlo function's key,
    an empirical function's captured params)."""
    return fingerprint([self.array_args[i] for i in sorted(self.array_args)],
                       [self.array_kwargs[k] for k in sorted(self.array_kwargs)],
                       [self.pair_kwargs[k] for k in sorted(self.pair_kwargs)],
                       self.rng, _closure_arrays(self.kernel_fn))

  def holds_tracers(self) -> bool:
    """Whether the call's arrays (params, keys, pairs, or arrays the kernel
    function closes over or is a `functools.partial` of) include tracers."""
    fn = self.kernel_fn
    bound = (getattr(fn, "args", ()), getattr(fn, "keywords", None)) \
        if isinstance(fn, functools.partial) else ()
    return has_tracers([self.array_args, self.array_kwargs, self.pair_kwargs,
                        self.rng, _closure_arrays(fn), bound])

  def with_get(self, get) -> "BlockJob":
    """The same job asking for ``get`` instead (positional or keyword)."""
    args = [None] * self.n_args
    for i, v in {**self.static_args, **self.array_args}.items():
      args[i] = v
    kwargs = {**self.static_kwargs, **self.array_kwargs, **self.pair_kwargs}
    if self.rng is not None:
      kwargs["rng"] = self.rng
    if "get" in kwargs or not args:
      kwargs["get"] = get
    else:
      args[0] = get
    return BlockJob(self.kernel_fn, tuple(args), kwargs)

  def self_job(self, get, first: bool = True) -> "BlockJob":
    """``with_get(get)`` for the kernel of ``x1`` (``first``) or ``x2`` with
    itself: pair kwargs ``(v1, v2)`` become ``(v1, v1)`` or ``(v2, v2)``."""
    job = self.with_get(get)
    job.pair_kwargs = {k: (v[0], v[0]) if first else (v[1], v[1])
                       for k, v in job.pair_kwargs.items()}
    return job

  @property
  def get(self):
    if "get" in self.static_kwargs:
      return self.static_kwargs["get"]
    return self.static_args.get(0)

  # -- per-block values ------------------------------------------------------
  def row_keys(self, grid: blocks.Grid):
    """``(row_keys, col_keys)`` for ``rng``, or ``(None, None)``."""
    if self.rng is None:
      return None, None
    k1, k2 = jax.random.split(self.rng)
    return jax.random.split(k1, grid.nb1), jax.random.split(k2, grid.nb2)

  def padded_pairs(self, grid: blocks.Grid):
    """Pair kwargs padded like the inputs: ``({name: v1}, {name: v2})``."""
    p1, p2 = {}, {}
    for k, (v1, v2) in self.pair_kwargs.items():
      if v2 is None and grid.symmetric:
        v2 = v1
      pad = lambda v, n: None if v is None else jax.tree_util.tree_map(
          lambda a: blocks.pad_rows(_host(a), n), v)
      p1[k], p2[k] = pad(v1, grid.padded1), pad(v2, grid.padded2)
    return p1, p2

  # -- the jitted block function ------------------------------------------------
  def _cache_key(self, x2_is_none: bool, checked: bool):
    return (self.kernel_fn, self.n_args, x2_is_none, checked,
            freeze_static(sorted(self.static_args.items())),
            freeze_static(sorted(self.static_kwargs.items())),
            tuple(sorted(self.array_args)), tuple(sorted(self.array_kwargs)),
            tuple(sorted(self.pair_kwargs)), self.rng is not None)

  def fn(self, x2_is_none: bool, checked: bool = False):
    """``f(x1b, x2b, array_args, array_kwargs, pair1, pair2, keys)`` jitted.

    ``checked``: ``f`` returns ``(output, all_finite(output))``, the check
    fused into the block's computation (``kernel_fn``'s own overflow checks
    cannot run inside a trace).

    Jitted functions are shared by jobs with the same kernel function and
    static arguments, so calling a batched function again does not
    recompile.
    """
    slot = (x2_is_none, checked)
    if slot not in self._jitted:
      try:
        key = self._cache_key(x2_is_none, checked)
        hash(key)
      except TypeError:
        key = None
      if key is not None and key in _FN_CACHE:
        self._jitted[slot] = _FN_CACHE[key]
        _FN_CACHE.move_to_end(key)
    if slot not in self._jitted:
      static_args, static_kwargs = self.static_args, self.static_kwargs
      n_args, kernel_fn = self.n_args, self.kernel_fn

      def block(x1b, x2b, array_args, array_kwargs, pair1, pair2, keys):
        args = [None] * n_args
        for i, v in static_args.items():
          args[i] = v
        for i, v in array_args.items():
          args[int(i)] = v
        kw = dict(static_kwargs)
        kw.update(array_kwargs)
        for k in pair1:
          kw[k] = (pair1[k], pair2[k])
        if keys is not None:
          kw["rng"] = keys
        out = kernel_fn(x1b, None if x2_is_none else x2b, *args, **kw)
        return (out, all_finite(out)) if checked else out

      self._jitted[slot] = (block, jax.jit(block))
      if key is not None:
        _FN_CACHE[key] = self._jitted[slot]
        while len(_FN_CACHE) > 64:
          _FN_CACHE.popitem(last=False)
    plain, jitted = self._jitted[slot]
    return plain if self.eager else jitted

  def plain_fn(self, x2_is_none: bool):
    """`fn` not jitted and not checked: ``kernel_fn`` runs with concrete
    blocks, so its own input and overflow checks run (and name the layer)."""
    self.fn(x2_is_none)
    return self._jitted[(x2_is_none, False)][0]

  def dynamic(self):
    """``(array_args, array_kwargs)`` with string keys (jit-friendly)."""
    return ({str(i): v for i, v in self.array_args.items()},
            dict(self.array_kwargs))

  def structure(self, x2_is_none: bool, *args):
    """Output of one block as shapes (``jax.eval_shape``), without computing
    it; for a kernel function that cannot be traced, switches the job to
    eager calls and returns one real block."""
    try:
      return jax.eval_shape(self.fn(x2_is_none), *args)
    except Exception as traced_error:  # noqa: BLE001 - retried eagerly below
      self.eager = True
      try:
        return self.fn(x2_is_none)(*args)
      except Exception:
        self.eager = False
        raise traced_error
