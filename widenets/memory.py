"""An explicit, opt-in handle on the C heap: `trim`.

widenets never changes its host process by itself: importing it configures no
allocator, and no kernel or inference call touches the C heap. On Linux, glibc
may keep memory that XLA's compiler and earlier calls freed in its heaps, so
the resident size of a long-running process can sit above what its live
buffers need. A program that cares (e.g. before a large kernel call, or after
compiling many configurations) may call `trim` itself;
benchmarks/RESULTS.md says what it buys on the benchmark workloads.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

__all__ = ["trim"]


@functools.lru_cache(maxsize=1)
def _malloc_trim():
  """glibc's ``malloc_trim``, or None where the C library has none."""
  if not sys.platform.startswith("linux"):
    return None
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    fn = libc.malloc_trim  # glibc only (not musl)
  except (OSError, AttributeError):
    return None
  fn.argtypes = [ctypes.c_size_t]
  fn.restype = ctypes.c_int
  return fn


def trim() -> bool:
  """Hands the C heap's free pages back to the operating system.

  Calls glibc's ``malloc_trim(0)``: it releases only memory that is already
  free (live buffers and results are untouched) and costs about a
  microsecond when there is nothing to release. Elsewhere (macOS, Windows,
  musl) it does nothing.

  Returns:
    True if glibc released some memory, False if it released none or the
    platform has no ``malloc_trim``.
  """
  fn = _malloc_trim()
  return bool(fn(0)) if fn is not None else False
