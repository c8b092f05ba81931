"""Padding the number of samples to a few sizes, so kernels compile rarely.

JAX compiles a program per input shape. A learning curve over 30 training-set
sizes, or a service answering batches of any size, would compile 30 (or
unboundedly many) kernel programs. `bucketed` wraps a ``kernel_fn`` so that it
pads ``x1`` (and ``x2``) along the batch axis to a bucket size and trims the
outputs back: the numbers are unchanged (pairs ``(i, j)`` of a kernel depend
only on inputs ``i`` and ``j``) and only a handful of shapes are compiled.

Buckets (`bucket_size`): powers of two from ``minimum`` up to ``step``, then
multiples of ``step``; padding costs at most 2x the pairs below ``step`` and
``(n + step) / n`` above. Padding rows are copies of the last real row (not
zeros, so no layer sees a zero variance).

Use it where sizes vary and compile time matters (learning curves, many small
requests); leave it off for one large call, where the padded pairs are pure
extra work. It needs a packable network (every output pair depends only on
its own pair of inputs: true of every layer that does not mix samples).

For scripts run many times, JAX's persistent compilation cache keeps compiled
programs on disk across processes; turn it on in your script (widenets never
sets global JAX configuration)::

  import jax
  jax.config.update("jax_compilation_cache_dir", "/tmp/jax-cache")
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import numpy as np

__all__ = ["bucket_size", "pad_rows", "bucketed", "is_pairwise"]

# Kernel fields with a leading axis over the samples of x1 (rows), x2
# (columns), or both.
_BOTH = ("nngp", "ntk")
_ROWS = ("cov1", "mask1")
_COLS = ("cov2", "mask2")


def is_pairwise(kernel_fn: Callable) -> bool:
  """Whether ``kernel_fn(x1, x2, ...)`` is known to give the kernel of two
  samples from those two alone, with samples on axis 0 of the inputs (so a
  call on concatenated inputs has the separate calls' kernels as blocks).

  Declared by the function's ``pairwise`` attribute (widenets' analytic
  ``kernel_fn``, `bucketed`); a ``jax.jit`` of such a function (which takes
  the same arguments) is looked through. Anything else: False.
  """
  fn = kernel_fn
  while (not hasattr(fn, "pairwise") and hasattr(fn, "lower")
         and hasattr(fn, "__wrapped__")):
    fn = fn.__wrapped__
  return getattr(fn, "pairwise", False) is True


def bucket_size(n: int, minimum: int = 8, step: int = 256) -> int:
  """The bucket of ``n`` samples: ``minimum``, ..., a power of two up to
  ``step``, then the next multiple of ``step`` (``n`` itself if ``n == 0``).

  >>> [bucket_size(n) for n in (1, 9, 200, 257, 1000)]
  [8, 16, 256, 512, 1024]
  """
  if n < 0 or minimum < 1 or step < 1:
    raise ValueError(f"bucket_size: needs n >= 0, minimum >= 1, step >= 1; "
                     f"got n={n}, minimum={minimum}, step={step}.")
  if n == 0:
    return 0
  if n > step:
    return -(-n // step) * step
  return max(minimum, 1 << (n - 1).bit_length())


def pad_rows(x, size: int, axis: int = 0):
  """``x`` padded along ``axis`` to ``size`` with copies of its last entry.

  NumPy inputs stay NumPy (no device transfer); JAX arrays (also traced ones)
  are padded with ``jax.numpy``.
  """
  n = x.shape[axis]
  if size < n:
    raise ValueError(f"pad_rows: cannot pad {n} rows down to {size}.")
  if size == n or n == 0:
    return x
  if isinstance(x, np.ndarray):
    last = np.take(x, [n - 1], axis=axis)
    return np.concatenate([x, np.repeat(last, size - n, axis=axis)], axis)
  import jax.numpy as jnp
  last = jnp.take(x, jnp.array([n - 1]), axis=axis)
  return jnp.concatenate([x, jnp.repeat(last, size - n, axis=axis)], axis)


def _trim_kernel(k, n1: int, n2: int):
  """A `Kernel` cut back to ``n1`` x ``n2`` samples (batch axis first)."""
  fields = {}
  for name in _BOTH + _ROWS + _COLS:
    a = getattr(k, name, None)
    if a is None or np.ndim(a) == 0:
      continue
    if name in _BOTH:
      fields[name] = a[:n1, :n2]
    elif name in _ROWS:
      fields[name] = a[:n1]
    else:
      fields[name] = a[:n2]
  shapes = {}
  for name, n in (("shape1", n1), ("shape2", n2)):
    s = getattr(k, name, None)
    if s is not None:
      s = list(s)
      s[getattr(k, "batch_axis", 0) or 0] = n
      shapes[name] = tuple(s)
  return k.replace(**fields, **shapes)


def _trim(out, get, n1: int, n2: int):
  if isinstance(get, str):
    return out[:n1, :n2]
  if get is None:
    return _trim_kernel(out, n1, n2)
  # A namedtuple of the fields asked for, in that order.
  parts = []
  for name, a in zip(get, out):
    if name in _BOTH:
      parts.append(a[:n1, :n2])
    elif name in _ROWS:
      parts.append(a[:n1])
    elif name in _COLS:
      parts.append(a[:n2])
    else:
      parts.append(a)
  return type(out)(*parts)


def bucketed(kernel_fn: Callable, minimum: int = 8, step: int = 256,
             batch_axis: int = 0) -> Callable:
  """``kernel_fn`` on inputs padded to `bucket_size` samples, trimmed back.

  Args:
    kernel_fn: ``kernel_fn(x1, x2=None, get=None, **kwargs)`` of a network
      whose kernel pairs do not mix samples.
    minimum, step: the buckets (see `bucket_size`).
    batch_axis: the inputs' batch axis (outputs have it first).

  Returns:
    A function with ``kernel_fn``'s signature and results (``get`` a string:
    an ``(N1, N2, ...)`` array; a tuple: the namedtuple; ``None``: the
    `Kernel`, its fields and ``shape1``/``shape2`` trimmed), compiling one
    program per pair of buckets instead of per pair of sizes.
  """

  @functools.wraps(kernel_fn)
  def fn(x1, x2=None, get: Optional[Any] = None, **kwargs):
    n1 = x1.shape[batch_axis]
    n2 = n1 if x2 is None else x2.shape[batch_axis]
    p1 = pad_rows(x1, bucket_size(n1, minimum, step), batch_axis)
    p2 = None if x2 is None else pad_rows(
        x2, bucket_size(n2, minimum, step), batch_axis)
    return _trim(kernel_fn(p1, p2, get, **kwargs), get, n1, n2)

  fn.pairwise = batch_axis == 0 and is_pairwise(kernel_fn)
  return fn
