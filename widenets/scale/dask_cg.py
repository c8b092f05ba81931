r"""Exact kernel regression on a Dask cluster: CG products where blocks live.

`DaskCG` is a large solver (see `widenets.predict.large`) for
``gp_inference(kernel_fn, x_train, y_train, x_test, get, solver=DaskCG(
client=client))``. The training kernel is `kernel_array` (one task per
upper block), either

* persisted on the workers (``store=None``): each worker keeps the blocks
  it computed, in memory; or
* written by the workers into a zarr store (``store=PATH`` on a file system
  all workers see) and read back there, block by block.

Every CG product ``K V`` is a Dask graph ``K @ V``: the tasks multiply a
block by a ``(b, c)`` slice of ``V`` on the worker that holds (or reads) the
block and only ``(b, c)`` partial sums travel, so the kernel never crosses
to one machine. The ``(n, c)`` CG vectors stay on the client. Test means
``K_* alpha`` are also computed on the cluster. The same code runs on a
``LocalCluster``, dask-jobqueue (SLURM, PBS, ...) or dask-kubernetes
clusters: pass their ``distributed.Client``. See docs/scale.md.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Optional

import numpy as np

from ..predict.block_cg import CGModel, nystrom_preconditioner, regularizer
from ..predict.block_kernel import BlockKernel
from ..predict.pcg import pcg
from .dask_array import kernel_array

__all__ = ["DaskCG"]


class _DaskModel(CGModel):
  """`CGModel` whose test means run on the cluster."""

  def __init__(self, *args, compute, chunks, **kwargs):
    super().__init__(*args, **kwargs)
    self._compute, self._chunks = compute, chunks

  def mean(self, x_test: np.ndarray) -> np.ndarray:
    import dask.array as da
    k = kernel_array(self.kernel.kernel_fn, x_test, self.x_train,
                     (self.kind,), self._chunks, **self.kernel.kwargs)
    k = getattr(k, self.kind)
    alpha = da.from_array(self.alpha, chunks=(k.chunks[1], -1))
    return np.asarray(self._compute(k.astype(self.alpha.dtype) @ alpha))


@dataclasses.dataclass(eq=False)
class DaskCG:
  """Exact CG with kernel blocks on a Dask cluster (see the module doc).

  Attributes:
    client: a ``distributed.Client`` (None: the current default scheduler,
      e.g. threads in this process).
    chunks: kernel block side.
    store: a zarr directory the workers write the kernel to and read it
      from (None: the blocks stay in worker memory).
    tol, maxiter, preconditioner, rank, seed, dtype, variance_batch,
    on_failure, progress, iteration_callback: as in `BlockCG`.
    info: report of the last run.
  """

  client: Any = None
  chunks: int = 2048
  store: Optional[str] = None
  tol: Optional[float] = None
  maxiter: Optional[int] = None
  preconditioner: Optional[str] = "nystrom"
  rank: int = 256
  seed: int = 0
  dtype: Any = None
  variance_batch: int = 256
  on_failure: str = "warn"
  progress: Any = False
  iteration_callback: Optional[Callable] = None
  info: Optional[dict] = None

  large_solver = True

  def _compute(self, x):
    if self.client is not None:
      return self.client.compute(x).result()
    return x.compute()

  def _kernel(self, kernel_fn, x_train, g, kwargs):
    import dask.array as da
    k = getattr(kernel_array(kernel_fn, x_train, None, (g,), self.chunks,
                             **kwargs), g)
    if self.store is not None:
      path = os.path.join(os.fspath(self.store), f"k_{g}")
      self._compute(da.to_zarr(k, path, overwrite=True, compute=False))
      return da.from_zarr(path)
    if self.client is not None:
      return self.client.persist(k)
    return k.persist()

  def fit(self, kernel_fn: Callable, x_train: np.ndarray, y2: np.ndarray,
          kinds: tuple, diag_reg: float, absolute: bool,
          kwargs: dict) -> dict:
    """Kernels on the cluster, CG from the client: ``{kind: model}``."""
    import dask.array as da
    if self.preconditioner not in ("nystrom", "jacobi", None, "none"):
      raise ValueError(f"DaskCG: unknown preconditioner "
                       f"{self.preconditioner!r}; expected 'nystrom', "
                       f"'jacobi' or None.")
    n = x_train.shape[0]
    dtype = np.dtype(self.dtype or np.result_type(y2.dtype, np.float32))
    tol = self.tol if self.tol is not None else (
        1e-8 if dtype == np.float64 else 1e-5)
    info = {"kernel_seconds": 0., "precond_seconds": 0., "solve_seconds": 0.,
            "cg": {}}
    self.info = info
    models = {}
    for g in kinds:
      t0 = time.perf_counter()
      k = self._kernel(kernel_fn, x_train, g, kwargs)
      diag = np.asarray(self._compute(da.diagonal(k)), np.float64)
      info["kernel_seconds"] += time.perf_counter() - t0
      mu = regularizer(diag, diag_reg, absolute)

      def products(v, k=k):
        vd = da.from_array(np.asarray(v), chunks=(k.chunks[1], -1))
        return np.asarray(self._compute(k.astype(v.dtype) @ vd))

      def matvec(v, products=products, mu=mu):
        return products(v) + mu * v

      precond = None
      t0 = time.perf_counter()
      if self.preconditioner == "jacobi":
        inv = (1. / (diag + mu)).astype(dtype)
        precond = lambda r, inv=inv: inv[:, None] * r
      elif self.preconditioner == "nystrom":
        u, scale = nystrom_preconditioner(products, n, mu, self.rank,
                                          self.seed, dtype)
        precond = lambda r, u=u, s=scale: r + u @ (s[:, None] * (u.T @ r))
      info["precond_seconds"] += time.perf_counter() - t0
      maxiter = self.maxiter or n
      alpha, cg_info = pcg(matvec, precond, y2.astype(dtype), tol, maxiter,
                           progress=self.progress,
                           callback=self.iteration_callback,
                           name=f"DaskCG ({g}, n={n})",
                           on_failure=self.on_failure)
      info["cg"][g] = cg_info
      info["solve_seconds"] += cg_info.seconds
      kernel = BlockKernel(kernel_fn, (g,), self.chunks, None, kwargs)
      models[g] = _DaskModel(kernel, x_train, g, alpha, matvec, precond, tol,
                             maxiter, self.variance_batch, self.on_failure,
                             compute=self._compute, chunks=self.chunks)
    return models
