"""CG products over a triangle kernel store, run where the row panels live.

A `TriangleStore` (written by `BlockCG`, or by the workers themselves) is
split into row panels, each owned by one worker for the whole solve
(`assign_panels` balances their sizes: panel ``i`` holds ``nb - i`` blocks).
For a product ``K V`` each worker reads only its own panels from the zarr
store and returns the ``(n, c)`` sum of their contributions
(`owned_product`), so only ``(n, c)`` arrays travel: the kernel never
crosses to one process. `fill_owned` computes a worker's missing blocks the
same way, so the kernel phase is spread too.

The functions here run on the workers and take only picklable arguments
(paths, indices, arrays).
"""
from __future__ import annotations

import resource
from typing import Callable, Sequence

import numpy as np

from ..batching.store import import_zarr
from ..predict.block_kernel import BlockKernel
from ..predict.triangle_store import panel_product, read_panel

__all__ = ["assign_panels", "owned_product", "fill_owned", "peak_rss_bytes"]


def assign_panels(nb: int, workers: Sequence[str]) -> dict:
  """``{worker: [panel, ...]}``: the largest panel to the least loaded."""
  load = {w: 0 for w in workers}
  owned: dict = {w: [] for w in workers}
  for i in range(nb):  # panel i has nb - i blocks: largest first
    w = min(workers, key=lambda k: (load[k], k))
    owned[w].append(i)
    load[w] += nb - i
  return owned


def owned_product(path: str, kind: str, n: int, b: int, v: np.ndarray,
                  panels: Sequence[int]) -> np.ndarray:
  """``sum over panels`` of their part of ``K v``: ``(n, c)``."""
  out = np.zeros((n, v.shape[1]), np.result_type(v.dtype, np.float32))
  for i in panels:
    r0 = i * b
    out[r0:] += panel_product(read_panel(path, kind, i, n, b), v, r0)
  return out


def fill_owned(path: str, kernel_fn: Callable, kinds: tuple, b: int,
               kwargs: tuple, x: np.ndarray, panels: Sequence[int]) -> int:
  """Computes the missing blocks ``(i, j >= i)`` of ``panels``, each flagged
  done after its data (as `TriangleStore.fill`); returns how many."""
  kernel = BlockKernel(kernel_fn, kinds, b, None, dict(kwargs))
  group = import_zarr().open_group(path, mode="r+")
  n = x.shape[0]
  nb = -(-n // b)
  done = np.asarray(group["done"][...]).astype(bool)
  count = 0
  for i in panels:
    for j in range(i, nb):
      if done[i, j]:
        continue
      ri, rj = slice(i * b, min(n, (i + 1) * b)), slice(j * b,
                                                          min(n, (j + 1) * b))
      blocks = kernel(x[ri]) if i == j else kernel(x[ri], x[rj], pad2=True)
      for g, val in blocks.items():
        group[f"k_{g}"][ri, rj] = val
      group["done"][i, j] = 1
      count += 1
  return count


def peak_rss_bytes() -> int:
  """This process's peak resident set size (Linux ``ru_maxrss``, KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
