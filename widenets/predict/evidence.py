"""Model evidence: the GP log marginal likelihood and leave-one-out criteria.

An infinitely wide network's outputs are a Gaussian process with kernel
``K`` (NNGP, or NTK for the infinite-time ensemble's prior-free analogue).
For targets ``Y`` of shape ``(n, c)`` (``c`` independent output columns
sharing the kernel) and observation noise ``r`` (the ``diag_reg``
regularizer, as in the predictors), with ``A = K + r I``:

    log p(Y) = sum_j [ -1/2 y_j^T A^{-1} y_j - 1/2 log det A - n/2 log 2 pi ]

and the leave-one-out (LOO) predictive log likelihood, in closed form from
``A^{-1}`` (Rasmussen & Williams 2006, eq. 5.10-5.12)::

    mu_i = y_i - [A^{-1} y]_i / [A^{-1}]_ii,     var_i = 1 / [A^{-1}]_ii
    log p_LOO(Y) = sum_{i, j} log N(y_ij | mu_ij, var_i)

Both are differentiable in the kernel's entries, hence (through a
``kernel_fn`` built inside the differentiated function) in the network's
hyperparameters; see `widenets.hyperparameters`.

Numerics: the factorization is the predictors' regularized Cholesky
(`widenets.predict.solvers`). On concrete kernels it is `Cholesky`'s
``factor`` (optionally in float64 without ``jax_enable_x64``; the
regularizer is raised x10 with a warning when the factorization fails).
Under `jax.grad` / `jax.jit` it is the plain factor at ``diag_reg``: a
failed factorization gives a NaN (an escalating loop is not reverse-mode
differentiable), and float64 needs ``jax.enable_x64`` around the whole
traced computation.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from .._tracing import is_concrete
from ._common import to_2d, x64_available
from . import solvers

__all__ = ["log_marginal_likelihood", "leave_one_out_log_likelihood"]

_LOG_2PI = math.log(2 * math.pi)

KernelLike = Union[jax.Array, np.ndarray, Any, Callable]


def _train_kernel(k_train_train, x_train, get: str, kernel_fn_kwargs,
                  where: str) -> jax.Array:
  """The flat ``(n, n)`` train kernel from an array, a Kernel or a kernel_fn."""
  if callable(k_train_train) and not hasattr(k_train_train, "shape"):
    if x_train is None:
      raise ValueError(f"{where}: k_train_train is a kernel_fn, so x_train "
                       f"is needed (got x_train=None).")
    k_train_train = k_train_train(x_train, None, get, **kernel_fn_kwargs)
  elif x_train is not None or kernel_fn_kwargs:
    raise ValueError(f"{where}: x_train and kernel_fn keyword arguments are "
                     f"only used with a kernel_fn; k_train_train is an array.")
  if not hasattr(k_train_train, "shape"):
    k = getattr(k_train_train, get, None)
    if k is None:
      raise ValueError(f"{where}: k_train_train of type "
                       f"{type(k_train_train).__name__} has no {get!r} "
                       f"entry; pass an (n, n) array or compute {get!r}.")
    k_train_train = k
  k = to_2d(jnp.asarray(k_train_train))
  if k.shape[0] != k.shape[1]:
    raise ValueError(f"{where}: k_train_train must be square; got shape "
                     f"{tuple(jnp.shape(k_train_train))}.")
  return k


def _targets(y_train, n: int, where: str) -> jax.Array:
  """``y_train`` as ``(n, c)``: leading axes match the kernel's rows."""
  y = jnp.asarray(y_train)
  if y.ndim == 0 or y.size % n or (y.ndim == 1 and y.shape[0] != n):
    raise ValueError(f"{where}: y_train of shape {y.shape} does not fit the "
                     f"({n}, {n}) train kernel; expected (n,) or (n, "
                     f"outputs) with n = {n} (or (N, ..., outputs) for a "
                     f"kernel over N inputs with spatial axes).")
  return y.reshape(n, -1)


def _factor(k: jax.Array, diag_reg, absolute: bool, dtype, where: str):
  """``(chol, compute dtype)`` of ``K + r I`` (see the module docstring)."""
  dtype = np.dtype(k.dtype if dtype is None else dtype)
  if is_concrete(k) and is_concrete(diag_reg):
    f = solvers.Cholesky(dtype=dtype).factor(k, diag_reg, absolute)
    return f.chol, f.dtype
  if dtype == np.float64 and not x64_available():
    raise ValueError(f"{where}: dtype={dtype.name} inside jax.grad/jit needs "
                     f"`with jax.enable_x64(True):` around the whole "
                     f"computation (the kernel is {np.dtype(k.dtype).name}).")
  a = k.astype(dtype)
  reg = solvers.regularizer(a, jnp.asarray(diag_reg, dtype), absolute)
  return solvers.regularized_cholesky(a, reg.astype(dtype)), dtype


