"""Devices for batched kernels, and choosing ``batch_size='auto'``.

Blocks are spread round-robin over the chosen devices: each block's inputs
are placed on its device with a `jax.sharding.SingleDeviceSharding`, and JAX's
asynchronous dispatch keeps every device busy while the host collects
finished blocks. Unlike ``pmap`` this needs no divisibility of the data by
the device count and lets diagonal and off-diagonal blocks (different
programs) run side by side.
"""
from __future__ import annotations

import math
import os
from typing import Optional

import jax
import numpy as np

__all__ = ["select_devices", "put", "free_memory", "auto_batch_size",
           "compiled_bytes", "output_bytes"]


def select_devices(device_count: int) -> list:
  """``-1``: all local devices; ``0``: the default device; ``k``: the first k."""
  if not isinstance(device_count, (int, np.integer)) or device_count < -1:
    raise ValueError(f"batch: device_count must be -1 (all devices), 0 (the "
                     f"default device) or a positive count; got "
                     f"{device_count!r}.")
  local = jax.local_devices()
  if device_count == -1:
    return list(local)
  if device_count == 0:
    return [local[0]]
  if device_count > len(local):
    raise ValueError(f"batch: device_count={device_count} but only "
                     f"{len(local)} local devices are available.")
  return list(local[:device_count])


def put(tree, device):
  """Commits every array leaf of ``tree`` to ``device``."""
  sharding = jax.sharding.SingleDeviceSharding(device)
  return jax.tree_util.tree_map(lambda a: jax.device_put(a, sharding), tree)


def _host_available() -> int:
  try:
    import psutil  # optional; dask[distributed] brings it
    return int(psutil.virtual_memory().available)
  except ImportError:
    pass
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def free_memory(device) -> int:
  """Bytes free on ``device`` (host RAM for CPU devices)."""
  stats = None
  try:
    stats = device.memory_stats()
  except Exception:  # not every backend implements it
    stats = None
  if stats and "bytes_limit" in stats:
    return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
  return _host_available()


def compiled_bytes(fn, *args) -> Optional[int]:
  """Peak bytes of one call of jitted ``fn`` from XLA's memory analysis."""
  try:
    m = fn.lower(*args).compile().memory_analysis()
  except Exception:
    return None
  if m is None:
    return None
  total = 0
  for name in ("temp_size_in_bytes", "argument_size_in_bytes",
               "output_size_in_bytes"):
    total += int(getattr(m, name, 0) or 0)
  return total


def output_bytes(tree) -> int:
  return sum(int(np.prod(l.shape)) * np.dtype(l.dtype).itemsize
             for l in jax.tree_util.tree_leaves(tree))


def auto_batch_size(block_bytes, n_max: int, free: int,
                    result_bytes_per_pair: float = 0.0,
                    fraction: float = 0.5, probe: int = 16) -> int:
  """Largest block size ``b`` whose block fits in ``fraction`` of ``free``.

  ``block_bytes(b)`` returns the bytes one ``b x b`` block needs (compiled
  memory analysis, or output bytes when unavailable). Two probes ``p`` and
  ``2p`` separate the per-pair cost ``c`` from a fixed cost ``a``:
  ``bytes(b) ~ a + c b^2``. ``result_bytes_per_pair`` reserves room for the
  assembled result when it is kept on the same device.
  """
  p = max(1, min(probe, n_max))
  m1 = block_bytes(p)
  if p == n_max:
    per_pair, fixed = m1 / p**2, 0.0
  else:
    p2 = min(2 * p, n_max)
    m2 = block_bytes(p2)
    per_pair = max((m2 - m1) / (p2**2 - p**2), m2 / p2**2 / 4, 1e-9)
    fixed = max(0.0, m1 - per_pair * p**2)
  # Room left after the assembled result (if it lives on this device); a
  # result that barely fits still gets a fifth of the memory for blocks.
  reserve = result_bytes_per_pair * n_max**2
  avail = free - reserve if reserve < 0.8 * free else 0.2 * free
  budget = fraction * avail - fixed
  if budget <= per_pair:
    return 1
  b = int(math.sqrt(budget / per_pair))
  if b >= n_max:
    return n_max
  if b >= 64:
    b -= b % 8  # friendlier shapes for accelerators
  return max(1, b)
