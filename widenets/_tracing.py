"""Telling concrete arrays from tracers with public JAX only."""
from __future__ import annotations

import jax
import numpy as np

__all__ = ["is_concrete", "all_concrete"]


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
