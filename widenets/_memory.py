"""Keeping the C heap from holding freed memory between kernel calls (glibc).

On Linux, glibc keeps memory that XLA's compiler and earlier calls freed in its
heaps (after the first large free it also raises its mmap threshold, so later
output buffers come from those heaps too), and it gives each thread that
allocates its own arena (up to 8 per core). With jax >= 0.5 on CPU this made
the resident memory of repeated kernel calls creep up by tens of MiB per call
until it settled, at a level that differed from process to process: without
the measures below the 3-layer Erf kernel on 2000 x 784 inputs grew peak RSS
by 211-315 MiB over the post-import baseline (neural-tangents 0.6.5 on jax
0.4.26: 148).

Two measures, both glibc-only and no-ops elsewhere:

* `release_free_memory` calls ``malloc_trim(0)`` before kernel calls that
  build large kernels and after compiling a new configuration: it only hands
  free pages back (about 1 us when there are none).
* `configure_allocator` (run once at ``import widenets``) sets glibc's
  ``M_ARENA_MAX`` to 1: allocations from XLA's worker threads then share the
  main heap instead of spreading over per-thread arenas (16 on two cores)
  whose free pages interleave with live buffers. gp_inference at N=2000 then
  grows by 251-269 MiB instead of 265-287 at the same speed; the Erf kernel's
  range narrows (136-177 instead of 129-188); see benchmarks/RESULTS.md.
  Programs with many threads allocating large blocks in parallel may contend
  for the single heap's lock; a ``MALLOC_ARENA_MAX`` in the environment is
  left as the user set it.

Set ``WIDENETS_MALLOC_TRIM=0`` before importing widenets to turn both off.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["release_free_memory", "configure_allocator"]

_LIBC = None  # the C library, False where unavailable or turned off
_M_ARENA_MAX = -8  # from glibc's malloc.h


def _libc():
  global _LIBC
  if _LIBC is None:
    _LIBC = False
    if os.environ.get("WIDENETS_MALLOC_TRIM", "1") == "0":
      return _LIBC
    if not sys.platform.startswith("linux"):
      return _LIBC
    try:
      libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
      libc.malloc_trim.argtypes = [ctypes.c_size_t]  # glibc only (not musl)
      libc.malloc_trim.restype = ctypes.c_int
      libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
      libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):
      return _LIBC
    _LIBC = libc
  return _LIBC


def release_free_memory() -> None:
  """Hands the C heap's free pages back to the OS (glibc), else nothing."""
  libc = _libc()
  if libc:
    libc.malloc_trim(0)


def configure_allocator() -> bool:
  """One malloc arena for the process (glibc); returns whether it was set.

  Set at import, before XLA's threads first allocate, since a thread keeps
  the arena it was first given. A user's own ``MALLOC_ARENA_MAX`` wins.
  """
  libc = _libc()
  if not libc or "MALLOC_ARENA_MAX" in os.environ:
    return False
  return bool(libc.mallopt(_M_ARENA_MAX, 1))
