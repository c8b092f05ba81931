r"""Nystrom (inducing-point) kernel regression, Falkon-style.

`Nystrom(m)` is a solver for ``gp_inference(kernel_fn, x_train, y_train,
x_test, get, solver=Nystrom(m=5000))`` and the ensemble at ``t = inf``. With
``m`` centres :math:`x_M` (chosen uniformly, or by randomly pivoted Cholesky,
Chen, Epperly, Tropp & Webber 2022, which favours points the kernel explains
least), it solves the Nystrom system of Rudi, Carratino & Rosasco's Falkon
(2017):

.. math:: H \alpha = K_{MN} y, \qquad H = K_{MN} K_{NM} + \mu K_{MM},

by conjugate gradients preconditioned with
:math:`B = T^{-1} A^{-1}`, :math:`K_{MM} = T^T T`,
:math:`A^T A = \frac{n}{m} T T^T + \mu I` (so :math:`B^T H B \approx I` when
:math:`K_{NM}^T K_{NM} \approx \frac{n}{m} K_{MM}^2`). Predictions are
:math:`K_{*M} \alpha`; the posterior variance is that of the Nystrom
(DTC) model,

.. math:: k_{**} - K_{*M} K_{MM}^{-1} K_{M*}
          + \mu K_{*M} H^{-1} K_{M*},

which equals the exact :math:`k_{**} - K_{*N}(K + \mu I)^{-1}K_{N*}` when
the centres are all training points (``m = n``).

Cost: ``n m`` kernel evaluations (``K_NM``, in row blocks) plus ``m^2``
(``K_MM``), ``O(m^3)`` for the preconditioner, ``O(n m c)`` per iteration.
Memory: the two ``m x m`` triangular factors (``K_MM`` itself is not kept:
:math:`K_{MM} u = T^T (T u)`), in float64 when they take at most half of
``memory_limit`` and float32 otherwise, plus ``K_NM``:

* ``store=PATH``: ``K_NM`` in row blocks in a zarr store on disk (`RowStore`,
  resumable, ``4 n m`` bytes), read one block per product, so memory is
  ``O(m^2 + b m)``; the CG state is checkpointed there too;
* ``store=None``: held in memory when it fits in ``memory_limit`` (with the
  factors), else recomputed block by block at every product.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import Any, Callable, Optional, Union

import numpy as np

from .block_cg import regularizer
from .block_kernel import BlockKernel
from .pcg import pcg
from .row_store import RowStore

__all__ = ["Nystrom", "NystromModel", "rpcholesky_centres"]


def _linalg():
  """`scipy.linalg`, imported on first use: it takes a third of a second to
  import, and most programs never build a Nystrom preconditioner."""
  import scipy.linalg  # pylint: disable=import-outside-toplevel
  import scipy.linalg.blas  # noqa: F401 pylint: disable=import-outside-toplevel
  return scipy.linalg


def rpcholesky_centres(kernel: BlockKernel, kind: str, x: np.ndarray,
                       diag: np.ndarray, m: int, seed: int,
                       batch: int = 128) -> np.ndarray:
  """``m`` centres by block randomly pivoted Cholesky: pivots drawn with
  probability proportional to the diagonal of the residual kernel
  ``K - F F^T`` (``F`` the partial Cholesky factor, ``(n, m)``)."""
  rng = np.random.default_rng(seed)
  n = x.shape[0]
  f = np.zeros((n, m), np.float32)
  d = np.asarray(diag, np.float64).copy()
  chosen: list = []
  while len(chosen) < m:
    if not np.any(d > 0):
      rest = np.setdiff1d(np.arange(n), chosen)
      chosen += list(rng.choice(rest, m - len(chosen), replace=False))
      break
    s = min(batch, m - len(chosen))
    idx = np.unique(rng.choice(n, s, p=d / d.sum()))
    idx = np.setdiff1d(idx, chosen)
    if idx.size == 0:
      continue
    k = len(chosen)
    g = kernel.cross(x, x[idx])[kind].astype(np.float64)
    g -= f[:, :k].astype(np.float64) @ f[idx, :k].T.astype(np.float64)
    c = (g[idx] + g[idx].T) / 2
    jitter = np.finfo(np.float32).eps * max(np.trace(c), 1e-30)
    low = np.linalg.cholesky(c + jitter * np.eye(idx.size))
    f[:, k:k + idx.size] = _linalg().solve_triangular(
        low, g.T, lower=True).T
    d = np.maximum(d - np.sum(f[:, k:k + idx.size].astype(np.float64) ** 2,
                              axis=1), 0.)
    d[idx] = 0.
    chosen += list(idx)
  return np.asarray(chosen[:m])


def _check_m(m, n: int) -> int:
  if isinstance(m, bool) or not isinstance(m, (int, np.integer)):
    raise ValueError(f"Nystrom: m (the number of centres) must be an integer; "
                     f"got {m!r}.")
  if m <= 0:
    raise ValueError(f"Nystrom: m (the number of centres) must be >= 1; got "
                     f"m={m}.")
  if m > n:
    raise ValueError(f"Nystrom: m={m} centres > n={n} training points; use "
                     f"m <= n (m = n is exact kernel regression).")
  return int(m)


class _KNM:
  """``K_NM`` by row blocks: held in memory, read from a `RowStore`, or
  recomputed per product (module doc)."""

  def __init__(self, kernel: BlockKernel, kind: str, x: np.ndarray,
               xc: np.ndarray, keep: bool, dtype, store=None):
    self.kernel, self.kind, self.x, self.xc = kernel, kind, x, xc
    self.dtype, self.b, self.store = dtype, kernel.block_size, store
    self.blocks = [self._compute(i) for i in range(0, x.shape[0], self.b)] \
        if keep and store is None else None

  def _compute(self, i: int) -> np.ndarray:
    if self.store is not None:
      return self.store.block(self.kind, i // self.b)
    # Kept in the kernel's dtype (half the memory of float64); products
    # upcast one block at a time.
    return self.kernel.cross(self.x[i:i + self.b], self.xc)[self.kind]

  def row_blocks(self):
    for k, i in enumerate(range(0, self.x.shape[0], self.b)):
      kb = self.blocks[k] if self.blocks is not None else self._compute(i)
      yield i, kb.astype(self.dtype, copy=False)

  def gram_apply(self, v: np.ndarray) -> np.ndarray:
    """``K_MN (K_NM v)``."""
    out = np.zeros((self.xc.shape[0], v.shape[1]), self.dtype)
    for _, kb in self.row_blocks():
      out += kb.T @ (kb @ v)
    return out

  def t_apply(self, y: np.ndarray) -> np.ndarray:
    """``K_MN y``."""
    out = np.zeros((self.xc.shape[0], y.shape[1]), self.dtype)
    for i, kb in self.row_blocks():
      out += kb.T @ y[i:i + kb.shape[0]]
    return out


class NystromModel:
  """A solved Nystrom system: test means and DTC variances (module doc)."""

  def __init__(self, kernel, kind, xc, alpha, t_chol, solve_h, mu, dtype):
    self.kernel, self.kind, self.xc, self.alpha = kernel, kind, xc, alpha
    self.t_chol, self.solve_h, self.mu, self.dtype = t_chol, solve_h, mu, dtype

  def _k_tm(self, x):
    return self.kernel.cross(x, self.xc)[self.kind].astype(self.dtype)

  def mean(self, x_test: np.ndarray) -> np.ndarray:
    b = self.kernel.block_size
    return np.concatenate([self._k_tm(x_test[i:i + b]) @ self.alpha
                           for i in range(0, x_test.shape[0], b)])

  def variance(self, x_test: np.ndarray) -> np.ndarray:
    b = self.kernel.block_size
    prior = self.kernel.diagonal(x_test)[self.kind].astype(self.dtype)
    out = np.empty(x_test.shape[0], self.dtype)
    for i in range(0, x_test.shape[0], b):
      k_mt = np.ascontiguousarray(self._k_tm(x_test[i:i + b]).T)
      w = _linalg().solve_triangular(self.t_chol, k_mt, trans="T")
      out[i:i + b] = (prior[i:i + b] - np.sum(w * w, axis=0) +
                      self.mu * np.sum(k_mt * self.solve_h(k_mt), axis=0))
    return out


@dataclasses.dataclass(eq=False)
class Nystrom:
  """Falkon-style Nystrom kernel regression (see the module docstring).

  Attributes:
    m: number of centres (``1 <= m <= n``; ``m = n`` is exact); default
      ``min(n, 1000)``.
    centres: ``'uniform'``, ``'rpcholesky'``, or an array of ``m`` training
      indices.
    block_size: rows per kernel block.
    store: a directory for a zarr store of ``K_NM`` (row blocks on disk,
      resumable, CG checkpoints), or None (module doc).
    tol: relative residual of the preconditioned CG (default 1e-5 in
      float32, 1e-9 in float64).
    maxiter: CG iteration cap (default ``min(max(100, 2 m), 1000)``).
    seed: centre sampling seed.
    dtype: dtype of the ``m x m`` algebra and the CG (default: float64 when
      its two factors take at most ``memory_limit / 2`` bytes, else float32).
    memory_limit: in-memory budget in bytes: picks ``dtype`` and, without a
      store, whether ``K_NM`` is held (else recomputed at every product).
    checkpoint_every: with a store, save the CG state every this many
      iterations.
    progress: True for tqdm bars over ``K_NM`` blocks and CG iterations.
    on_failure: ``'warn'`` or ``'raise'`` when CG does not converge.
    info: report of the last run.
  """

  m: Optional[int] = None
  centres: Union[str, np.ndarray] = "uniform"
  block_size: int = 2048
  store: Optional[str] = None
  tol: Optional[float] = None
  maxiter: Optional[int] = None
  seed: int = 0
  dtype: Any = None
  memory_limit: float = 4 * 2**30
  checkpoint_every: int = 10
  progress: Any = False
  on_failure: str = "warn"
  iteration_callback: Optional[Callable] = None
  info: Optional[dict] = None

  large_solver = True

  def _centres(self, kernel, kind, x, diag, m):
    if isinstance(self.centres, str) and self.centres == "uniform":
      rng = np.random.default_rng(self.seed)
      return np.sort(rng.choice(x.shape[0], m, replace=False))
    if isinstance(self.centres, str) and self.centres == "rpcholesky":
      return rpcholesky_centres(kernel, kind, x, diag, m, self.seed)
    if isinstance(self.centres, str):
      raise ValueError(f"Nystrom: centres must be 'uniform', 'rpcholesky' or "
                       f"an array of indices; got {self.centres!r}.")
    idx = np.asarray(self.centres)
    if idx.shape != (m,) or idx.dtype.kind not in "iu" or \
        idx.min() < 0 or idx.max() >= x.shape[0]:
      raise ValueError(f"Nystrom: centres must be {m} indices into x_train "
                       f"(0..{x.shape[0] - 1}); got shape {idx.shape}.")
    return idx

  def _dtype(self, m: int):
    if self.dtype is not None:
      return np.dtype(self.dtype)
    return np.dtype(np.float64 if 16 * m * m <= self.memory_limit / 2
                    else np.float32)

  def fit(self, kernel_fn: Callable, x_train: np.ndarray, y2: np.ndarray,
          kinds: tuple, diag_reg: float, absolute: bool,
          kwargs: dict) -> dict:
    """Chooses centres, solves per kernel; returns ``{kind: NystromModel}``."""
    n = x_train.shape[0]
    m = _check_m(min(n, 1000) if self.m is None else self.m, n)
    dtype = self._dtype(m)
    tol = self.tol if self.tol is not None else (
        1e-9 if dtype == np.float64 else 1e-5)
    kernel = BlockKernel(kernel_fn, kinds, self.block_size, None, kwargs)
    t0 = time.perf_counter()
    diag = kernel.diagonal(x_train)
    idx = self._centres(kernel, kinds[0], x_train, diag[kinds[0]], m)
    info = {"centres": idx, "centre_seconds": time.perf_counter() - t0,
            "cg": {}, "knm_seconds": 0., "precond_seconds": 0.,
            "solve_seconds": 0., "dtype": dtype.name}
    self.info = info
    xc = x_train[idx]
    store = None
    t0 = time.perf_counter()
    if self.store is not None:
      store = RowStore(kernel, x_train, xc, self.store)
      info["knm_blocks"] = store.fill(self.progress)
    info["knm_seconds"] += time.perf_counter() - t0
    keep = n * m * 4 + 2 * m * m * dtype.itemsize <= self.memory_limit
    info["knm"] = ("store" if store is not None else
                   "memory" if keep else "recomputed")
    return {g: self._solve(kernel, g, x_train, xc, y2.astype(dtype),
                           regularizer(diag[g], diag_reg, absolute), keep,
                           dtype, tol, info, store) for g in kinds}

  def _factors(self, kernel, g, xc, n, mu, dtype):
    """Upper Cholesky factors ``T`` of ``K_MM`` and ``A`` of ``(n/m) T T^T +
    mu I``, computed in place (two ``m x m`` arrays at most)."""
    m = xc.shape[0]
    kmm = np.asarray(kernel.cross(xc, xc)[g], dtype)
    jitter = np.finfo(dtype).eps * m * max(np.trace(kmm) / m, 1e-30)
    kmm[np.diag_indices(m)] += jitter
    # ``kmm.T`` is Fortran-ordered, so LAPACK factors it in place (reading
    # the upper triangle of kmm); L L^T = K_MM, T = L^T.
    low = _cholesky(lambda: _linalg().cholesky(
        kmm.T, lower=True, overwrite_a=True, check_finite=False), "K_MM", m)
    del kmm
    # T T^T = L^T L by a symmetric rank-k update (half a matrix product);
    # its upper triangle is what the next factorization reads.
    syrk = _linalg().blas.get_blas_funcs("syrk", (low,))
    a = syrk(n / m, low, trans=1, lower=0)
    a[np.diag_indices(m)] += mu
    a_chol = _cholesky(lambda: _linalg().cholesky(
        a, lower=False, overwrite_a=True, check_finite=False),
        "the preconditioner", m)
    return low.T, a_chol

  def _solve(self, kernel, g, x, xc, y, mu, keep, dtype, tol, info, store):
    n, m = x.shape[0], xc.shape[0]
    t0 = time.perf_counter()
    knm = _KNM(kernel, g, x, xc, keep, dtype, store)
    t_chol, a_chol = self._factors(kernel, g, xc, n, mu, dtype)
    info["precond_seconds"] += time.perf_counter() - t0

    def b_apply(v):
      return _linalg().solve_triangular(
          t_chol, _linalg().solve_triangular(a_chol, v))

    def bt_apply(w):
      return _linalg().solve_triangular(
          a_chol, _linalg().solve_triangular(t_chol, w, trans="T"),
          trans="T")

    def matvec(v):
      u = b_apply(v)
      # mu K_MM u = mu T^T (T u): K_MM itself is not kept.
      return bt_apply(knm.gram_apply(u) + mu * (t_chol.T @ (t_chol @ u)))

    maxiter = self.maxiter or min(max(100, 2 * m), 1000)

    def solve_h(rhs, name, state_name=None):
      state = checkpoint = None
      if state_name is not None and store is not None:
        key = hashlib.sha256(np.ascontiguousarray(rhs).tobytes() + repr(
            (g, mu, m, dtype.str, tol)).encode()).hexdigest()
        state = store.load_state(state_name, key)
        checkpoint = store.checkpointer(state_name, key)
      beta, cg_info = pcg(matvec, None, bt_apply(rhs), tol, maxiter,
                          state=state, checkpoint=checkpoint,
                          checkpoint_every=self.checkpoint_every
                          if checkpoint else 0,
                          progress=self.progress,
                          callback=self.iteration_callback,
                          name=f"Nystrom {name} ({g}, m={m})",
                          on_failure=self.on_failure)
      return b_apply(beta), cg_info

    alpha, cg_info = solve_h(knm.t_apply(y), "solve", f"cg_{g}")
    info["cg"][g] = cg_info
    info["solve_seconds"] += cg_info.seconds
    return NystromModel(kernel, g, xc, alpha, t_chol,
                        lambda r: solve_h(r, "variance")[0], mu, dtype)


def _cholesky(factor: Callable, what: str, m: int) -> np.ndarray:
  """``factor()``, with a clear error when the matrix is not positive
  definite."""
  try:
    return factor()
  except np.linalg.LinAlgError as e:
    raise ValueError(
        f"Nystrom: the Cholesky factorization of {what} ({m} x {m}) failed: "
        f"the centres are (numerically) linearly dependent. Use fewer "
        f"centres, centres='rpcholesky', dtype='float64' or a larger "
        f"diag_reg.") from e
