"""Value checks of `predict`'s inputs: NaN never passes silently.

Each check runs once per call on concrete values and is skipped for tracers
(inside `jax.jit` there is nothing to look at; shapes are still checked
elsewhere). Arrays that are cheap to read on the host (NumPy arrays and
small concrete JAX arrays: `_common.host_value`) are checked with NumPy,
compiling nothing; others with one fused ``all(isfinite)`` reduction per
array and one host transfer of the flags together.

Degenerate training kernels are *warned about*, with the measured value:

* asymmetry ``||K - K^T||_F / ||K||_F`` beyond ``n * eps(dtype)``: the
  solvers read only the lower triangle of ``K``;
* an eigenvalue below ``-n * eps(dtype) * max|eigenvalue|``: gradient flow
  along its eigenvector would diverge; it is kept at its initial value
  (as for eigenvalues ``<= 0`` within round-off, which do not train).
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from .._tracing import is_concrete
from ._common import host_value

__all__ = ["check_finite", "check_learning_rate", "check_time",
           "check_train_kernel", "warn_asymmetry", "warn_indefinite"]


def _numeric(where: str, name: str, x):
  dtype = getattr(x, "dtype", None)
  if dtype is None:
    x = np.asarray(x)
    dtype = x.dtype
  if not (jnp.issubdtype(dtype, jnp.number) or
          jnp.issubdtype(dtype, jnp.bool_)):
    raise TypeError(f"{where}: `{name}` must be a numeric array; got dtype "
                    f"{dtype}.")
  return x


def check_finite(where: str, **arrays) -> None:
  """Raises a ValueError naming the first argument with NaN or inf values.

  ``None``, traced and matrix-free values are skipped.
  """
  names, flags = [], []
  for name, x in arrays.items():
    if x is None or getattr(x, "matrix_free", False):
      continue
    for leaf in jax.tree_util.tree_leaves(x):
      if not is_concrete(leaf):
        continue
      leaf = _numeric(where, name, leaf)
      if not jnp.issubdtype(leaf.dtype, jnp.inexact):
        continue
      names.append((name, tuple(np.shape(leaf))))
      host = host_value(leaf)
      flags.append(jnp.all(jnp.isfinite(leaf)) if host is None else
                   np.all(np.isfinite(host)))
  if not flags:
    return
  for (name, shape), ok in zip(names, jax.device_get(flags)):
    if not ok:
      raise ValueError(f"{where}: `{name}` (shape {shape}) contains NaN or "
                       f"infinite values.")


def _scalars(x) -> Optional[np.ndarray]:
  if x is None or not all(is_concrete(leaf)
                          for leaf in jax.tree_util.tree_leaves(x)):
    return None
  return np.asarray(jax.device_get(x), dtype=float)


def check_learning_rate(where: str, learning_rate) -> None:
  """``learning_rate`` must be finite (NaN or inf would give NaN outputs)."""
  lr = _scalars(learning_rate)
  if lr is not None and not np.all(np.isfinite(lr)):
    raise ValueError(f"{where}: `learning_rate` must be finite; got "
                     f"learning_rate={learning_rate}.")


def check_time(where: str, t, learning_rate) -> None:
  """``t`` (``None`` = inf) must be a number or +inf, and ``eta * t`` defined.

  NaN and ``-inf`` are errors; ``learning_rate = 0`` with ``t = inf`` (or
  ``None``) is ``0 * inf``, undefined, and also an error.
  """
  lr = _scalars(learning_rate)
  if t is None:
    if lr is not None and np.any(lr == 0):
      raise ValueError(f"{where}: t=None means t=inf, and learning_rate=0 "
                       f"makes eta * t = 0 * inf undefined. Use a finite t "
                       f"or learning_rate > 0.")
    return
  times = _scalars(t)
  if times is None:
    return
  if np.any(np.isnan(times)):
    raise ValueError(f"{where}: `t` contains NaN (got t={t}).")
  if np.any(times == -np.inf):
    raise ValueError(f"{where}: `t` contains -inf (got t={t}); times must be "
                     f"finite or +inf (None).")
  if lr is not None and np.any(lr == 0) and np.any(np.isinf(times)):
    raise ValueError(f"{where}: learning_rate=0 with t=inf makes eta * t = "
                     f"0 * inf undefined. Use a finite t or learning_rate "
                     f"> 0.")


@jax.jit
def _kernel_stats(k2d: jax.Array):
  """``(all finite, ||K - K^T||_F, ||K||_F)`` in one pass."""
  return (jnp.all(jnp.isfinite(k2d)), jnp.linalg.norm(k2d - k2d.T),
          jnp.linalg.norm(k2d))


def check_train_kernel(where: str, k2d, name: str = "k_train_train") -> None:
  """Finite entries (error) and symmetry to round-off (warning)."""
  if getattr(k2d, "matrix_free", False) or not is_concrete(k2d):
    return
  k2d = _numeric(where, name, k2d)
  finite, asym, norm = jax.device_get(_kernel_stats(jnp.asarray(k2d)))
  if not finite:
    raise ValueError(f"{where}: `{name}` (shape {tuple(np.shape(k2d))}) "
                     f"contains NaN or infinite values.")
  warn_asymmetry(where, float(asym), float(norm), k2d.shape[0], k2d.dtype,
                 name)


def _roundoff(n: int, dtype) -> float:
  dtype = dtype if np.issubdtype(dtype, np.inexact) else np.float32
  return max(n, 1) * float(np.finfo(dtype).eps)


def warn_asymmetry(where: str, asym: float, norm: float, n: int, dtype,
                   name: str = "k_train_train") -> None:
  rel = asym / norm if norm > 0 else 0.
  tol = _roundoff(n, dtype)
  if rel > tol:
    warnings.warn(
        f"{where}: `{name}` ({n}x{n}) is not symmetric: ||K - K^T|| / ||K|| "
        f"= {rel:.3g} (round-off level {tol:.3g}). Only its lower triangle "
        f"is used; pass (K + K.T) / 2 to silence this.", RuntimeWarning,
        stacklevel=3)


def warn_indefinite(where: str, evals, dtype, name: str = "k_train_train"
                    ) -> None:
  """Warns when the smallest eigenvalue is negative beyond round-off."""
  if not is_concrete(evals):
    return
  # Indexed on the host: inside `jit` (a kernel closed over, its spectrum
  # computed eagerly) indexing the device array would trace it again.
  host = np.asarray(jax.device_get(evals))
  lo, hi = float(host[0]), float(host[-1])
  n = int(host.shape[0])
  scale = max(abs(lo), abs(hi))
  tol = _roundoff(n, dtype) * scale
  if math.isfinite(lo) and lo < -tol:
    warnings.warn(
        f"{where}: `{name}` ({n}x{n}) is not positive semi-definite: its "
        f"smallest eigenvalue is {lo:.3g} (largest {hi:.3g}, round-off level "
        f"{tol:.3g}). Gradient flow along eigenvectors with eigenvalues <= 0 "
        f"does not train (those output directions keep their initial "
        f"values); check the kernel with widenets.predict.check_psd.",
        RuntimeWarning, stacklevel=3)
