r"""Resumable preconditioned conjugate gradients on the host (NumPy).

`pcg` solves :math:`A X = B` for a symmetric positive definite ``A`` given
only as ``matvec(V) -> A V`` (a pass over kernel blocks on disk, a Dask
cluster, a Nystrom system) and a preconditioner ``precond(R) ~ A^{-1} R``,
for ``c`` right-hand sides at once (columns converge independently).

Its whole state is ``(x, r, p, rz, iteration, history)``: `pcg` hands it to
``checkpoint(state)`` every ``checkpoint_every`` iterations and restarts from
a ``state`` so saved, so a killed solve resumes where its last checkpoint
was and then follows exactly the iterates of an uninterrupted run.

Reaching ``maxiter`` before the relative residual ``||b - A x|| / ||b||``
of every column is below ``tol`` warns (or raises) with the residual
reached: the result is then an approximation, said so, never silently.
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Callable, Optional

import numpy as np

__all__ = ["pcg", "PCGInfo", "iteration_bar"]


@dataclasses.dataclass
class PCGInfo:
  """Report of a `pcg` solve.

  iterations: the iteration count reached (including resumed ones);
  resumed_from: the checkpoint's iteration (0: a fresh start);
  converged: every column reached ``tol``; residual: the largest relative
  residual (recursive estimate); history: its value per iteration;
  seconds: wall time of this call.
  """
  iterations: int = 0
  resumed_from: int = 0
  converged: bool = False
  residual: float = float("nan")
  history: tuple = ()
  seconds: float = 0.


class _NoBar:
  def update(self, n=1):
    pass

  def set_postfix_str(self, s):
    pass

  def close(self):
    pass


def iteration_bar(progress, total: int, initial: int, desc: str):
  """A tqdm bar (``progress=True``), or a no-op; tqdm imported lazily."""
  if progress is not True:
    return _NoBar()
  try:
    from tqdm.auto import tqdm
  except ImportError as e:
    raise ImportError("progress=True needs tqdm: pip install "
                      "'widenets[scale]' (or pip install tqdm).") from e
  return tqdm(total=total, initial=initial, desc=desc, unit="it",
              dynamic_ncols=True)


def _worst(res: np.ndarray) -> float:
  """The largest relative residual of the columns still iterating: a NaN
  column (NaN or inf in its right-hand side) is left out, as no iteration
  mends it; the final residual (NumPy's max, which keeps NaN) then reports
  the solve as not converged."""
  return float(np.max(np.where(np.isnan(res), 0., res), initial=0.))


def pcg(matvec: Callable[[np.ndarray], np.ndarray],
        precond: Optional[Callable[[np.ndarray], np.ndarray]],
        b: np.ndarray, tol: float, maxiter: int, *,
        state: Optional[dict] = None,
        checkpoint: Optional[Callable[[dict], None]] = None,
        checkpoint_every: int = 0, progress=False,
        callback: Optional[Callable[[int, float], None]] = None,
        name: str = "CG", on_failure: str = "warn"
        ) -> tuple[np.ndarray, PCGInfo]:
  """Solves ``A X = B`` (``B`` of shape ``(n, c)``); see the module doc.

  Args:
    matvec: ``V (n, c) -> A V``.
    precond: ``R -> M^{-1} R`` or None.
    b: right-hand sides ``(n, c)``.
    tol: relative residual per column.
    maxiter: iteration cap (counted from 0, including resumed iterations).
    state: a checkpointed state to resume from.
    checkpoint: ``checkpoint(state)`` called every ``checkpoint_every``
      iterations.
    progress: True for a tqdm bar over iterations, with the residual.
    callback: ``callback(iteration, residual)`` after each iteration.
    name: what is solved, for messages.
    on_failure: ``'warn'`` or ``'raise'`` when ``maxiter`` is reached first.

  Returns:
    ``(x, PCGInfo)``.
  """
  t0 = time.perf_counter()
  if on_failure not in ("warn", "raise"):
    raise ValueError(f"pcg: on_failure must be 'warn' or 'raise'; got "
                     f"{on_failure!r}.")
  precond = precond or (lambda r: r)
  bnorm = np.linalg.norm(b, axis=0)
  bnorm = np.where(bnorm > 0, bnorm, 1.)
  if state is not None:
    x, r, p, rz = (np.array(state[k]) for k in ("x", "r", "p", "rz"))
    it, history = int(state["iteration"]), list(state["history"])
  else:
    x, r = np.zeros_like(b), np.array(b)
    p = precond(r)
    rz = np.sum(r * p, axis=0)
    it, history = 0, []
  resumed_from = it
  res = np.linalg.norm(r, axis=0) / bnorm
  bar = iteration_bar(progress, maxiter, it, f"{name} iterations")
  try:
    while it < maxiter and _worst(res) > tol:
      active = res > tol
      ap = matvec(p)
      pap = np.sum(p * ap, axis=0)
      alpha = np.where(active & (pap > 0), rz / np.where(pap > 0, pap, 1.), 0.)
      # Not in place: ``p`` or ``z`` may be ``r`` itself (no preconditioner).
      x = x + alpha * p
      r = r - alpha * ap
      z = precond(r)
      rz_new = np.sum(r * z, axis=0)
      beta = np.where(active & (rz > 0), rz_new / np.where(rz > 0, rz, 1.), 0.)
      p = z + beta * p
      rz = rz_new
      it += 1
      res = np.linalg.norm(r, axis=0) / bnorm
      history.append(_worst(res))
      bar.update(1)
      bar.set_postfix_str(f"residual {history[-1]:.2e}")
      if checkpoint is not None and checkpoint_every and \
          it % checkpoint_every == 0:
        checkpoint({"x": x, "r": r, "p": p, "rz": rz, "iteration": it,
                    "history": np.asarray(history)})
      if callback is not None:
        callback(it, history[-1])
  finally:
    bar.close()
  if checkpoint is not None and checkpoint_every and it > resumed_from:
    checkpoint({"x": x, "r": r, "p": p, "rz": rz, "iteration": it,
                "history": np.asarray(history)})
  residual = float(np.max(res))
  info = PCGInfo(it, resumed_from, residual <= tol, residual, tuple(history),
                 time.perf_counter() - t0)
  if not info.converged:
    msg = (f"{name}: conjugate gradients did not reach tol={tol:g} in "
           f"maxiter={maxiter} iterations: the largest relative residual "
           f"||b - A x|| / ||b|| is {residual:.3g}. The result is only an "
           f"approximation; raise maxiter or diag_reg, or improve the "
           f"preconditioner (a larger rank).")
    if np.isnan(residual):
      msg = (f"{name}: conjugate gradients did not reach tol={tol:g}: some "
             f"right-hand sides have NaN residuals (NaN or inf in them or in "
             f"the matrix); the other columns were solved in {it} "
             f"iterations.")
    if on_failure == "raise":
      raise RuntimeError(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)
  return x, info
