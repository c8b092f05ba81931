"""``K(x, x_M)`` -- training points against Nystrom centres -- in row blocks.

`RowStore` holds the ``(n, m)`` cross kernel(s) of the training inputs and
``m`` centres as ``b``-row blocks in a zarr group on disk, created and owned
by the solver (`SolverStore`: a store of other inputs, another network,
other centres or another block size is refused with `StoreMismatchError`).
Resumable like `TriangleStore`: a row block's ``done`` flag is written after
its data, and `fill` computes exactly the unflagged blocks. The Nystrom
solver reads one row block at a time, so its memory is ``O(b m)`` for the
cross kernel however large ``n m`` is; the disk holds ``4 n m`` bytes in
float32.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from ..batching.job import fingerprint
from ..batching.progress import make_progress
from .block_kernel import BlockKernel
from .solver_store import SolverStore, kernel_meta

__all__ = ["RowStore"]


class RowStore(SolverStore):
  """Row blocks of ``K(x, xc)`` (see the module docstring).

  Args:
    kernel: the `BlockKernel` (its ``block_size`` is the rows per block).
    x: ``(n, ...)`` training inputs.
    xc: ``(m, ...)`` centres.
    path: the store's directory.
  """

  ATTR = "widenets_nystrom_rows"
  FORMAT = 1
  WHAT = "Nystrom cross-kernel store"

  def __init__(self, kernel: BlockKernel, x: np.ndarray, xc: np.ndarray,
               path: str):
    self.kernel, self.x, self.xc = kernel, x, xc
    self.n, self.m, self.b = x.shape[0], xc.shape[0], kernel.block_size
    self.nb = -(-self.n // self.b)
    meta = kernel_meta(kernel, x, centres=fingerprint(xc), m=int(self.m))
    super().__init__(meta, path, extra_keys=("m", "centres"))

  def _create(self, group) -> None:
    dtype = self.kernel.dtype or np.asarray(next(iter(
        self.kernel(self.x[:1], self.xc[:1]).values()))).dtype
    for g in self.kernel.kinds:
      group.create_array(f"k_{g}", shape=(self.n, self.m),
                         chunks=(self.b, self.m), dtype=dtype, fill_value=0,
                         compressors=None, overwrite=True)
    group.create_array("done", shape=(self.nb,), chunks=(1,), dtype="uint8",
                       fill_value=0, overwrite=True)

  def rows(self, i: int) -> slice:
    return slice(i * self.b, min(self.n, (i + 1) * self.b))

  def fill(self, progress=False, callback: Optional[Callable] = None) -> dict:
    """Computes the missing row blocks (all kinds at once); returns
    ``{'computed', 'skipped'}``; ``callback(i)`` after each block."""
    done = np.asarray(self.group["done"][...]).astype(bool)
    todo = [i for i in range(self.nb) if not done[i]]
    bar = make_progress(progress, self.nb, self.nb - len(todo),
                        desc="K_NM row blocks")
    try:
      for i in todo:
        blocks = self.kernel.cross(self.x[self.rows(i)], self.xc)
        for g, v in blocks.items():
          self.group[f"k_{g}"][self.rows(i)] = v
        self.group["done"][i] = 1  # after the data: see the module doc
        bar.update(1)
        if callback is not None:
          callback(i)
    finally:
      bar.close()
    return {"computed": len(todo), "skipped": self.nb - len(todo)}

  def block(self, kind: str, i: int) -> np.ndarray:
    """Row block ``i`` of the ``kind`` kernel: ``(len(rows(i)), m)``."""
    return np.asarray(self.group[f"k_{kind}"][self.rows(i)])
