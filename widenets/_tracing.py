"""What `jit` traces and what it keeps static, with public JAX only:
telling concrete arrays from tracers (`is_concrete`), and hashable stand-ins
for static arguments (`freeze_static`, `StaticArgs`)."""
from __future__ import annotations

import jax
import numpy as np

__all__ = ["is_concrete", "all_concrete", "freeze_static", "StaticArgs"]


def is_concrete(x) -> bool:
  """Whether ``x`` holds a value now (not a tracer inside `jit`/`vmap`).

  Asks for the array's shards rather than converting it (``np.asarray``
  would copy an (N, N) kernel to the host just to find out)."""
  if isinstance(x, (np.ndarray, np.generic, int, float, complex, bool)):
    return True
  try:
    x.addressable_shards  # raises on tracers
    return True
  except Exception:  # noqa: BLE001 - any failure means "not concrete"
    return False


def all_concrete(tree) -> bool:
  """Every leaf of ``tree`` is concrete (see `is_concrete`)."""
  return all(is_concrete(leaf) for leaf in jax.tree_util.tree_leaves(tree))


def freeze_static(v):
  """A hashable stand-in for a (nested) static argument value: dicts and
  sequences become tuples, unhashable leaves their ``repr``."""
  if isinstance(v, dict):
    return tuple(sorted((k, freeze_static(x)) for k, x in v.items()))
  if isinstance(v, (list, tuple)):
    return tuple(freeze_static(x) for x in v)
  try:
    hash(v)
    return v
  except TypeError:
    return repr(v)


class StaticArgs:
  """A dict of static values as one static `jit` argument: hashed and
  compared by `freeze_static` of its items, read as ``.value``."""

  def __init__(self, value: dict):
    self.value = value
    self._key = tuple(sorted((k, freeze_static(v)) for k, v in value.items()))

  def __hash__(self):
    return hash(self._key)

  def __eq__(self, other):
    return isinstance(other, StaticArgs) and self._key == other._key
