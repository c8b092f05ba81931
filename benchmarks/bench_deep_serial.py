"""First-call time of deep `stax.serial` networks (compile + run).

Each depth runs in a fresh process, so nothing is cached between them:

  python benchmarks/bench_deep_serial.py --depths 20 50 100 [--repeat]

The network is ``depth / 2`` blocks of ``Conv(64, (3, 3), SAME) + Relu`` built
in a loop (new layer objects each time), then ``Flatten + Dense(1)``, on
``(4, 8, 8, 3)`` inputs, ``kernel_fn(x, None, 'ntk')``. ``--repeat`` builds the
same depth with `stax.repeat` instead.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time


def one(depth: int, use_repeat: bool) -> float:
  import jax
  from widenets import stax
  block = lambda: [stax.Conv(64, (3, 3), padding="SAME"), stax.Relu()]
  if use_repeat:
    layers = block() + [stax.repeat(stax.serial(*block()), depth // 2 - 1)]
  else:
    layers = [l for _ in range(depth // 2) for l in block()]
  _, _, kernel_fn = stax.serial(*layers, stax.Flatten(), stax.Dense(1))
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 3))
  start = time.perf_counter()
  jax.block_until_ready(kernel_fn(x, None, "ntk"))
  return time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--depths", type=int, nargs="+", default=[20, 50, 100])
  parser.add_argument("--repeat", action="store_true")
  parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one:
    print(f"{one(args.one, args.repeat):.2f}")
    return
  for depth in args.depths:
    cmd = [sys.executable, __file__, "--one", str(depth)]
    cmd += ["--repeat"] if args.repeat else []
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    print(f"depth {depth} {'repeat' if args.repeat else 'serial'}: "
          f"first call {out.stdout.strip()} s", flush=True)


if __name__ == "__main__":
  main()
