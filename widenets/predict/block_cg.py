r"""Exact kernel regression at large ``n``: kernel blocks on disk, solved by CG.

`BlockCG` is a solver for ``gp_inference(kernel_fn, x_train, y_train,
x_test, get, solver=BlockCG(store=PATH))`` and
``gradient_descent_mse_ensemble(..., solver=BlockCG(...))`` at ``t = inf``:

1. the training kernel is computed block by block, the upper triangle only
   (`TriangleStore`: ``n^2 / 2`` entries, in a zarr store at ``store`` or in
   memory for ``store=None``), resumably;
2. :math:`(K + \mu I)\alpha = y` is solved by preconditioned CG (`pcg`) with
   one pass over the stored triangle per iteration, the CG state being
   checkpointed in the store every ``checkpoint_every`` iterations;
3. test predictions :math:`K_{*}\alpha` are streamed block by block (the
   ``(t, n)`` test kernel is never held); posterior variances
   :math:`k_{**} - \mathrm{diag}(K_* (K + \mu I)^{-1} K_*^T)` by CG with the
   test columns as right-hand sides, ``variance_batch`` test points at a
   time.

Memory is ``O(n (c + rank) + b n)`` for ``b``-row panels; disk
``4 n^2 / 2`` bytes in float32. A rerun of a killed job with the same
arguments computes only the missing blocks and resumes CG from its last
checkpoint. ``info`` holds the report of the last run (blocks computed and
skipped, CG iterations, wall time per phase).
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import Any, Callable, Optional

import numpy as np

from .block_kernel import BlockKernel
from .pcg import pcg
from .randomized_nystrom import (apply_nystrom, gaussian_sketch,
                                 nystrom_factors)
from .triangle_store import TriangleStore

__all__ = ["BlockCG", "CGModel", "check_preconditioner",
           "host_preconditioner", "nystrom_preconditioner", "regularizer"]


def regularizer(diag: np.ndarray, diag_reg: float, absolute: bool) -> float:
  """``diag_reg`` times the mean diagonal (or ``diag_reg`` if absolute)."""
  return float(diag_reg) if absolute else float(diag_reg) * float(
      np.mean(diag))


def nystrom_preconditioner(matvec: Callable, n: int, mu: float, rank: int,
                           seed: int, dtype) -> tuple:
  """``(U, scale)`` of the randomized Nystrom preconditioner of ``K + mu I``
  (`widenets.predict.randomized_nystrom`) from one product ``matvec``."""
  return nystrom_factors(matvec, gaussian_sketch(n, rank, seed, dtype), mu)


class CGModel:
  """A solved exact system: streamed test means and CG variances.

  With a ``store`` (a `SolverStore`), the variance solves are resumable like
  the mean solve: the variances of finished test batches and the CG state of
  the running one (every ``checkpoint_every`` iterations) are saved in it
  under ``key`` and the test inputs' hash.
  """

  def __init__(self, kernel: BlockKernel, x_train: np.ndarray, kind: str,
               alpha: np.ndarray, matvec: Callable, precond: Callable,
               tol: float, maxiter: int, variance_batch: int,
               on_failure: str = "warn", store=None, key: str = "",
               checkpoint_every: int = 0,
               callback: Optional[Callable] = None):
    self.kernel, self.x_train, self.kind = kernel, x_train, kind
    self.alpha, self.matvec, self.precond = alpha, matvec, precond
    self.tol, self.maxiter = tol, maxiter
    self.variance_batch, self.on_failure = variance_batch, on_failure
    self.store, self.key = store, key
    self.checkpoint_every, self.callback = checkpoint_every, callback
    self.variance_info: list = []
    self.variance_batches_skipped = 0

  def mean(self, x_test: np.ndarray) -> np.ndarray:
    """``K(x_test, x_train) @ alpha`` block by block: ``(t, c)``."""
    b, n = self.kernel.block_size, self.x_train.shape[0]
    out = np.zeros((x_test.shape[0], self.alpha.shape[1]), self.alpha.dtype)
    for i in range(0, x_test.shape[0], b):
      for j in range(0, n, b):
        blk = self.kernel(x_test[i:i + b], self.x_train[j:j + b],
                          pad2=True)[self.kind]
        out[i:i + b] += blk @ self.alpha[j:j + b]
    return out

  def _saved(self, x_test: np.ndarray, t: int):
    """``(name, key, out, done)``: the saved variances of finished batches."""
    if self.store is None or self.store.path is None:
      return None, None, np.empty(t, np.float64), 0
    key = hashlib.sha256(np.ascontiguousarray(x_test).tobytes() + repr(
        (self.key, x_test.shape, x_test.dtype.str,
         self.variance_batch)).encode()).hexdigest()
    name = f"variance_{self.kind}"
    saved = self.store.load_state(name, key)
    if saved is None:
      return name, key, np.empty(t, np.float64), 0
    return name, key, np.array(saved["out"]), int(saved["done"])

  def variance(self, x_test: np.ndarray) -> np.ndarray:
    r"""Diagonal of the posterior covariance :math:`k_{**} - K_* (K +
    \mu I)^{-1} K_*^T` (prior kernel = the solved one): ``(t,)``."""
    kvar = BlockKernel(self.kernel.kernel_fn, (self.kind,),
                       min(self.variance_batch, self.kernel.block_size),
                       self.kernel.dtype, self.kernel.kwargs)
    t, vb = x_test.shape[0], kvar.block_size
    name, key, out, done = self._saved(x_test, t)
    self.variance_batches_skipped = -(-done // vb)
    if done < t:
      prior = kvar.diagonal(x_test, block=vb)[self.kind]
    for i in range(done, t, vb):
      k_tn = kvar.cross(x_test[i:i + vb], self.x_train)[self.kind]
      rhs = np.ascontiguousarray(k_tn.T, self.alpha.dtype)
      z, info = self._solve(rhs, name, key, i)
      self.variance_info.append(info)
      out[i:i + vb] = prior[i:i + vb] - np.sum(rhs * z, axis=0)
      if name is not None:
        self.store.save_state(name, key, {"out": out,
                                          "done": np.asarray(i + vb)})
        self.store.remove_state(f"{name}_cg")
    return out.astype(self.alpha.dtype)

  def _solve(self, rhs, name, key, i):
    """One variance solve, resumable from its checkpoint when stored."""
    state = checkpoint = None
    if name is not None:
      cg_key = f"{key}:{i}"
      state = self.store.load_state(f"{name}_cg", cg_key)
      checkpoint = self.store.checkpointer(f"{name}_cg", cg_key)
    return pcg(self.matvec, self.precond, rhs, self.tol, self.maxiter,
               state=state, checkpoint=checkpoint,
               checkpoint_every=self.checkpoint_every if name else 0,
               callback=self.callback,
               name=f"posterior variance ({self.kind})",
               on_failure=self.on_failure)


@dataclasses.dataclass(eq=False)
class BlockCG:
  """Exact kernel regression by CG over stored kernel blocks (module doc).

  Attributes:
    store: a directory for the zarr kernel store (resumable), or None to
      keep the blocks in memory.
    block_size: block side (examples).
    tol: relative residual (default 1e-5 in float32, 1e-8 in float64).
    maxiter: CG iteration cap (default ``n``).
    preconditioner: ``'nystrom'`` (randomized, ``rank``), ``'jacobi'`` or
      None.
    rank: Nystrom preconditioner rank.
    seed: its sketch seed.
    checkpoint_every: save the CG state in the store every this many
      iterations (0: never).
    dtype: compute dtype of the solve (e.g. ``'float64'``; the kernel is
      stored in the kernel's dtype).
    progress: True for tqdm bars over kernel blocks and CG iterations.
    variance_batch: test points per variance solve.
    on_failure: ``'warn'`` or ``'raise'`` when CG does not converge.
    block_callback: ``f(i, j)`` after each computed kernel block.
    iteration_callback: ``f(iteration, residual)`` after each CG iteration.
    info: report of the last run (set by the solver).
  """

  store: Optional[str] = None
  block_size: int = 2048
  tol: Optional[float] = None
  maxiter: Optional[int] = None
  preconditioner: Optional[str] = "nystrom"
  rank: int = 256
  seed: int = 0
  checkpoint_every: int = 10
  dtype: Any = None
  progress: Any = False
  variance_batch: int = 256
  on_failure: str = "warn"
  block_callback: Optional[Callable] = None
  iteration_callback: Optional[Callable] = None
  info: Optional[dict] = None

  large_solver = True

  def fit(self, kernel_fn: Callable, x_train: np.ndarray, y2: np.ndarray,
          kinds: tuple, diag_reg: float, absolute: bool,
          kwargs: dict) -> dict:
    """Computes and solves; returns ``{kind: CGModel}``."""
    check_preconditioner(self.preconditioner, "BlockCG")
    t0 = time.perf_counter()
    kernel = BlockKernel(kernel_fn, kinds, self.block_size, None, kwargs)
    store = TriangleStore(kernel, x_train, self.store)
    fill = store.fill(self.progress, self.block_callback)
    info = {"blocks": fill, "kernel_seconds": time.perf_counter() - t0,
            "cg": {}, "precond_seconds": 0., "solve_seconds": 0.}
    self.info = info
    dtype = np.dtype(self.dtype or np.result_type(y2.dtype, np.float32))
    tol = self.tol if self.tol is not None else (
        1e-8 if dtype == np.float64 else 1e-5)
    models = {}
    for g in kinds:
      models[g] = self._solve(store, kernel, g, x_train, y2.astype(dtype),
                              diag_reg, absolute, dtype, tol, info)
    return models

  def _solve(self, store, kernel, g, x_train, y, diag_reg, absolute, dtype,
             tol, info) -> CGModel:
    n = store.n
    diagonal = store.diagonal(g)
    mu = regularizer(diagonal, diag_reg, absolute)

    def matvec(v):
      return store.matvec(g, v).astype(dtype, copy=False) + mu * v

    t0 = time.perf_counter()
    precond = host_preconditioner(
        lambda v: store.matvec(g, v), diagonal, mu, self.preconditioner,
        self.rank, self.seed, dtype, store=store, g=g)
    info["precond_seconds"] += time.perf_counter() - t0
    key_model = (g, mu, self.preconditioner, self.rank, self.seed, dtype.str)
    key = hashlib.sha256(np.ascontiguousarray(y).tobytes() + repr(
        key_model + (y.shape,)).encode()).hexdigest()
    state = store.load_state(f"cg_{g}", key)
    maxiter = self.maxiter or n
    x, cg_info = pcg(
        matvec, precond, y, tol, maxiter, state=state,
        checkpoint=lambda s: store.save_state(f"cg_{g}", key, s),
        checkpoint_every=self.checkpoint_every if store.path else 0,
        progress=self.progress, callback=self.iteration_callback,
        name=f"BlockCG ({g}, n={n})", on_failure=self.on_failure)
    info["cg"][g] = cg_info
    info["solve_seconds"] += cg_info.seconds
    return CGModel(kernel, x_train, g, x, matvec, precond, tol, maxiter,
                   self.variance_batch, self.on_failure, store=store,
                   key=hashlib.sha256(repr((key_model, tol, maxiter)).encode()
                                      ).hexdigest(),
                   checkpoint_every=self.checkpoint_every,
                   callback=self.iteration_callback)


PRECONDITIONERS = ("nystrom", "jacobi", None, "none")


def check_preconditioner(name, solver: str) -> None:
  """Raises a ValueError naming ``solver`` unless ``name`` is one of
  `PRECONDITIONERS`."""
  if name not in PRECONDITIONERS:
    raise ValueError(f"{solver}: unknown preconditioner {name!r}; expected "
                     f"'nystrom', 'jacobi' or None.")


def host_preconditioner(products: Callable, diagonal: np.ndarray, mu: float,
                        name: Optional[str], rank: int, seed: int, dtype,
                        store=None, g: str = "") -> Optional[Callable]:
  """``R -> P^{-1} R`` of ``K + mu I`` on the host, or None.

  ``products(V) = K V`` for ``V (n, c)``; ``diagonal (n,)`` is ``K``'s
  diagonal; ``name`` 'nystrom', 'jacobi' or None. With a ``store`` (a
  `TriangleStore`), the Nystrom factors of output ``g`` are saved there and
  reused by any later solve on it with the same ``mu``, rank and seed.
  """
  if name in (None, "none"):
    return None
  if name == "jacobi":
    inv = (1. / (diagonal + mu)).astype(dtype)
    return lambda r: inv[:, None] * r
  key = repr((g, mu, rank, seed, dtype.str))
  saved = None if store is None else store.load_state(f"precond_{g}", key)
  if saved is None:
    params = nystrom_preconditioner(products, diagonal.shape[0], mu, rank,
                                    seed, dtype)
    if store is not None:
      store.save_state(f"precond_{g}", key, {"u": params[0],
                                             "scale": params[1]})
  else:
    params = (saved["u"], saved["scale"])
  return lambda r: apply_nystrom(params, r)
