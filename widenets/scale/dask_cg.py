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

With ``kernel_store=PATH`` (a `TriangleStore`, e.g. the one a `BlockCG` job
wrote; a directory all workers see) each worker owns a fixed set of row
panels of the upper triangle (widenets.scale.store_panels): it computes
their missing blocks, and at every CG product reads them from the store and
returns one ``(n, c)`` partial sum. The store's identity checks, its saved
Nystrom preconditioner and its variance checkpoints are shared with
`BlockCG`; the CG state itself is not checkpointed here.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Optional

import numpy as np

from ..predict.block_cg import (CGModel, check_preconditioner,
                                host_preconditioner, regularizer)
from ..predict.block_kernel import BlockKernel
from ..predict.pcg import pcg
from ..predict.triangle_store import TriangleStore
from . import store_panels
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
    store: a zarr directory the workers write the full kernel to (as a
      Dask array) and read it from (None: the blocks stay in worker memory).
    kernel_store: a triangle kernel store (`BlockCG`'s format) the workers
      fill and read by row panels (module doc); overrides ``store``.
    tol, maxiter, preconditioner, rank, seed, dtype, variance_batch,
    on_failure, progress, iteration_callback: as in `BlockCG`.
    info: report of the last run.
  """

  client: Any = None
  chunks: int = 2048
  store: Optional[str] = None
  kernel_store: Optional[str] = None
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
    check_preconditioner(self.preconditioner, "DaskCG")
    n = x_train.shape[0]
    dtype = np.dtype(self.dtype or np.result_type(y2.dtype, np.float32))
    tol = self.tol if self.tol is not None else (
        1e-8 if dtype == np.float64 else 1e-5)
    info = {"kernel_seconds": 0., "precond_seconds": 0., "solve_seconds": 0.,
            "cg": {}}
    self.info = info
    if self.kernel_store is not None:
      return self._fit_store(kernel_fn, x_train, y2, kinds, diag_reg,
                             absolute, kwargs, dtype, tol, info)
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

      t0 = time.perf_counter()
      precond = host_preconditioner(products, diag, mu, self.preconditioner,
                                    self.rank, self.seed, dtype)
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

  # -- a triangle store read by row panels -------------------------------------
  def _run_owned(self, fn, owned: dict, *args) -> list:
    """``fn(*args, panels)`` on each worker for its own panels."""
    if self.client is None:
      return [fn(*args, panels) for panels in owned.values() if panels]
    futures = [self.client.submit(fn, *args, panels, workers=[w],
                                  allow_other_workers=False, pure=False)
               for w, panels in owned.items() if panels]
    return self.client.gather(futures)

  def _owned_products(self, store, g, owned):
    """``V -> K V``, each worker multiplying by its own panels."""

    def products(v):
      v = np.asarray(v)
      if self.client is not None:
        [v] = self.client.scatter([v], broadcast=True)
      return np.sum(self._run_owned(store_panels.owned_product, owned,
                                    store.path, g, store.n, store.b, v),
                    axis=0)

    return products

  def _fit_store(self, kernel_fn, x_train, y2, kinds, diag_reg, absolute,
                 kwargs, dtype, tol, info) -> dict:
    t0 = time.perf_counter()
    kernel = BlockKernel(kernel_fn, kinds, self.chunks, None, kwargs)
    store = TriangleStore(kernel, x_train, self.kernel_store)
    workers = ["local"] if self.client is None else sorted(
        self.client.scheduler_info()["workers"])
    owned = store_panels.assign_panels(store.nb, workers)
    info["panels"] = owned
    if not store.done_mask()[np.triu_indices(store.nb)].all():
      x = x_train if self.client is None else self.client.scatter(
          x_train, broadcast=True)
      info["blocks_computed"] = sum(self._run_owned(
          store_panels.fill_owned, owned, store.path, kernel_fn, kinds,
          store.b, tuple(sorted(kwargs.items())), x))
    info["kernel_seconds"] += time.perf_counter() - t0
    models = {}
    for g in kinds:
      diagonal = store.diagonal(g)
      mu = regularizer(diagonal, diag_reg, absolute)
      products = self._owned_products(store, g, owned)

      def matvec(v, products=products, mu=mu):
        return products(v).astype(dtype, copy=False) + mu * v

      t0 = time.perf_counter()
      precond = host_preconditioner(products, diagonal, mu,
                                    self.preconditioner, self.rank,
                                    self.seed, dtype, store=store, g=g)
      info["precond_seconds"] += time.perf_counter() - t0
      maxiter = self.maxiter or store.n
      alpha, cg_info = pcg(matvec, precond, y2.astype(dtype), tol, maxiter,
                           progress=self.progress,
                           callback=self.iteration_callback,
                           name=f"DaskCG ({g}, n={store.n})",
                           on_failure=self.on_failure)
      info["cg"][g] = cg_info
      info["solve_seconds"] += cg_info.seconds
      models[g] = CGModel(kernel, x_train, g, alpha, matvec, precond, tol,
                          maxiter, self.variance_batch, self.on_failure)
    return models
