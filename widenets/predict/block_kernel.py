"""Kernel blocks of a ``kernel_fn`` for the large-``n`` solvers, as NumPy.

`BlockKernel` evaluates ``kernel_fn(x1, x2, get)`` on row blocks of at most
``block_size`` examples. Each block is padded to ``block_size`` rows (with
repeated real rows, trimmed afterwards) so the jitted kernel compiles once
per column count, whatever the last block's size. Blocks come back as host
NumPy arrays ``{kind: (b1, b2)}``: the large solvers stream them to disk or
through matrix products and never hold the full kernel.

Only flat kernels are supported here: ``kernel_fn`` must return ``(b1, b2)``
matrices (``trace_axes`` covering every output axis but the batch axis),
which is the case for fully connected networks and for pooled CNNs.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import jax
import numpy as np

from ..batching.blocks import pad_rows
from ..batching.job import describe_fn, fingerprint

__all__ = ["BlockKernel"]


@functools.lru_cache(maxsize=32)
def _block_fn(kernel_fn, kinds: tuple, kwargs: tuple):
  """The jitted block function, shared by every `BlockKernel` of the same
  kernel function and arguments (so solvers do not recompile it)."""
  kw = dict(kwargs)

  def block(x1, x2):
    out = kernel_fn(x1, x2, kinds, **kw)
    return tuple(getattr(out, g) for g in kinds)

  return jax.jit(block)


class BlockKernel:
  """``kernel_fn`` bound to the kernels ``kinds`` (``'nngp'``/``'ntk'``).

  Args:
    kernel_fn: ``kernel_fn(x1, x2, get, **kwargs)``.
    kinds: the kernels to compute, e.g. ``('nngp',)``.
    block_size: rows per block.
    dtype: dtype of the returned blocks (default: the kernel's).
    kwargs: further keyword arguments of ``kernel_fn``.
  """

  def __init__(self, kernel_fn: Callable, kinds: Sequence[str],
               block_size: int, dtype=None, kwargs: Optional[dict] = None):
    if not isinstance(block_size, (int, np.integer)) or block_size <= 0:
      raise ValueError(f"block_size must be a positive integer; got "
                       f"{block_size!r}.")
    self.kernel_fn = kernel_fn
    self.kinds = tuple(kinds)
    self.block_size = int(block_size)
    self.dtype = None if dtype is None else np.dtype(dtype)
    self.kwargs = dict(kwargs or {})
    self.calls = 0

  @functools.cached_property
  def _jitted(self):
    try:
      return _block_fn(self.kernel_fn, self.kinds,
                       tuple(sorted(self.kwargs.items())))
    except TypeError:  # unhashable kwargs (arrays): not shared
      return _block_fn.__wrapped__(self.kernel_fn, self.kinds,
                                   tuple(sorted(self.kwargs.items())))

  def description(self) -> dict:
    """What identifies the kernel (for store metadata)."""
    return {"kernel_fn": describe_fn(self.kernel_fn), "kinds": list(self.kinds),
            "kwargs": sorted(f"{k}={v!r}" for k, v in self.kwargs.items()),
            "kwargs_arrays": fingerprint(self.kwargs)}

  def __call__(self, x1: np.ndarray, x2: Optional[np.ndarray] = None,
               pad2: bool = False) -> dict:
    """``{kind: K(x1, x2)}`` of shape ``(len(x1), len(x2))``.

    ``x2=None``: the symmetric block of ``x1`` with itself. ``pad2``: pad
    ``x2`` to ``block_size`` rows too (a training block, whose last one is
    short); otherwise ``x2`` is used as given (e.g. all Nystrom centres).
    """
    n1 = x1.shape[0]
    if n1 > self.block_size:
      raise ValueError(f"BlockKernel: {n1} rows > block_size "
                       f"{self.block_size}.")
    x1p = pad_rows(np.asarray(x1), self.block_size)
    if x2 is None:
      out = self._jitted(x1p, None)
      n2 = n1
    else:
      n2 = x2.shape[0]
      x2p = pad_rows(np.asarray(x2), self.block_size) if pad2 else \
          np.asarray(x2)
      out = self._jitted(x1p, x2p)
    self.calls += 1
    res = {}
    for g, v in zip(self.kinds, out):
      v = np.asarray(v)
      if v.ndim != 2:
        raise ValueError(
            f"The large-n solvers need flat (n1, n2) kernels; kernel_fn(x1, "
            f"x2, {g!r}) returned shape {v.shape}. Pool or flatten the "
            f"network's outputs (e.g. stax.GlobalAvgPool) so the kernel is "
            f"(n1, n2).")
      v = v[:n1, :n2]
      res[g] = v if self.dtype is None else v.astype(self.dtype, copy=False)
    return res

  def cross(self, x1: np.ndarray, x2: np.ndarray) -> dict:
    """``{kind: K(x1, x2)}`` for any numbers of rows, by ``block_size``
    blocks on both sides (each padded, so one compiled shape)."""
    b = self.block_size
    rows = []
    for i in range(0, x1.shape[0], b):
      parts = [self(x1[i:i + b], x2[j:j + b], pad2=True)
               for j in range(0, x2.shape[0], b)]
      rows.append({g: np.concatenate([p[g] for p in parts], axis=1)
                   for g in self.kinds})
    return {g: np.concatenate([r[g] for r in rows]) for g in self.kinds}

  def diagonal(self, x: np.ndarray, block: int = 128) -> dict:
    """``{kind: diag K(x, x)}`` from small symmetric blocks (``n * block``
    kernel entries, not ``n^2``)."""
    sub = BlockKernel(self.kernel_fn, self.kinds, min(block, self.block_size),
                      self.dtype, self.kwargs)
    parts = [sub(x[i:i + sub.block_size])
             for i in range(0, x.shape[0], sub.block_size)]
    return {g: np.concatenate([np.diagonal(p[g]) for p in parts])
            for g in self.kinds}
