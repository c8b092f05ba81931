"""`python benchmarks/bench_<topic>.py [--lib neural_tangents]`: time one
file's WORKLOADS in this process (quick checks while optimizing; use run.py for
recorded, side-by-side numbers with a fresh process per workload)."""
from __future__ import annotations

import argparse
import importlib
import resource
import time


def _block(out):
  import jax
  jax.tree_util.tree_map(
      lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a,
      out)


def main(workloads: dict, default_repeat: int = 3, after=None) -> None:
  """Times every workload (see README.md for the convention): first call,
  best wall and CPU seconds of ``--repeat`` runs, peak RSS so far.

  ``after(fn)`` runs after each workload (e.g. to close a Dask client).
  """
  parser = argparse.ArgumentParser()
  parser.add_argument("--lib", default="widenets")
  parser.add_argument("--repeat", type=int, default=default_repeat)
  parser.add_argument("--only", nargs="*",
                      help="substrings of the workload names to run")
  args = parser.parse_args()
  lib = importlib.import_module(args.lib)
  for name, make in workloads.items():
    if args.only and not any(o in name for o in args.only):
      continue
    made = make(lib)
    if made is None:
      print(f"{args.lib:16s} {name:40s} skipped (not in this library)")
      continue
    setup, fn = made if isinstance(made, tuple) else (None, made)
    times = []
    for _ in range(args.repeat + 1):
      if setup is not None:
        setup()
      t0, c0 = time.perf_counter(), time.process_time()
      _block(fn())
      times.append((time.perf_counter() - t0, time.process_time() - c0))
    first = times[0][0]
    best = min(t for t, _ in times[1:]) if args.repeat else first
    cpu = min(c for _, c in times[1:]) if args.repeat else times[0][1]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.lib:16s} {name:40s} first {first:7.2f}s  best {best:7.3f}s"
          f"  cpu {cpu:7.2f}s  peak RSS so far {rss:7.0f} MiB", flush=True)
    if after is not None:
      after(fn)
