r"""Preconditioned conjugate gradients for kernel systems at large ``n``.

Solves :math:`(K + \mu I) X = B` for many right-hand sides with products
:math:`K V` only, so ``K`` never has to be factorized -- or even held in memory:
`KernelBlocks` wraps an in-memory array, a function computing blocks
``fn(rows: slice, cols: slice) -> array``, or a store with ``shape`` and 2-D
slicing (a zarr / h5py array, ``np.memmap``), and multiplies by row blocks.

Each iteration costs one pass over ``K`` (``n^2 c`` flops for ``c``
right-hand sides) instead of Cholesky's ``n^3 / 3`` once, and memory is
``O(n c + n r)`` beyond the kernel. The number of iterations grows with the
square root of the condition number of the *preconditioned* system, so a
preconditioner matters for kernels, whose spectra decay fast:

* ``'nystrom'`` (default): randomized Nystrom approximation of rank ``r``
  (Frangella, Tropp & Udell 2023): one pass ``Y = K Omega`` with a Gaussian
  ``Omega (n, r)``, ``K ~ U diag(lam) U^T``, and
  :math:`P^{-1} = (\lambda_r + \mu) U (\Lambda + \mu)^{-1} U^T + I - UU^T`.
  Removes the top ``r`` eigenvalues from the condition number: use when the
  regularizer ``mu`` is small against the top of the spectrum.
* ``'block_jacobi'``: Cholesky of the diagonal ``block_size`` blocks; cheap,
  helps when nearby examples (in storage order) are strongly correlated.
* ``'jacobi'``: the diagonal; ``None``: no preconditioner.

`cg_solve` returns the solution and a `CGInfo` (iterations, relative
residuals, timings). `CG` is the solver object for `gp_inference`,
`gradient_descent_mse` and `gradient_descent_mse_ensemble` (``t = inf``):
``solver=CG(tol=1e-6, preconditioner='nystrom', rank=512)``; its ``info``
attribute holds the report of the last solve.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import time
import warnings
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from .._reduce import nan_max
from ._common import is_array, is_concrete, precision
from .randomized_nystrom import apply_nystrom, nystrom_factors

__all__ = ["KernelBlocks", "CG", "CGInfo", "cg_solve"]

CGInfo = collections.namedtuple(
    "CGInfo", "iterations converged residual residuals preconditioner "
    "setup_seconds solve_seconds")
CGInfo.__doc__ = """Report of a conjugate-gradient solve.

