"""One compiled program per architecture, not per hyperparameter value.

A layer constructor decorated with `hyperparameters` records, on the
``kernel_fn`` it returns, an `Architecture` node: its float hyperparameters
(``W_std``, ``b_std``, activation parameters...) as a pytree, a hashable
*structure* (the layer kind and every other argument), and how to rebuild
the layer from other hyperparameter values. Combinators record their
children's nodes. `shared_call` then runs ``kernel_fn`` through one
module-level ``jax.jit`` whose static key is the structure and whose traced
arguments are the hyperparameters: networks that differ only in those values
share one program, a sweep compiles once, and ``jax.vmap`` / ``jax.grad``
over the hyperparameters work (`with_hyperparameters`).

Correctness does not depend on every float being declared: an undeclared
argument is part of the structure, so a network differing in it gets its own
program (as without sharing).

Prototype for issue 15 (item 2); `KernelFn.__call__` is to dispatch here
once the call orchestration takes hyperparameters as arguments.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import numbers
from typing import Any, Callable, Optional

import jax
import numpy as np

__all__ = ["hyperparameters", "record", "Architecture", "architecture",
           "shared_call", "with_hyperparameters"]


@dataclasses.dataclass(frozen=True, eq=False)
class Architecture:
  """A network's structure, hyperparameter values and rebuild function.

  Attributes:
    kind: the layer or combinator name.
    static: hashable non-hyperparameter arguments.
    hyper: this node's hyperparameters (a dict of scalars) or, for a
      combinator, the tuple of its children's.
    rebuild: ``rebuild(hyper) -> (init_fn, apply_fn, kernel_fn)`` of the
      same structure with other hyperparameter values.
    children: the children's nodes (combinators), else ``()``.
  """
  kind: str
  static: Any
  hyper: Any
  rebuild: Callable
  children: tuple = ()

  @property
  def structure(self):
    return (self.kind, self.static, tuple(_dict_keys(self.hyper)),
            tuple(c.structure for c in self.children))


def _dict_keys(h):
  return sorted(h) if isinstance(h, dict) else ()


def _is_scalar(v) -> bool:
  if isinstance(v, bool):
    return False
  if isinstance(v, numbers.Real):
    return True
  return getattr(v, "shape", None) == () and np.issubdtype(
      getattr(v, "dtype", np.dtype(object)), np.floating)


def _freeze(v):
  if isinstance(v, dict):
    return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
  if isinstance(v, (list, tuple)):
    return tuple(_freeze(x) for x in v)
  try:
    hash(v)
    return v
  except TypeError:
    return ("unhashable", id(v))


def architecture(kernel_fn) -> Optional[Architecture]:
  """The `Architecture` recorded on ``kernel_fn``, or None."""
  return getattr(kernel_fn, "architecture", None)


def hyperparameters(*names: str):
  """Decorator for a layer constructor whose arguments ``names`` are float
  hyperparameters (read by its kernel rule as plain numbers)."""

  def decorate(make):
    sig = inspect.signature(make)

    @functools.wraps(make)
    def wrapped(*args, **kwargs):
      triple = make(*args, **kwargs)
      bound = sig.bind(*args, **kwargs)
      bound.apply_defaults()
      hyper = {n: bound.arguments[n] for n in names
               if _is_scalar(bound.arguments.get(n))}
      static = tuple((k, _freeze(v)) for k, v in bound.arguments.items()
                     if k not in hyper)

      def rebuild(values):
        b = sig.bind(*args, **kwargs)
        b.apply_defaults()
        b.arguments.update(values)
        return make(*b.args, **b.kwargs)

      _attach(triple[2], Architecture(make.__qualname__, static, hyper,
                                      rebuild))
      return triple

    return wrapped

  return decorate


def record(kernel_fn, combinator: Callable, layers, static=()) -> None:
  """Records a combinator's node: ``combinator(*layers, *static)``."""
  nodes = tuple(architecture(l[2]) for l in layers)
  if any(n is None for n in nodes):
    return

  def rebuild(values):
    return combinator(*[n.rebuild(v) for n, v in zip(nodes, values)],
                      *static)

  _attach(kernel_fn, Architecture(combinator.__name__, _freeze(static),
                                  tuple(n.hyper for n in nodes), rebuild,
                                  nodes))


def _attach(kernel_fn, node: Architecture) -> None:
  try:
    kernel_fn.architecture = node
  except AttributeError:  # a foreign kernel_fn: no sharing
    pass


class _Key:
  """Static jit key: equal for networks of equal structure."""

  def __init__(self, node: Architecture):
    self.node = node
    self.structure = node.structure
    self._hash = hash(self.structure)

  def __hash__(self):
    return self._hash

  def __eq__(self, other):
    return isinstance(other, _Key) and self.structure == other.structure


@functools.partial(jax.jit, static_argnames=("key", "get", "static_kwargs"))
def _run(x1, x2, hyper, dynamic, key, get, static_kwargs):
  kernel_fn = key.node.rebuild(hyper)[2]
  return kernel_fn(x1, x2, get, **dict(static_kwargs), **dynamic)


def shared_call(kernel_fn, x1, x2=None, get=None, **kwargs):
  """``kernel_fn(x1, x2, get, **kwargs)`` through the program shared by all
  networks of ``kernel_fn``'s structure (a plain call if none was
  recorded)."""
  node = architecture(kernel_fn)
  if node is None:
    return kernel_fn(x1, x2, get, **kwargs)
  dynamic = {k: v for k, v in kwargs.items()
             if isinstance(v, (jax.Array, np.ndarray))}
  static = tuple(sorted((k, v) for k, v in kwargs.items()
                        if k not in dynamic))
  # Python floats are traced (weakly typed) jit arguments: no new program
  # per value.
  return _run(x1, x2, node.hyper, dynamic, _Key(node),
              get if get is None or isinstance(get, str) else tuple(get),
              static)


def with_hyperparameters(kernel_fn, hyper):
  """The ``kernel_fn`` of the same architecture with hyperparameters
  ``hyper`` (a pytree like ``architecture(kernel_fn).hyper``; leaves may be
  traced, e.g. under ``jax.vmap``)."""
  node = architecture(kernel_fn)
  if node is None:
    raise ValueError(f"{getattr(kernel_fn, '__name__', kernel_fn)}: no "
                     f"recorded architecture (a layer without declared "
                     f"hyperparameters, or a foreign kernel_fn).")
  return node.rebuild(hyper)[2]