def _factored(where: str, k_train_train, y_train, diag_reg, absolute, dtype,
              x_train, get: str, kernel_fn_kwargs) -> tuple:
  """``(chol (n, n), y (n, c), compute dtype, kernel dtype)``: the checked
  training kernel's regularized Cholesky factor and the checked targets."""
  k = _train_kernel(k_train_train, x_train, get, kernel_fn_kwargs, where)
  y = _targets(y_train, k.shape[0], where)
  chol, compute_dtype = _factor(k, diag_reg, bool(absolute), dtype, where)
  return chol, y, compute_dtype, k.dtype


def log_marginal_likelihood(k_train_train: KernelLike, y_train,
                            diag_reg: float = 0.,
                            diag_reg_absolute_scale: bool = False, *,
                            per_output: bool = False, dtype=None,
                            x_train=None, get: str = "nngp",
                            **kernel_fn_kwargs) -> jax.Array:
  """GP log marginal likelihood ``log N(Y | 0, K + r I)`` (module docstring).

  Args:
    k_train_train: the train-train kernel, ``(n, n)`` or zipped ``(N, N, X,
      X, ...)``, a `widenets.Kernel` (its ``get`` entry is used), or a
      ``kernel_fn`` evaluated as ``kernel_fn(x_train, None, get)``.
    y_train: targets ``(n,)``, ``(n, c)`` or ``(N, X, ..., c)``.
    diag_reg: observation-noise variance ``r``: relative to the mean
      diagonal ``tr(K) / n`` unless ``diag_reg_absolute_scale`` (as in
      `gp_inference`).
    diag_reg_absolute_scale: see ``diag_reg``.
    per_output: return ``(c,)`` values, one per output column, instead of
      their sum.
    dtype: compute dtype of the factorization (e.g. ``'float64'``); None for
      the kernel's. Returned in the kernel's dtype.
    x_train, get, kernel_fn_kwargs: used when ``k_train_train`` is a
      ``kernel_fn``.

  Returns:
    A scalar (or ``(c,)`` with ``per_output``). Differentiable in the kernel
    and ``diag_reg``.
  """
  chol, y, dtype, out_dtype = _factored(
      "log_marginal_likelihood", k_train_train, y_train, diag_reg,
      diag_reg_absolute_scale, dtype, x_train, get, kernel_fn_kwargs)
  n = chol.shape[0]
  with solvers.precision(dtype):
    y = y.astype(dtype)
    z = jax.scipy.linalg.solve_triangular(chol, y, lower=True)
    fit = -0.5 * jnp.sum(z * z, axis=0)
    logdet = jnp.sum(jnp.log(jnp.diagonal(chol)))
    out = fit - logdet - 0.5 * n * _LOG_2PI
    out = out if per_output else jnp.sum(out)
    return out.astype(out_dtype)


def leave_one_out_log_likelihood(k_train_train: KernelLike, y_train,
                                 diag_reg: float = 0.,
                                 diag_reg_absolute_scale: bool = False, *,
                                 per_output: bool = False, dtype=None,
                                 x_train=None, get: str = "nngp",
                                 **kernel_fn_kwargs) -> jax.Array:
  """Leave-one-out predictive log likelihood ``sum_i log p(y_i | y_{-i})``.

  Closed form from ``A^{-1}``, ``A = K + r I``: ``mu_i = y_i -
  [A^{-1} y]_i / [A^{-1}]_ii``, ``var_i = 1 / [A^{-1}]_ii``. Arguments and
  return value as `log_marginal_likelihood`; costs one ``(n, n)`` inverse
  from the Cholesky factor.
  """
  chol, y, dtype, out_dtype = _factored(
      "leave_one_out_log_likelihood", k_train_train, y_train, diag_reg,
      diag_reg_absolute_scale, dtype, x_train, get, kernel_fn_kwargs)
  n = chol.shape[0]
  with solvers.precision(dtype):
    y = y.astype(dtype)
    inv = jax.scipy.linalg.cho_solve((chol, True), jnp.eye(n, dtype=dtype))
    inv_diag = jnp.diagonal(inv)[:, None]                        # (n, 1)
    resid = (inv @ y) / inv_diag                                 # y - mu
    out = 0.5 * jnp.log(inv_diag) - 0.5 * resid**2 * inv_diag \
        - 0.5 * _LOG_2PI                                         # (n, c)
    out = jnp.sum(out, axis=0)
    out = out if per_output else jnp.sum(out)
    return out.astype(out_dtype)
