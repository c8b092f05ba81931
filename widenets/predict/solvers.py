"""Linear solves with kernels: robust Cholesky, eigendecomposition, PSD check.

All predictors need ``(K + r I)^{-1} b`` (``t = inf``) or functions of ``K``
in its eigenbasis (finite ``t``), where ``K`` is the flat ``(n, n)`` train-train
kernel and ``r = diag_reg`` (times the mean diagonal ``tr(K) / n`` unless
``diag_reg_absolute_scale``). Solver objects choose *how*:

* `Cholesky` (default; neural-tangents' behaviour plus, additively):
  ``dtype='float64'`` factorizes and solves in float64 even for float32
  kernels and without ``jax_enable_x64``; ``on_failure`` decides what happens
  when the factorization fails (a non-finite factor): ``'regularize'`` (the
  default) raises the regularizer by factors of 10 and warns with the value
  used, ``'raise'`` raises a ValueError, ``'nan'`` returns the NaNs as
  neural-tangents did. ``check_psd=True`` also reports kernels that are not
  positive semi-definite beyond round-off (see `check_psd`).
* `widenets.predict.cg.CG`: preconditioned conjugate gradients for large
  ``n``, matrix-free over kernel blocks (see that module).

Everything is jit-friendly: inside `jax.jit` the escalation runs as a
`lax.while_loop` and warnings / errors are emitted through
`jax.debug.callback`.
"""
from __future__ import annotations

import collections
import functools
import dataclasses
import importlib.util
import warnings
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ._common import as_array, is_concrete, precision, small_jit, to_2d
from .cg import CG

__all__ = ["Cholesky", "Factor", "Eigen", "check_psd", "PSDReport",
           "regularizer", "precision", "make_solver", "regularized_cholesky"]


def regularizer(a2d: jax.Array, diag_reg, absolute: bool) -> jax.Array:
  """The absolute diagonal shift: ``diag_reg`` times 1 or ``tr(K) / n``."""
  if absolute:
    return jnp.asarray(diag_reg, a2d.dtype)
  return diag_reg * jnp.trace(a2d) / a2d.shape[0]


def _compute_dtype(solver_dtype, kernel_dtype):
  return np.dtype(kernel_dtype if solver_dtype is None else solver_dtype)


def regularized_cholesky(a: jax.Array, reg: jax.Array) -> jax.Array:
  # The lower triangle only, as LAPACK and jax.scipy.linalg.cho_factor (and
  # so neural-tangents) read it: symmetrizing first is one more (n, n) pass.
  return jnp.linalg.cholesky(a + reg * jnp.eye(a.shape[0], dtype=a.dtype),
                             symmetrize_input=False)


_cholesky = small_jit(regularized_cholesky)


def _factor_parts(a: jax.Array, diag_reg, absolute: bool):
  """``(all finite, mean |diagonal|, regularizer, factor, factor ok)``."""
  n = a.shape[0]
  scale = jnp.abs(jnp.trace(a) / n) + jnp.finfo(a.dtype).tiny
  reg = regularizer(a, diag_reg, absolute).astype(a.dtype)
  chol = regularized_cholesky(a, reg)
  return jnp.all(jnp.isfinite(a)), scale, reg, chol, _is_ok(chol)


_factor = small_jit(_factor_parts, static_argnums=(2,))


@functools.partial(small_jit, static_argnums=(2, 5))
def _factor_solve(a, diag_reg, absolute: bool, b, apply, out_dtype):
  """`_factor_parts`, then ``x = (K + rI)^{-1} b`` (in ``out_dtype``) and
  ``apply @ x`` (None if ``apply`` is None): a first prediction compiles one
  small program per training-set size instead of three (factor, solve,
  product), and XLA's fixed cost per program dominates at small ``n``."""
  parts = _factor_parts(a, diag_reg, absolute)
  x = jax.scipy.linalg.cho_solve((parts[3], True), b).astype(out_dtype)
  return parts + (x, None if apply is None else apply @ x)


# Up to this many entries in the kernel, a concrete factor-and-solve on the
# CPU runs in NumPy / SciPy: the same LAPACK routines XLA calls on CPU, and
# no program to compile per training-set size (~0.15-0.2 CPU s each with
# JAX 0.10, most of a learning curve's predict time; benchmarks/ISSUE15.md,
# section 10).
HOST_SOLVE_SIZE = 1 << 22


