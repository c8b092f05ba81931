"""Collecting finished blocks into full kernel leaves (memory or store)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import blocks
from .blocks import row_source

__all__ = ["MemorySink", "StoreSink", "trim", "build_output", "row_source"]


def trim(spec: blocks.LeafSpec, v, grid: blocks.Grid, i: int, j: int):
  """The unpadded part of a block's leaf, or None if this block does not
  provide it (row leaves come from one block per row, etc.)."""
  r, c = grid.valid(i, j)
  if spec.kind == blocks.PAIR:
    return v[:r, :c]
  if spec.kind == blocks.ROW:
    return v[:r] if j == row_source(grid, i) else None
  if spec.kind == blocks.COL:
    return v[:c] if i == 0 else None
  if spec.kind == blocks.CONST:
    return v if (i, j) == (0, 0) else None
  return None  # flags are computed on the host; rowrow/colcol elsewhere


class MemorySink:
  """Keeps blocks on a device (then concatenates) or writes them into host
  arrays as they finish (``store_on_device=False``)."""

  def __init__(self, specs, grid: blocks.Grid, on_device: bool, device=None):
    self.specs, self.grid = specs, grid
    self.on_device, self.device = on_device, device
    self.parts = {k: {} for k in range(len(specs))}
    self.host = {}
    if not on_device:
      for k, s in enumerate(specs):
        if s.kind in (blocks.PAIR, blocks.ROW, blocks.COL):
          self.host[k] = np.empty(blocks.full_shape(s, grid), s.dtype)

  def put(self, i: int, j: int, leaves: dict, mirror: bool) -> None:
    grid = self.grid
    for k, spec in enumerate(self.specs):
      v = leaves.get(spec.path)
      v = None if v is None else trim(spec, v, grid, i, j)
      if v is None:
        continue
      if self.on_device:
        if self.device is not None:
          v = jax.device_put(v, self.device)
        self.parts[k][(i, j)] = v
        if mirror and spec.kind == blocks.PAIR:
          self.parts[k][(j, i)] = blocks.mirror(v, spec.mirror)
        continue
      v = np.asarray(v)
      if spec.kind == blocks.PAIR:
        r, c = grid.rows(i), grid.cols(j)
        self.host[k][r, c] = v
        if mirror:
          self.host[k][c, r] = blocks.mirror(v, spec.mirror)
      elif spec.kind == blocks.ROW:
        self.host[k][grid.rows(i)] = v
      elif spec.kind == blocks.COL:
        self.host[k][grid.cols(j)] = v
      else:
        self.parts[k][(i, j)] = v

  def leaf(self, k: int):
    """The assembled leaf ``k`` (pair/row/col/const); frees its blocks."""
    spec, grid = self.specs[k], self.grid
    if not self.on_device and k in self.host:
      return self.host.pop(k)
    parts = self.parts[k]
    if spec.kind == blocks.CONST:
      return parts[(0, 0)]
    if spec.kind == blocks.ROW:
      return jnp.concatenate(
          [parts.pop((i, row_source(grid, i))) for i in range(grid.nb1)], 0)
    if spec.kind == blocks.COL:
      return jnp.concatenate([parts.pop((0, j)) for j in range(grid.nb2)], 0)
    rows = []
    for i in range(grid.nb1):
      rows.append(jnp.concatenate(
          [parts.pop((i, j)) for j in range(grid.nb2)], axis=1))
    return rows[0] if len(rows) == 1 else jnp.concatenate(rows, axis=0)


class StoreSink:
  """Writes blocks to a `BlockStore` as they finish."""

  def __init__(self, store):
    self.store = store

  def put(self, i: int, j: int, leaves: dict, mirror: bool) -> None:
    grid = self.store.grid
    trimmed = {}
    for spec in self.store.specs:
      v = leaves.get(spec.path)
      v = None if v is None else trim(spec, v, grid, i, j)
      if v is not None:
        trimmed[spec.path] = np.asarray(v)
    self.store.write_block(i, j, trimmed, mirror)

  def leaf(self, k: int):
    return self.store.read_leaf(k)


def build_output(desc: dict, specs, grid: blocks.Grid, leaf_values: dict):
  """The user-facing output from assembled leaves ``{k: value}``."""
  values = []
  for k, spec in enumerate(specs):
    v = leaf_values.get(k)
    if grid.symmetric and spec.kind in (blocks.COL, blocks.COLCOL):
      v = None  # x2 is None: cov2/mask2 are None, as unbatched
    values.append(v)
  return blocks.unflatten_output(desc, values, blocks.fix_kernel_shapes(grid))
