"""Shared plumbing of `widenets.predict`: axes, layouts, `get`, input checks.

Every predictor works internally on *flat* matrices:

* a kernel of shape ``(N1, N2, X1, X2, ...)`` (axes of the two inputs zipped
  pairwise, the layout of `widenets.Kernel` and of empirical kernels with
  ``trace_axes`` removed) becomes the matrix ``(N1 * X1 * ..., N2 * X2 * ...)``;
* outputs ``f`` of shape ``y_train.shape`` are split into the *kernel* axes
  (those not in ``trace_axes``) and the *trace* axes (``trace_axes``, over
  which the kernel is ``Theta (x) I``); they become ``(n, c)`` with
  ``n = prod(kernel axes)`` and ``c = prod(trace axes)``.

The helpers below convert back and forth so that the math in the other
modules is plain linear algebra on ``(n, n)`` and ``(n, c)`` matrices.
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Any, Callable, NamedTuple, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from .._tracing import is_concrete  # noqa: F401 (used across predict)
from ..axes import Axes, canonical_axes
from ..kernel import canonical_get, namedtuple_type

ArrayOrScalar = Union[None, int, float, jax.Array, np.ndarray]
# What a predictor can give.
KINDS = ("nngp", "ntk", "ntkgp")


class Gaussian(NamedTuple):
  """A ``(mean, covariance)`` namedtuple.

  mean: shaped like the outputs; covariance: shaped like the kernel.
  """
  mean: jax.Array
  covariance: jax.Array


def x64_available() -> bool:
  return jax.dtypes.canonicalize_dtype(jnp.float64) == np.float64


def precision(dtype) -> contextlib.AbstractContextManager:
  """A context in which ``dtype`` (e.g. float64) is usable even without x64."""
  if dtype is not None and np.dtype(dtype) == np.float64 and \
      not x64_available():
    return jax.enable_x64(True)
  return contextlib.nullcontext()


def is_array(x) -> bool:
  """An array, or a matrix-free kernel (`KernelBlocks`) standing for one."""
  return isinstance(x, (jax.Array, np.ndarray)) or \
      getattr(x, "matrix_free", False)


def eval_context():
  """`jax.ensure_compile_time_eval` only when called inside a trace.

  Cached factorizations of concrete kernels are then computed eagerly even
  when a ``predict_fn`` is first called under `jit` (so they can be reused by
  later calls). Outside a trace it is not used: under it, jitted helpers
  would capture the (large) kernels as compile-time constants.
  """
  if is_concrete(jnp.zeros(()) + 1):
    return contextlib.nullcontext()
  return jax.ensure_compile_time_eval()


def get_kernel(k, g: str, where: str = "kernel"):
  """The ``g`` (``'nngp'``/``'ntk'``) matrix of ``k``: an array is itself."""
  if k is None or is_array(k):
    return k
  v = getattr(k, g, None)
  if v is None:
    raise ValueError(
        f"`{where}` has no {g!r} matrix (got {type(k).__name__} with "
        f"{g}=None); compute it with get including {g!r}.")
  return v


def first_kernel(k):
  """The first available matrix of ``k`` (array, or its nngp/ntk)."""
  if is_array(k):
    return k
  for g in ("nngp", "ntk"):
    v = getattr(k, g, None)
    if v is not None:
      return v
  raise ValueError(f"Expected an array or a kernel with `nngp` or `ntk`; got "
                   f"{type(k).__name__}.")


def as_array(x) -> jax.Array:
  """``jnp.asarray(x)``, but a NumPy array is put on the device directly.

  ``jnp.asarray`` of a NumPy array compiles a small program per shape; a
  learning curve passes a new training-set shape on every call.
  ``jax.device_put`` gives the same array (dtype canonicalized the same way)
  without one.
  """
  if isinstance(x, (np.ndarray, np.generic)) and x.dtype != object:
    return jax.device_put(x)
  return jnp.asarray(x)


def host_value(x, max_size: int = 1 << 20):
  """``x`` as a NumPy array when that is cheap, else None.

  Cheap: a NumPy array, or a concrete JAX array of at most ``max_size``
  entries (a transfer of a few MiB at most). Eager checks of such values
  then run in NumPy instead of compiling a device program per shape; large
  kernels stay on the device, where one fused reduction is cheaper than a
  copy.
  """
  if isinstance(x, (np.ndarray, np.generic)):
    return np.asarray(x)
  if isinstance(x, jax.Array) and is_concrete(x) and x.size <= max_size:
    return np.asarray(x)
  return None


# Programs whose largest operand has at most this many entries compile with
# XLA's backend (LLVM) optimizations off: for predict's small factor / solve
# / product programs that halves the compile time, which dominates their run
# time (LAPACK and dot calls do not depend on it; the numbers are the same).
QUICK_COMPILE_SIZE = 1 << 22
_QUICK = {"xla_backend_optimization_level": 0}


def small_jit(fun: Callable, **jit_kwargs) -> Callable:
  """``jax.jit(fun, **jit_kwargs)``, compiled quickly for small operands.

  Two jitted versions of ``fun``: calls whose largest array argument has at
  most `QUICK_COMPILE_SIZE` entries (all concrete) use the one compiled
  with ``xla_backend_optimization_level=0`` (a per-program compiler option,
  not a global setting). Under an outer trace the plain one is inlined into
  the caller's program.
  """
  full = jax.jit(fun, **jit_kwargs)
  quick = jax.jit(fun, compiler_options=_QUICK, **jit_kwargs)

  @functools.wraps(fun)
  def call(*args, **kwargs):
    leaves = [leaf for leaf in jax.tree_util.tree_leaves((args, kwargs))
              if isinstance(leaf, (jax.Array, np.ndarray, np.generic))]
    # JAX takes compiler options on top-level programs only: a traced
    # argument means this call is part of an outer trace.
    small = all(is_concrete(leaf) for leaf in leaves) and max(
        (np.size(leaf) for leaf in leaves), default=0) <= QUICK_COMPILE_SIZE
    return (quick if small else full)(*args, **kwargs)

  call.full, call.quick = full, quick
  return call


def to_2d(k: jax.Array) -> jax.Array:
  """``(A1, B1, A2, B2, ...)`` -> ``(A1 * A2 * ..., B1 * B2 * ...)``."""
  if getattr(k, "matrix_free", False):
    return k
  k = jnp.asarray(k)
  if k.ndim % 2:
    raise ValueError(f"A kernel must have an even number of axes (pairs of "
                     f"zipped axes); got shape {k.shape}.")
  if k.ndim == 2:
    return k
  rows, cols = k.shape[::2], k.shape[1::2]
  perm = tuple(range(0, k.ndim, 2)) + tuple(range(1, k.ndim, 2))
  return jnp.transpose(k, perm).reshape(math.prod(rows), math.prod(cols))


def zip_axes(x: jax.Array, start: int = 0) -> jax.Array:
  """``(..., A, B, A', B')`` -> ``(..., A, A', B, B')`` from axis ``start``."""
  n = (x.ndim - start) // 2
  if n <= 1:
    return x
  perm = tuple(range(start)) + tuple(
      start + i + j * n for i in range(n) for j in (0, 1))
  return jnp.transpose(x, perm)


def from_2d(k2: jax.Array, rows: tuple, cols: tuple, lead: int = 0
            ) -> jax.Array:
  """Inverse of `to_2d` (after ``lead`` leading axes): zipped layout."""
  k = k2.reshape(k2.shape[:lead] + tuple(rows) + tuple(cols))
  if len(rows) != len(cols):
    raise ValueError(f"Cannot zip {rows} with {cols}.")
  return zip_axes(k, lead)


class Layout:
  """How outputs ``f`` (shaped like ``y_train``) map to ``(n, c)`` matrices.

  ``trace_axes`` are kept as the last ``c`` columns; the remaining (kernel)
  axes are flattened to rows in their order.
  """

  def __init__(self, y_shape: tuple, trace_axes: Axes):
    ndim = len(y_shape)
    pos = canonical_axes(trace_axes, ndim, "trace_axes",
                         "outputs (y_train.ndim)")
    self.ndim = ndim
    self.trace_axes = tuple(a - ndim for a in pos)  # negative: robust to lead
    self.trace_shape = tuple(y_shape[a] for a in pos)
    self.kernel_axes = tuple(a for a in range(ndim) if a not in pos)
    self.kernel_shape = tuple(y_shape[a] for a in self.kernel_axes)
    self.c = math.prod(self.trace_shape)
    self.n = math.prod(self.kernel_shape)
    self._last = tuple(range(-len(pos), 0))
    # Trace axes already last and in order: moving them is a no-op (an eager
    # `moveaxis` would still compile a program per shape).
    self._identity = self.trace_axes == self._last

  def flatten(self, f: jax.Array) -> jax.Array:
    """``(..., y_shape-like)`` with ``ndim`` trailing axes -> ``(..., m, c)``."""
    f = as_array(f)
    lead = f.shape[:f.ndim - self.ndim]
    if not self._identity:
      f = jnp.moveaxis(f, self.trace_axes, self._last)
    return f.reshape(lead + (-1, self.c))

  def unflatten(self, f2: jax.Array, kernel_shape: tuple) -> jax.Array:
    """``(..., m, c)`` -> ``(..., outputs)`` with ``kernel_shape`` rows."""
    lead = f2.shape[:-2]
    f = f2.reshape(lead + tuple(kernel_shape) + self.trace_shape)
    if self._identity:
      return f
    return jnp.moveaxis(f, self._last, self.trace_axes)

  def output_shape(self, kernel_shape: tuple) -> tuple:
    """Outputs shape for kernel axes ``kernel_shape`` (trace axes inserted)."""
    shape = list(kernel_shape)
    for a, s in zip(sorted(a % self.ndim for a in self.trace_axes),
                    self.trace_shape):
      shape.insert(a, s)
    return tuple(shape)


def check_train(k_train_train, y_train, layout: Layout,
                name: str = "k_train_train") -> None:
  """Raises a clear ValueError if the kernel does not match ``y_train``."""
  k = first_kernel(k_train_train) if not is_array(k_train_train) else \
      k_train_train
  shape = tuple(k.shape) if hasattr(k, "shape") else tuple(jnp.shape(k))
  if len(shape) != 2 * len(layout.kernel_shape) or (
      shape[::2] != layout.kernel_shape or shape[1::2] != layout.kernel_shape):
    raise ValueError(
        f"`{name}` has shape {shape}, but `y_train` of shape "
        f"{layout.output_shape(layout.kernel_shape)} with trace_axes="
        f"{layout.trace_axes} needs a kernel of shape "
        f"{tuple(s for s in layout.kernel_shape for _ in (0, 1))} (the "
        f"non-traced axes of y_train, each zipped with itself). Is y_train "
        f"the wrong length, or trace_axes wrong?")


def check_test_train(k_test_train, layout: Layout,
                     name: str = "k_test_train") -> tuple:
  """Checks a test-train kernel; returns the test kernel-axes shape."""
  k = first_kernel(k_test_train)
  shape = tuple(k.shape) if hasattr(k, "shape") else tuple(jnp.shape(k))
  if (len(shape) != 2 * len(layout.kernel_shape) or
      shape[1::2] != layout.kernel_shape):
    raise ValueError(
        f"`{name}` has shape {shape}; its train axes (odd positions) must be "
        f"{layout.kernel_shape} to match k_train_train / y_train.")
  return shape[::2]


def check_diag_reg(diag_reg) -> None:
  if is_concrete(diag_reg) and np.any(np.asarray(diag_reg) < 0):
    raise ValueError(f"`diag_reg` must be >= 0 (it is added to the kernel's "
                     f"diagonal); got diag_reg={diag_reg}.")


def check_fx(fx_train_0, fx_test_0, k_test_train) -> None:
  if fx_train_0 is None and fx_test_0 is None:
    raise ValueError("Both `fx_train_0` and `fx_test_0` are None: nothing to "
                     "predict.")
  if fx_test_0 is not None and k_test_train is None:
    raise ValueError(
        f"`fx_test_0` (shape {jnp.shape(fx_test_0)}) was given without "
        f"`k_test_train`: test-set predictions need the test-train kernel.")


def canonical_predict_get(get, allowed: Sequence[str] = KINDS
                          ) -> tuple[tuple[str, ...], bool]:
  """``(names, single)`` of a predictor's ``get`` (`kernel.canonical_get`):
  names are case-insensitive, ``None`` means ``('nngp', 'ntk')`` and ``()``
  is an error."""
  return canonical_get(get, allowed, default=("nngp", "ntk"),
                       none_means="('nngp', 'ntk')", ignore_case=True,
                       nonempty=True)


def pack_get(out: dict, get, single: bool, name: str = "Gaussians"):
  """NT's output convention: one value for a name, else a namedtuple."""
  if single:
    return next(iter(out.values()))
  return namedtuple_type(name, tuple(out))(*out.values())


def kernel_dependencies(get: tuple[str, ...], compute_cov: bool
                        ) -> tuple[str, ...]:
  """Kernels needed for ``get``: the NTK covariance also needs the NNGP."""
  deps = ()
  if "nngp" in get or ("ntk" in get and compute_cov):
    deps += ("nngp",)
  if "ntk" in get or "ntkgp" in get:
    deps += ("ntk",)
  return deps


def as_pair(k, get: tuple[str, ...]) -> Any:
  """A Kernel/namedtuple/array -> a ``{name: matrix}`` dict for ``get``."""
  if is_array(k):
    return {g: k for g in get}
  return {g: getattr(k, g) for g in get if getattr(k, g, None) is not None}