@functools.lru_cache(maxsize=None)
def _has_scipy() -> bool:
  # Installed with jax itself; checked rather than assumed.
  return importlib.util.find_spec("scipy") is not None


def on_host(*arrays) -> bool:
  """Whether every array is concrete and on the CPU (NumPy or a CPU
  `jax.Array`), with at most `HOST_SOLVE_SIZE` entries (and SciPy is
  installed)."""
  if not _has_scipy():
    return False
  for x in arrays:
    if x is None or isinstance(x, (bool, int, float, np.generic)):
      continue
    if isinstance(x, jax.Array):
      if not is_concrete(x) or any(d.platform != "cpu" for d in x.devices()):
        return False
    elif not isinstance(x, np.ndarray):
      return False
    if np.size(x) > HOST_SOLVE_SIZE:
      return False
  return True


def _factor_host(a: np.ndarray, diag_reg, absolute: bool) -> tuple:
  """`_factor_parts` in NumPy (see `HOST_SOLVE_SIZE`): the same tuple, as
  NumPy values; a failed factorization is NaN, as in XLA."""
  n = a.shape[0]
  trace = np.trace(a)
  scale = (np.abs(trace / n) + np.finfo(a.dtype).tiny).astype(a.dtype)
  reg = np.asarray(diag_reg if absolute else diag_reg * trace / n, a.dtype)
  try:
    # Reads the lower triangle only, as `regularized_cholesky` does.
    chol = np.linalg.cholesky(a + reg * np.eye(n, dtype=a.dtype))
  except np.linalg.LinAlgError:
    chol = np.full_like(a, np.nan)
  return np.isfinite(a).all(), scale, reg, chol, np.isfinite(chol).all()


def cho_solve_host(chol: np.ndarray, b) -> np.ndarray:
  """``cho_solve`` in SciPy; NaN (as in XLA) if the factor is not finite."""
  import scipy.linalg  # a dependency of jax itself
  b = np.asarray(b, chol.dtype)
  if not np.isfinite(chol).all():
    return np.full(b.shape, np.nan, chol.dtype)
  return scipy.linalg.cho_solve((chol, True), b, check_finite=False)


@small_jit
def _cho_solve(chol: jax.Array, b: jax.Array) -> jax.Array:
  # Compiled once per shape: run eagerly, cho_solve's two triangular solves
  # and their transposes would be dispatched op by op.
  return jax.scipy.linalg.cho_solve((chol, True), b)


def _is_ok(chol: jax.Array) -> jax.Array:
  return jnp.all(jnp.isfinite(chol))


def _reg_message(diag_reg, reg, scale, n, dtype) -> str:
  hint = "" if np.dtype(dtype) == np.float64 else \
      ", or solve in float64 with solver=Cholesky(dtype='float64')"
  return (f"Cholesky factorization of the ({n}, {n}) {np.dtype(dtype).name} "
          f"train-train kernel failed at diag_reg={float(diag_reg):.3g}; "
          f"used an absolute regularizer {float(reg):.3g} instead "
          f"(= diag_reg {float(reg / scale):.3g} relative to the mean "
          f"diagonal {float(scale):.3g}). Pass diag_reg={float(reg / scale):.3g}"
          f" (or {float(reg):.3g} with diag_reg_absolute_scale=True){hint} to "
          f"avoid this warning.")


def _fail_message(diag_reg, n, dtype, tried) -> str:
  return (f"Cholesky factorization of the ({n}, {n}) {np.dtype(dtype).name} "
          f"train-train kernel failed at diag_reg={float(diag_reg):.3g}"
          f"{tried}: the kernel is not positive definite to working "
          f"precision. Increase diag_reg, solve in float64 "
          f"(solver=Cholesky(dtype='float64')), or check the kernel with "
          f"widenets.predict.check_psd.")


