r"""The randomized Nystrom preconditioner of ``K + mu I``, for NumPy and JAX.

From one product ``Y = K Omega`` with an orthonormal ``Omega (n, r)``,
``K ~ U diag(lam) U^T`` (Frangella, Tropp & Udell 2023, Alg. 2.1: shift
``Y`` by ``nu Omega`` for stability, Cholesky of ``Omega^T Y``, SVD), and

.. math:: P^{-1} = I + U \left(\frac{\lambda_r + \mu}{\Lambda + \mu} - I
          \right) U^T,

which removes the top ``r`` eigenvalues from the condition number. One
implementation for the host solvers (NumPy arrays: `widenets.predict.pcg`
users) and for `widenets.predict.cg` (JAX arrays): the array type of
``omega`` picks the linear algebra.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

__all__ = ["nystrom_factors", "apply_nystrom", "gaussian_sketch"]


def gaussian_sketch(n: int, rank: int, seed: int, dtype) -> np.ndarray:
  """An orthonormal ``(n, min(rank, n))`` Gaussian test matrix (NumPy)."""
  rng = np.random.default_rng(seed)
  omega, _ = np.linalg.qr(rng.standard_normal((n, min(rank, n))).astype(
      dtype))
  return omega


def _linalg(omega):
  if isinstance(omega, np.ndarray):
    import scipy.linalg
    return np, np.linalg, scipy.linalg.solve_triangular
  import jax.numpy as jnp
  import jax.scipy.linalg
  return jnp, jnp.linalg, jax.scipy.linalg.solve_triangular


def nystrom_factors(matvec: Callable, omega, mu) -> tuple:
  """``(U (n, r), scale (r,))`` of the preconditioner (module doc), from
  ``matvec(omega) = K omega`` for an orthonormal ``omega (n, r)``."""
  xp, linalg, solve_triangular = _linalg(omega)
  n, dtype = omega.shape[0], omega.dtype
  y = xp.asarray(matvec(omega)).astype(dtype)
  nu = math.sqrt(n) * float(np.finfo(dtype).eps) * linalg.norm(y)
  y = y + nu * omega
  c = linalg.cholesky(omega.T @ y)
  b = solve_triangular(c, y.T, lower=True).T
  u, s, _ = linalg.svd(b, full_matrices=False)
  lam = xp.maximum(s ** 2 - nu, 0.)
  return u.astype(dtype), ((lam[-1] + mu) / (lam + mu) - 1.).astype(dtype)


def apply_nystrom(params: tuple, r):
  """``P^{-1} r`` for ``params = (U, scale)`` and ``r (n, c)``."""
  u, scale = params
  return r + u @ (scale[:, None] * (u.T @ r))
