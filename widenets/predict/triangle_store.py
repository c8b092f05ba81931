"""The upper triangle of a symmetric training kernel, block by block.

`TriangleStore` holds the blocks ``K[i, j]`` (``i <= j``, ``b x b`` examples
each) of the ``(n, n)`` training kernel(s) -- in a zarr group on disk
(``path``) or in memory (``path=None``). Lower blocks are never stored: a
product ``K v`` reads row panel ``i`` (blocks ``i..nb``) once and uses it
twice, ``y_i += K_{i,>=i} v_{>=i}`` and ``y_{>i} += K_{i,>i}^T v_i``, so the
disk holds ``n^2 / 2`` entries and one product reads them once.

Resumable: a block's ``done`` flag is written after its data, so a job killed
at any point loses at most the block being written; `fill` computes exactly
the unflagged blocks. Checkpoints of iterative solvers (`save_state` /
`load_state`) are ``.npz`` files in the store, replaced atomically
(``os.replace``), so a kill while writing one keeps the previous one.

The store's ownership, identity checks (a store of other inputs, another
network or another block size is refused with `StoreMismatchError`) and
solver checkpoints are those of every solver store (`SolverStore`).
`read_panel` reads a row panel from the store's path alone (no kernel
function), which is what a Dask worker does (widenets.scale.dask_cg).
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from ..batching.progress import make_progress
from ..batching.store import import_zarr
from .block_kernel import BlockKernel
from .solver_store import SolverStore, StoreMismatchError, kernel_meta

__all__ = ["TriangleStore", "StoreMismatchError", "FillStats", "read_panel",
           "panel_product", "store_layout"]


def store_layout(path: str) -> dict:
  """``{'n', 'block_size', 'kinds'}`` of the triangle store at ``path``."""
  meta = import_zarr().open_group(path, mode="r").attrs.asdict().get(
      TriangleStore.ATTR)
  if meta is None:
    raise ValueError(f"{path!r} is not a widenets triangle kernel store.")
  return {"n": meta["n"], "block_size": meta["block_size"],
          "kinds": meta["kernel"]["kinds"]}


def read_panel(path: str, kind: str, i: int, n: int, b: int) -> np.ndarray:
  """Row panel ``i`` (``K[rows(i), rows(i).start:]``) of the store at
  ``path``, read from disk only."""
  r0, r1 = i * b, min(n, (i + 1) * b)
  group = import_zarr().open_group(path, mode="r")
  return np.asarray(group[f"k_{kind}"][r0:r1, r0:])


def panel_product(p: np.ndarray, v: np.ndarray, r0: int) -> np.ndarray:
  """Panel ``p`` (rows ``r0:r0 + len(p)``, columns ``r0:``) times ``v``
  ``(n, c)``, both halves of the symmetric kernel: the ``(n - r0, c)`` part
  of ``K v`` that starts at row ``r0``."""
  nr = p.shape[0]
  p = p.astype(np.result_type(v.dtype, np.float32), copy=False)
  out = p.T @ v[r0:r0 + nr]
  out[:nr] = p @ v[r0:]
  return out


class FillStats:
  """Blocks computed by this call and found finished in the store."""

  def __init__(self, total: int):
    self.total, self.computed, self.skipped = total, 0, 0
    self.computed_blocks: list = []

  def __repr__(self):
    return (f"FillStats(total={self.total}, computed={self.computed}, "
            f"skipped={self.skipped})")


class TriangleStore(SolverStore):
  """Upper-triangle kernel blocks of ``x`` (see the module docstring).

  Args:
    kernel: the `BlockKernel` (its ``block_size`` is the block side).
    x: ``(n, ...)`` training inputs (NumPy).
    path: a directory for a zarr store, or None (blocks kept in memory).
  """

  ATTR = "widenets_triangle"
  FORMAT = 1

  def __init__(self, kernel: BlockKernel, x: np.ndarray,
               path: Optional[str] = None):
    self.kernel, self.x = kernel, x
    self.n, self.b = x.shape[0], kernel.block_size
    self.nb = -(-self.n // self.b)
    self._blocks: dict = {}
    super().__init__(kernel_meta(kernel, x), path)
    self._group = self.group

  def _create(self, group) -> None:
    for g in self.kernel.kinds:
      group.create_array(f"k_{g}", shape=(self.n, self.n),
                         chunks=(self.b, self.b), dtype=self._dtype(),
                         fill_value=0, compressors=None, overwrite=True)
    group.create_array("done", shape=(self.nb, self.nb), chunks=(1, 1),
                       dtype="uint8", fill_value=0, overwrite=True)

  def _dtype(self):
    if self.kernel.dtype is not None:
      return self.kernel.dtype
    return np.asarray(next(iter(self.kernel(self.x[:1]).values()))).dtype

  # -- blocks ------------------------------------------------------------------
  def rows(self, i: int) -> slice:
    return slice(i * self.b, min(self.n, (i + 1) * self.b))

  def tasks(self):
    return [(i, j) for i in range(self.nb) for j in range(i, self.nb)]

  def done_mask(self) -> np.ndarray:
    if self._group is None:
      mask = np.zeros((self.nb, self.nb), bool)
      for ij in self._blocks:
        mask[ij] = True
      return mask
    return np.asarray(self._group["done"][...]).astype(bool)

  def _write(self, i: int, j: int, blocks: dict) -> None:
    if self._group is None:
      self._blocks[(i, j)] = blocks
      return
    r, c = self.rows(i), self.rows(j)
    for g, v in blocks.items():
      self._group[f"k_{g}"][r, c] = v
    self._group["done"][i, j] = 1  # after the data: see the module doc

  def fill(self, progress=False, callback: Optional[Callable] = None
           ) -> FillStats:
    """Computes the missing blocks; ``callback(i, j)`` after each one."""
    done = self.done_mask()
    tasks = self.tasks()
    stats = FillStats(len(tasks))
    todo = [t for t in tasks if not done[t]]
    stats.skipped = len(tasks) - len(todo)
    bar = make_progress(progress, len(tasks), stats.skipped,
                        desc="kernel blocks")
    try:
      for i, j in todo:
        xi = self.x[self.rows(i)]
        blocks = self.kernel(xi) if i == j else \
            self.kernel(xi, self.x[self.rows(j)], pad2=True)
        self._write(i, j, blocks)
        stats.computed += 1
        stats.computed_blocks.append((i, j))
        bar.update(1)
        if callback is not None:
          callback(i, j)
    finally:
      bar.close()
    return stats

  def panel(self, kind: str, i: int) -> np.ndarray:
    """Row panel ``K[rows(i), rows(i).start:]`` (blocks ``i..nb``)."""
    if self._group is None:
      return np.concatenate([self._blocks[(i, j)][kind]
                             for j in range(i, self.nb)], axis=1)
    r = self.rows(i)
    return np.asarray(self._group[f"k_{kind}"][r, r.start:])

  def matvec(self, kind: str, v: np.ndarray) -> np.ndarray:
    """``K v`` for ``v`` of shape ``(n, c)``, one pass over the triangle."""
    out = np.zeros((self.n, v.shape[1]), np.result_type(v.dtype, np.float32))
    for i in range(self.nb):
      r = self.rows(i)
      out[r.start:] += panel_product(self.panel(kind, i), v, r.start)
    return out

  def diagonal(self, kind: str) -> np.ndarray:
    parts = []
    for i in range(self.nb):
      r = self.rows(i)
      if self._group is None:
        blk = self._blocks[(i, i)][kind]
      else:
        blk = np.asarray(self._group[f"k_{kind}"][r, r])
      parts.append(np.diagonal(blk))
    return np.concatenate(parts)