@dataclasses.dataclass(frozen=True)
class Cholesky:
  """Dense Cholesky solves (the default solver).

  Attributes:
    dtype: compute dtype of the factorization and the solves (e.g.
      ``'float64'``; usable without ``jax_enable_x64``). ``None``: the
      kernel's dtype. Results are returned in the kernel's dtype.
    on_failure: ``'regularize'`` (raise the regularizer x10 up to
      ``max_tries`` times, warning with the value used), ``'raise'`` (a
      ValueError) or ``'nan'`` (return NaNs, as neural-tangents 0.6.5).
    max_tries: escalation steps for ``'regularize'``.
    check_psd: also run `check_psd` on the kernel and warn when it is not PSD
      beyond round-off (costs an eigendecomposition; eager only).
  """

  dtype: Any = None
  on_failure: str = "regularize"
  max_tries: int = 10
  check_psd: bool = False

  def __post_init__(self):
    if self.on_failure not in ("regularize", "raise", "nan"):
      raise ValueError(f"Cholesky(on_failure={self.on_failure!r}): expected "
                       f"'regularize', 'raise' or 'nan'.")

  def factor(self, k2d: jax.Array, diag_reg, absolute: bool) -> "Factor":
    """Factorizes ``K + r I`` (``k2d`` is the flat ``(n, n)`` kernel)."""
    k2d, dtype = self._dense(k2d)
    with precision(dtype):
      if on_host(k2d, diag_reg):
        a = np.asarray(k2d, dtype)
        parts = tuple(map(as_array, _factor_host(a, diag_reg, bool(absolute))))
        return self._finish(as_array(a), parts, diag_reg, k2d.dtype)
      a = jnp.asarray(k2d, dtype)
      # One compiled call for the checks, the regularizer and the factor:
      # separate eager ops each held an (n, n) buffer and a compiled program.
      parts = _factor(a, diag_reg, bool(absolute))
      return self._finish(a, parts, diag_reg, k2d.dtype)

  def factor_solve(self, k2d: jax.Array, diag_reg, absolute: bool,
                   b: jax.Array, apply: Optional[jax.Array] = None):
    """``(factor, x, apply @ x)`` with ``x = (K + r I)^{-1} b`` of shape
    ``(n, c)`` in the kernel's dtype (``apply @ x`` is None if ``apply`` is
    None); the same numbers as `factor`, `Factor.solve` and a product, in
    one compiled program unless the factorization needs escalating."""
    k2d, dtype = self._dense(k2d)
    out_dtype = np.dtype(k2d.dtype)
    with precision(dtype):
      if on_host(k2d, b, apply, diag_reg):
        a = np.asarray(k2d, dtype)
        parts = _factor_host(a, diag_reg, bool(absolute))
        x = cho_solve_host(parts[3], b).astype(out_dtype)
        parts += (x, None if apply is None else np.asarray(apply) @ x)
        parts = tuple(None if p is None else as_array(p) for p in parts)
        a = as_array(a)
      else:
        a = jnp.asarray(k2d, dtype)
        parts = _factor_solve(a, diag_reg, bool(absolute),
                              jnp.asarray(b, dtype), apply, out_dtype)
      factor = self._finish(a, parts[:5], diag_reg, out_dtype)
    if factor.chol is parts[3] and is_concrete(parts[4]):
      return factor, parts[5], parts[6]
    # Escalated (or traced): solve with the factor actually used.
    x = factor.solve(b)
    return factor, x, None if apply is None else apply @ x

  def _dense(self, k2d):
    if getattr(k2d, "matrix_free", False):
      k2d = k2d.dense()
    return k2d, _compute_dtype(self.dtype, k2d.dtype)

  def _finish(self, a, parts, diag_reg, out_dtype) -> "Factor":
    """Checks `_factor_parts`' results; escalates ``r`` if asked to."""
    finite, scale, reg0, chol, ok = parts
    n, dtype = a.shape[0], a.dtype
    if is_concrete(a):
      if not bool(finite):
        raise ValueError(f"The ({n}, {n}) train-train kernel contains NaN "
                         f"or inf entries; check the inputs and the "
                         f"network (e.g. NaN inputs).")
      if self.check_psd:
        check_psd(a, name="k_train_train", warn=True)
    if self.on_failure == "nan":
      return Factor(chol, dtype, out_dtype, reg0)
    if is_concrete(ok):
      chol, reg = self._escalate_eager(a, chol, bool(ok), reg0, scale,
                                       diag_reg)
    else:
      chol, reg = self._escalate_traced(a, chol, ok, reg0, scale, diag_reg)
    return Factor(chol, dtype, out_dtype, reg)

  def _steps(self, reg0, scale, dtype):
    base = jnp.maximum(reg0, jnp.finfo(dtype).eps * scale)
    return base, 10.

  def _escalate_eager(self, a, chol, ok, reg0, scale, diag_reg):
    n, dtype = a.shape[0], a.dtype
    if ok:
      return chol, reg0
    if self.on_failure == "raise":
      raise ValueError(_fail_message(diag_reg, n, dtype, ""))
    base, factor = self._steps(reg0, scale, dtype)
    reg = base
    for _ in range(self.max_tries):
      reg = reg * factor
      chol = _cholesky(a, reg)
      if bool(_is_ok(chol)):
        warnings.warn(_reg_message(diag_reg, reg, scale, n, dtype),
                      RuntimeWarning, stacklevel=5)
        return chol, reg
    raise ValueError(_fail_message(
        diag_reg, n, dtype, f" and up to an absolute regularizer "
        f"{float(reg):.3g} ({self.max_tries} escalations)"))

  def _escalate_traced(self, a, chol, ok, reg0, scale, diag_reg):
    n, dtype = a.shape[0], a.dtype
    if self.on_failure == "raise":
      def fail(ok):
        if not ok:
          raise ValueError(_fail_message(diag_reg, n, dtype, ""))
      jax.debug.callback(fail, ok)
      return chol, reg0
    base, factor = self._steps(reg0, scale, dtype)

    def cond(state):
      i, _, _, ok = state
      return jnp.logical_and(~ok, i < self.max_tries)

    def body(state):
      i, reg, _, _ = state
      reg = jnp.where(i == 0, base, reg) * factor
      c = _cholesky(a, reg)
      return i + 1, reg, c, _is_ok(c)

    i, reg, chol, ok = jax.lax.while_loop(
        cond, body, (jnp.int32(0), reg0, chol, ok))

    def report(i, reg, scale, ok, diag_reg):
      if not ok:
        raise ValueError(_fail_message(diag_reg, n, dtype,
                                       f" and after {int(i)} escalations"))
      if i > 0:
        warnings.warn(_reg_message(diag_reg, reg, scale, n, dtype),
                      RuntimeWarning)
    jax.debug.callback(report, i, reg, scale, ok, diag_reg)
    return chol, reg