iterations: iterations run; converged: every column reached ``tol``;
residual: the largest relative residual ``||B - (K + mu I) X|| / ||B||`` over
columns (recursive estimate); residuals: its history per iteration;
preconditioner: its name; setup_seconds / solve_seconds: wall times.
"""


class KernelBlocks:
  """A square ``(n, n)`` kernel accessed by blocks (matrix-free products).

  Args:
    source: a 2-D array (NumPy or JAX), a function ``fn(rows, cols)`` of two
      ``slice`` objects returning that block, or a store with ``.shape`` and
      ``store[i0:i1, j0:j1]`` (zarr, h5py, ``np.memmap``).
    n: the side, required for a function.
    block_size: rows per block in products.
    dtype: dtype blocks are cast to (default: the source's, or float32).
  """

  matrix_free = True

  def __init__(self, source, n: Optional[int] = None, block_size: int = 2048,
               dtype=None):
    self.source = source
    self.block_size = int(block_size)
    self.in_memory = is_array(source)
    if self.in_memory:
      if source.ndim != 2 or source.shape[0] != source.shape[1]:
        raise ValueError(f"KernelBlocks needs a square 2-D kernel; got shape "
                         f"{source.shape}.")
      n = source.shape[0]
      self._dense = jnp.asarray(source, dtype)
    elif callable(source) and not hasattr(source, "__getitem__"):
      if n is None:
        raise ValueError("KernelBlocks(fn): pass `n`, the kernel's side.")
    else:
      shape = tuple(getattr(source, "shape", ()))
      if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"KernelBlocks needs a square 2-D store; got shape "
                         f"{shape}.")
      n = shape[0]
    self.n = int(n)
    self.dtype = np.dtype(dtype or getattr(source, "dtype", None) or
                          np.float32)
    self.shape = (self.n, self.n)
    self.ndim = 2

  def block(self, rows: slice, cols: slice) -> jax.Array:
    """The block ``K[rows, cols]``."""
    if self.in_memory:
      return self._dense[rows, cols]
    if callable(self.source) and not hasattr(self.source, "__getitem__"):
      blk = self.source(rows, cols)
    else:
      blk = self.source[rows, cols]
    return jnp.asarray(blk, self.dtype)

  def row_slices(self):
    for i in range(0, self.n, self.block_size):
      yield slice(i, min(i + self.block_size, self.n))

  def __matmul__(self, x: jax.Array) -> jax.Array:
    """``K @ x`` for ``x`` of shape ``(n,)`` or ``(n, c)``."""
    if self.in_memory:
      return self._dense @ x
    full = slice(0, self.n)
    return jnp.concatenate([self.block(r, full) @ x for r in self.row_slices()])

  def diagonal(self) -> jax.Array:
    if self.in_memory:
      return jnp.diagonal(self._dense)
    return jnp.concatenate([jnp.diagonal(self.block(r, r))
                            for r in self.row_slices()])

  def dense(self) -> jax.Array:
    """The whole matrix (only when it fits in memory)."""
    if self.in_memory:
      return self._dense
    full = slice(0, self.n)
    return jnp.concatenate([self.block(r, full) for r in self.row_slices()])

  def astype(self, dtype) -> "KernelBlocks":
    if np.dtype(dtype) == self.dtype:
      return self
    return KernelBlocks(self._dense if self.in_memory else self.source,
                        self.n, self.block_size, dtype)


def _as_blocks(kernel, block_size: int, dtype=None) -> KernelBlocks:
  if isinstance(kernel, KernelBlocks):
    return kernel if dtype is None else kernel.astype(dtype)
  return KernelBlocks(kernel, block_size=block_size, dtype=dtype)


# ---- preconditioners: (kind, arrays) applied by `_apply_precond` -------------
# Module-level jitted functions of arrays (not closures), so that a new
# factorization does not recompile them.


def _nystrom(op: KernelBlocks, mu, rank: int, seed: int):
  omega = jax.random.normal(jax.random.PRNGKey(seed), (op.n, min(rank, op.n)),
                            op.dtype)
  omega, _ = jnp.linalg.qr(omega)
  return nystrom_factors(lambda v: op @ v, omega, mu)


def _block_jacobi(op: KernelBlocks, mu, block_size: int):
  n, dtype = op.n, op.dtype
  nb = -(-n // block_size)
  blocks = []
  for i in range(nb):
    r = slice(i * block_size, min((i + 1) * block_size, n))
    blk = op.block(r, r)
    m = blk.shape[0]
    full = jnp.eye(block_size, dtype=dtype)
    blocks.append(full.at[:m, :m].set(blk + mu * jnp.eye(m, dtype=dtype)))
  return (jnp.linalg.cholesky(jnp.stack(blocks)),)


@functools.partial(jax.jit, static_argnums=0)
def _apply_precond(kind, params, r):
  if kind == "nystrom":
    return apply_nystrom(params, r)
  if kind == "jacobi":
    return params[0][:, None] * r
  if kind == "block_jacobi":
    chol, = params
    nb, bs, _ = chol.shape
    n, c = r.shape
    rp = jnp.concatenate([r, jnp.zeros((nb * bs - n, c), r.dtype)])
    x = jax.vmap(lambda l, v: jax.scipy.linalg.cho_solve((l, True), v))(
        chol, rp.reshape(nb, bs, c))
    return x.reshape(nb * bs, c)[:n]
  return r


def _preconditioner(op, mu, name, rank, block_size, seed):
  """``(kind, arrays)`` of a preconditioner of ``K + mu I``."""
  if name is None or name == "none":
    return "none", ()
  if name == "nystrom":
    return name, _nystrom(op, mu, rank, seed)
  if name == "block_jacobi":
    return name, _block_jacobi(op, mu, block_size)
  if name == "jacobi":
    return name, (1. / (op.diagonal() + mu),)
  raise ValueError(f"Unknown preconditioner {name!r}: expected 'nystrom', "
                   f"'block_jacobi', 'jacobi' or None.")


# ---- the iteration -------------------------------------------------------------


def _cg_step(x, r, p, rz, ap, active):
  pap = jnp.sum(p * ap, axis=0)
  alpha = jnp.where(active & (pap > 0), rz / jnp.where(pap > 0, pap, 1.), 0.)
  return x + alpha[None] * p, r - alpha[None] * ap


def _cg_direction(r, z, p, rz):
  rz_new = jnp.sum(r * z, axis=0)
  beta = jnp.where(rz > 0, rz_new / jnp.where(rz > 0, rz, 1.), 0.)
  return z + beta[None] * p, rz_new


_cg_step_jit = jax.jit(_cg_step)
_cg_direction_jit = jax.jit(_cg_direction)


def _worst(res):
  """The largest relative residual of the columns still iterating: a NaN
  column (NaN or inf in its right-hand side) is left out, as no iteration
  mends it; it shows in the final residual (`nan_max`), which then reports
  the solve as not converged."""
  return nan_max(jnp.where(jnp.isnan(res), 0., res))


def _run_python(matvec, precond, b, tol, maxiter, verbose):
  """CG with a Python loop (any ``matvec``, e.g. over blocks on disk)."""
  bnorm = jnp.linalg.norm(b, axis=0)
  bnorm = jnp.where(bnorm > 0, bnorm, 1.)
  x = jnp.zeros_like(b)
  r = b
  z = precond(r)
  p, rz = z, jnp.sum(r * z, axis=0)
  history = []
  res = jnp.linalg.norm(r, axis=0) / bnorm
  it = 0
  while it < maxiter:
    if float(_worst(res)) <= tol:
      break
    active = res > tol
    x, r = _cg_step_jit(x, r, p, rz, matvec(p), active)
    z = precond(r)
    p, rz = _cg_direction_jit(r, z, p, rz)
    res = jnp.linalg.norm(r, axis=0) / bnorm
    it += 1
    history.append(float(_worst(res)))
    if verbose and (it % 10 == 0 or it == 1):
      print(f"CG iteration {it}: max relative residual {history[-1]:.3g}")
  return x, it, float(nan_max(res)), tuple(history)


@functools.partial(jax.jit, static_argnums=(2, 6))
def _run_jax(k, mu, kind, params, b, tol, maxiter):
  """CG as a `lax.while_loop` on an in-memory kernel (jit-friendly)."""
  def matvec(v):
    return k @ v + mu * v

  def precond(r):
    return _apply_precond(kind, params, r)

  bnorm = jnp.linalg.norm(b, axis=0)
  bnorm = jnp.where(bnorm > 0, bnorm, 1.)
  z = precond(b)
  hist = jnp.full((maxiter,), jnp.nan, b.dtype)
  res0 = jnp.linalg.norm(b, axis=0) / bnorm
  state = (jnp.zeros_like(b), b, z, jnp.sum(b * z, axis=0), res0, 0, hist)

  def cond(s):
    return (_worst(s[4]) > tol) & (s[5] < maxiter)

  def body(s):
    x, r, p, rz, res, it, hist = s
    x, r = _cg_step(x, r, p, rz, matvec(p), res > tol)
    p, rz = _cg_direction(r, precond(r), p, rz)
    res = jnp.linalg.norm(r, axis=0) / bnorm
    return x, r, p, rz, res, it + 1, hist.at[it].set(_worst(res))

  x, _, _, _, res, it, hist = jax.lax.while_loop(cond, body, state)
  return x, it, nan_max(res), hist


@dataclasses.dataclass(eq=False)
class CG:
  """Conjugate-gradient solver for ``t = inf`` predictions (see module doc).

  Attributes:
    tol: relative residual per right-hand side (default 1e-5 in float32,
      1e-8 in float64).
    maxiter: iteration cap (default ``n``).
    preconditioner: ``'nystrom'``, ``'block_jacobi'``, ``'jacobi'`` or None.
    rank: Nystrom rank.
    block_size: rows per block for products and block-Jacobi blocks.
    dtype: compute dtype (e.g. ``'float64'``), default the kernel's.
    seed: Nystrom sketch seed.
    on_failure: ``'warn'`` or ``'raise'`` when ``maxiter`` is reached first.
    verbose: print progress (host loop only).
    info: the `CGInfo` of the last solve (set by the solver).
  """

  tol: Optional[float] = None
  maxiter: Optional[int] = None
  preconditioner: Optional[str] = "nystrom"
  rank: int = 512
  block_size: int = 2048
  dtype: Any = None
  seed: int = 0
  on_failure: str = "warn"
  verbose: bool = False
  info: Optional[CGInfo] = None

  def factor(self, kernel, diag_reg=0., absolute: bool = False):
    """Prepares ``K + mu I`` (builds the preconditioner once)."""
    return _CGFactor(self, kernel, diag_reg, absolute)


class _CGFactor:

  def __init__(self, cfg: CG, kernel, diag_reg, absolute):
    t0 = time.perf_counter()
    self.cfg = cfg
    self.out_dtype = np.dtype(getattr(kernel, "dtype", np.float32))
    self.dtype = np.dtype(cfg.dtype or self.out_dtype)
    with precision(self.dtype):
      self.op = _as_blocks(kernel, cfg.block_size, self.dtype)
      n = self.op.n
      diag = self.op.diagonal()
      if is_concrete(diag) and not bool(jnp.all(jnp.isfinite(diag))):
        raise ValueError(f"The ({n}, {n}) kernel has NaN or inf on its "
                         f"diagonal; check the inputs and the network.")
      scale = 1. if absolute else jnp.mean(diag)
      self.mu = jnp.asarray(diag_reg * scale, self.dtype)
      self.precond = _preconditioner(self.op, self.mu, cfg.preconditioner,
                                     cfg.rank, cfg.block_size, cfg.seed)
      self.reg = self.mu
    self.setup_seconds = time.perf_counter() - t0

  def solve(self, b: jax.Array) -> jax.Array:
    cfg = self.cfg
    squeeze = b.ndim == 1
    t0 = time.perf_counter()
    with precision(self.dtype):
      b2 = jnp.asarray(b, self.dtype).reshape(self.op.n, -1)
      tol = cfg.tol if cfg.tol is not None else (
          1e-8 if self.dtype == np.float64 else 1e-5)
      maxiter = cfg.maxiter or self.op.n
      op, mu = self.op, self.mu

      def matvec(v):
        return op @ v + mu * v

      kind, params = self.precond
      if op.in_memory and not (is_concrete(b2) and cfg.verbose):
        x, it, res, hist = _run_jax(op.dense(), mu, kind, params, b2, tol,
                                    maxiter)
        if is_concrete(it):
          it, res = int(it), float(res)
          hist = tuple(float(h) for h in np.asarray(hist)[:it])
      else:
        x, it, res, hist = _run_python(
            matvec, functools.partial(_apply_precond, kind, params), b2, tol,
            maxiter, cfg.verbose)
      x = x.astype(self.out_dtype)
    if is_concrete(x):
      x.block_until_ready()
    converged = res <= tol if isinstance(res, float) else None
    cfg.info = CGInfo(it, converged, res, hist, cfg.preconditioner,
                      self.setup_seconds, time.perf_counter() - t0)
    if converged is False:
      msg = (f"CG did not reach tol={tol:g} in {it} iterations (relative "
             f"residual {res:.3g}) on the ({op.n}, {op.n}) kernel with "
             f"preconditioner={cfg.preconditioner!r}; raise maxiter, "
             f"diag_reg or the Nystrom rank.")
      if np.isnan(res):
        msg = (f"CG did not reach tol={tol:g}: some right-hand sides have "
               f"NaN residuals (NaN or inf in them or in the kernel); the "
               f"other columns were solved in {it} iterations.")
      if cfg.on_failure == "raise":
        raise ValueError(msg)
      warnings.warn(msg, RuntimeWarning, stacklevel=3)
    return x.reshape(b.shape) if squeeze else x


def cg_solve(kernel, b: jax.Array, diag_reg: float = 0.,
             diag_reg_absolute_scale: bool = False, **cg_options
             ) -> tuple[jax.Array, CGInfo]:
  """Solves ``(K + mu I) x = b`` by preconditioned CG.

  Args:
    kernel: ``(n, n)`` array, `KernelBlocks`, block function (wrap it in
      `KernelBlocks(fn, n)`) or store.
    b: ``(n,)`` or ``(n, c)`` right-hand side[s].
    diag_reg: ``mu = diag_reg * mean(diag K)`` (or ``diag_reg`` if
      ``diag_reg_absolute_scale``).
    **cg_options: fields of `CG` (tol, maxiter, preconditioner, rank, ...).

  Returns:
    ``(x, info)`` with info a `CGInfo`.
  """
  cfg = CG(**cg_options)
  x = cfg.factor(kernel, diag_reg, diag_reg_absolute_scale).solve(b)
  return x, cfg.info
