"""Returning freed host memory to the operating system between kernel calls.

On Linux, glibc keeps memory that XLA's compiler and earlier calls freed in its
heaps (after the first large free it also raises its mmap threshold, so later
output buffers come from those heaps too). With jax >= 0.5 on CPU this made
the resident memory of repeated kernel calls creep up by tens of MiB per call
until it settled, and kept the compiler's working memory resident while the
first call ran (3-layer Erf kernel, 2000 x 2000: peak RSS growth 167-229 MiB
over the post-import baseline across runs; 128 MiB with `release_free_memory`
after compiling and before each call; neural-tangents 0.6.5 on jax 0.4.26:
148 MiB).

`release_free_memory` calls glibc's ``malloc_trim(0)``: it only hands free
pages back (about 1 us when there are none) and changes no allocator setting.
Set ``WIDENETS_MALLOC_TRIM=0`` to turn it off; elsewhere than glibc it does
nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["release_free_memory"]

_TRIM = None  # the C function, False where unavailable


def _load():
  global _TRIM
  _TRIM = False
  if os.environ.get("WIDENETS_MALLOC_TRIM", "1") == "0":
    return
  if not sys.platform.startswith("linux"):
    return
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    trim = libc.malloc_trim  # glibc only (absent in musl)
  except (OSError, AttributeError):
    return
  trim.argtypes = [ctypes.c_size_t]
  trim.restype = ctypes.c_int
  _TRIM = trim


def release_free_memory() -> None:
  """Hands the C heap's free pages back to the OS (glibc), else nothing."""
  if _TRIM is None:
    _load()
  if _TRIM:
    _TRIM(0)