@dataclasses.dataclass(frozen=True)
class Factor:
  """A Cholesky factor of ``K + r I``; ``solve(b)`` for ``b`` of shape (n, c)."""

  chol: jax.Array
  dtype: Any
  out_dtype: Any
  reg: jax.Array

  def solve(self, b: jax.Array) -> jax.Array:
    with precision(self.dtype):
      if on_host(self.chol, b):
        return as_array(cho_solve_host(np.asarray(self.chol), b).astype(
            self.out_dtype))
      return _cho_solve(self.chol, jnp.asarray(b, self.dtype)).astype(
          self.out_dtype)


@functools.partial(small_jit, static_argnums=(2,))
def _eigh(a: jax.Array, diag_reg, absolute: bool):
  """``(all finite, eigenvalues, eigenvectors of K + r I)``: one program."""
  reg = regularizer(a, diag_reg, absolute)
  evals, evecs = jnp.linalg.eigh(a + reg * jnp.eye(a.shape[0], dtype=a.dtype))
  return jnp.all(jnp.isfinite(a)), evals, evecs


def _eigh_host(a: np.ndarray, diag_reg, absolute: bool) -> tuple:
  """`_eigh` in NumPy (see `HOST_SOLVE_SIZE`): LAPACK's ``syevd``, as XLA's
  CPU ``eigh``; the eigenpairs as device arrays."""
  finite = bool(np.isfinite(a).all())
  if not finite:
    return finite, None, None
  reg = diag_reg if absolute else diag_reg * np.trace(a) / a.shape[0]
  evals, evecs = np.linalg.eigh(
      a + np.asarray(reg, a.dtype) * np.eye(a.shape[0], dtype=a.dtype))
  return finite, as_array(evals.astype(a.dtype)), as_array(
      evecs.astype(a.dtype))


