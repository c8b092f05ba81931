"""One compiled program per architecture, not per hyperparameter value.

A layer constructor decorated with `hyperparameters` records, on the
``kernel_fn`` it returns, an `Architecture` node: its float hyperparameters
(``W_std``, ``b_std``, activation parameters...) as a pytree, a hashable
*structure* (the layer kind and every other argument), and how to rebuild
the layer from other hyperparameter values. Combinators record their
children's nodes. A ``kernel_fn`` call on inputs then runs through one
module-level ``jax.jit`` (`compute`) whose static key is the structure and
whose traced arguments are the hyperparameters: networks that differ only in
those values share one program, a sweep compiles once, and ``jax.vmap`` /
``jax.grad`` over the hyperparameters work (`with_hyperparameters`).

Correctness does not depend on every float being declared: an undeclared
argument is part of the structure, so a network differing in it gets its own
program (as without sharing).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import numbers
from typing import Any, Callable, Optional

import jax
import numpy as np

from .._tracing import is_concrete

__all__ = ["hyperparameters", "record", "Architecture", "architecture",
           "compute", "concrete", "with_hyperparameters"]


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
        # Through `wrapped`: the rebuilt layer records its own node, whose
        # (perhaps traced) values a traced call's error path reads.
        b = sig.bind(*args, **kwargs)
        b.apply_defaults()
        b.arguments.update(values)
        return wrapped(*b.args, **b.kwargs)

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


def concrete(hyper) -> bool:
  """Whether every hyperparameter holds a value (not a tracer: a network
  built inside the user's own ``jit``/``vmap`` runs as it is)."""
  return all(is_concrete(leaf) for leaf in jax.tree_util.tree_leaves(hyper))


@functools.partial(jax.jit, static_argnames=("key", "slots", "config"))
def _compute(x1, x2, dynamic, values, key, slots, config):
  # Traced once per structure (and shapes, config): the network rebuilt with
  # traced hyperparameters computes what any network of this structure does.
  # Equal values share one tracer, so that `runs` still sees the repeated
  # layers of a deep network as the same and loops over them.
  leaves = [values[i] for i in slots]
  hyper = jax.tree_util.tree_unflatten(
      jax.tree_util.tree_structure(key.node.hyper), leaves)
  return key.node.rebuild(hyper)[2]._compute(x1, x2, dynamic, config,
                                             leaves)


def compute(node: Architecture, x1, x2, dynamic, config):
  """`KernelFn._compute` of the network ``node`` describes, through the one
  program of its structure: the distinct hyperparameter values are traced
  arguments (Python ints as floats, so that a rule computes with the number
  it would have seen), and which layers share a value is part of the key."""
  values, slots, index = [], [], {}
  for leaf in jax.tree_util.tree_leaves(node.hyper):
    v = float(leaf) if isinstance(leaf, numbers.Integral) else leaf
    key = (float(v), str(getattr(v, "dtype", "python")))
    if key not in index:
      index[key] = len(values)
      values.append(v)
    slots.append(index[key])
  return _compute(x1, x2, dynamic, values, _Key(node), tuple(slots), config)


def with_hyperparameters(kernel_fn, hyper):
  """The ``kernel_fn`` of the same architecture with hyperparameters
  ``hyper`` (a pytree like ``architecture(kernel_fn).hyper``; leaves may be
  traced, e.g. under ``jax.vmap`` or ``jax.grad``)."""
  node = architecture(kernel_fn)
  if node is None:
    raise ValueError(f"{getattr(kernel_fn, '__name__', kernel_fn)}: no "
                     f"recorded architecture (a layer without declared "
                     f"hyperparameters, or a foreign kernel_fn).")
  return node.rebuild(hyper)[2]