@dataclasses.dataclass(frozen=True)
class Eigen:
  """Eigendecomposition ``K + r I = V diag(evals) V^T`` for finite-time flows.

  ``apply(w, b)`` computes ``V diag(w_t) V^T b`` for weights ``w`` of shape
  ``(T, n)`` and ``b`` of shape ``(n, c)``, returning ``(T, n, c)``; the
  factorization is computed once and reused for every ``t``.
  """

  evals: jax.Array
  evecs: jax.Array
  dtype: Any
  out_dtype: Any

  @classmethod
  def of(cls, k2d: jax.Array, diag_reg, absolute: bool,
         dtype=None) -> "Eigen":
    out_dtype = k2d.dtype
    dtype = _compute_dtype(dtype, k2d.dtype)
    with precision(dtype):
      if on_host(k2d, diag_reg):
        finite, evals, evecs = _eigh_host(np.asarray(k2d, dtype), diag_reg,
                                          bool(absolute))
      else:
        a = jnp.asarray(k2d, dtype)
        finite, evals, evecs = _eigh(a, diag_reg, bool(absolute))
      if is_concrete(finite) and not bool(finite):
        raise ValueError(f"The {k2d.shape} train-train kernel contains NaN or "
                         f"inf entries; check the inputs and the network.")
    return cls(evals, evecs, dtype, out_dtype)

  def context(self):
    return precision(self.dtype)

  def cast(self, x):
    return None if x is None else jnp.asarray(x, self.dtype)


def make_solver(solver) -> Any:
  """``None``/``'cholesky'`` -> `Cholesky()`; ``'cg'`` -> `CG()`; objects pass."""
  if solver is None or (isinstance(solver, str) and
                        solver.lower() == "cholesky"):
    return Cholesky()
  if isinstance(solver, str) and solver.lower() == "cg":
    return CG()
  if isinstance(solver, str):
    raise ValueError(f"Unknown solver {solver!r}: expected 'cholesky', 'cg', "
                     f"or a Cholesky(...) / CG(...) object.")
  if not hasattr(solver, "factor"):
    raise TypeError(f"`solver` must be 'cholesky', 'cg' or an object with a "
                    f"`factor` method; got {type(solver).__name__}.")
  return solver


PSDReport = collections.namedtuple(
    "PSDReport", "is_psd min_eigenvalue max_eigenvalue roundoff asymmetry")
PSDReport.__doc__ = """Result of `check_psd`.

is_psd: whether the smallest eigenvalue is >= -roundoff.
min_eigenvalue, max_eigenvalue: extreme eigenvalues of (K + K^T) / 2.
roundoff: the tolerance used (``rtol * max |eigenvalue|``).
asymmetry: ``||K - K^T||_F / ||K||_F``.
"""


def check_psd(kernel, rtol: Optional[float] = None, name: str = "kernel",
              warn: bool = False, raise_error: bool = False) -> PSDReport:
  """Says whether a kernel is positive semi-definite beyond round-off.

  Args:
    kernel: a square kernel, flat ``(n, n)`` or zipped ``(N, N, X, X, ...)``.
    rtol: relative tolerance; default ``n * eps(dtype)``, the backward-error
      scale of a symmetric eigensolver.
    name: used in messages.
    warn: issue a RuntimeWarning when not PSD.
    raise_error: raise a ValueError when not PSD.

  Returns:
    A `PSDReport`. The message states by how much the kernel is not PSD.
  """
  a = to_2d(jnp.asarray(kernel))
  n = a.shape[0]
  rtol = n * float(jnp.finfo(a.dtype).eps) if rtol is None else rtol
  sym = (a + a.T) / 2
  evals = jnp.linalg.eigvalsh(sym)
  lo, hi = float(evals[0]), float(evals[-1])
  roundoff = rtol * max(abs(lo), abs(hi))
  norm = float(jnp.linalg.norm(a))
  asym = float(jnp.linalg.norm(a - a.T)) / norm if norm > 0 else 0.
  report = PSDReport(lo >= -roundoff, lo, hi, roundoff, asym)
  if not report.is_psd and (warn or raise_error):
    msg = (f"{name} ({n}x{n}, {np.dtype(a.dtype).name}) is not positive "
           f"semi-definite beyond round-off: smallest eigenvalue {lo:.3g} "
           f"(= {lo / max(abs(hi), 1e-300):.3g} x the largest {hi:.3g}), "
           f"round-off level {roundoff:.3g}; asymmetry {asym:.3g}.")
    if raise_error:
      raise ValueError(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=2)
  return report
