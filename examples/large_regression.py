"""NNGP regression on a training set too large for a dense kernel.

A synthetic task with a known answer: inputs ``x ~ N(0, I_d)``, targets from a
random two-layer ReLU "teacher" network with ``--outputs`` outputs plus noise.
The prior is the NNGP of a 3-layer ReLU network. Predictions go through
``widenets.predict.gp_inference(kernel_fn, x_train, y_train, x_test, 'nngp',
diag_reg, solver=...)`` with a large solver, so the ``(n, n)`` kernel is never
one array:

* ``block_cg``: exact, kernel blocks (upper triangle) in a zarr store at
  ``--store`` (resumable: rerun the same command after a crash), CG;
* ``nystrom``: ``--m`` centres, Falkon-style preconditioned CG;
* ``dask``: exact CG with products on a 2-worker Dask ``LocalCluster``.

    python examples/large_regression.py [--small] [--n 20000] [--solver all]
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np


def teacher_data(n: int, n_test: int, d: int, outputs: int, noise: float = 0.1,
                 seed: int = 0):
  """``(x, y, x_test, y_test)``: a random 2-layer ReLU teacher (width 256)
  with targets scaled to unit variance, plus Gaussian noise of std
  ``noise`` on the training targets only."""
  rng = np.random.default_rng(seed)
  w1 = rng.standard_normal((d, 256)) / np.sqrt(d)
  w2 = rng.standard_normal((256, outputs)) / np.sqrt(256)

  def f(x):
    return np.maximum(x @ w1, 0.) @ w2

  x = rng.standard_normal((n + n_test, d)).astype(np.float32)
  y = f(x)
  y = ((y - y.mean(0)) / y.std(0)).astype(np.float32)
  y_train = y[:n] + noise * rng.standard_normal((n, outputs)).astype(
      np.float32)
  return x[:n], y_train, x[n:], y[n:]


def network():
  from widenets import stax
  layers = []
  for _ in range(3):
    layers += [stax.Dense(512, W_std=1.4, b_std=0.05), stax.Relu()]
  return stax.serial(*layers, stax.Dense(1, W_std=1.4, b_std=0.05))[2]


def solvers(args, store_dir):
  from widenets.predict import BlockCG, Nystrom
  names = ["block_cg", "nystrom", "dask"] if args.solver == "all" else \
      [args.solver]
  for name in names:
    if name == "block_cg":
      yield name, BlockCG(store=os.path.join(store_dir, "kernel.zarr"),
                          block_size=args.block, progress=args.progress), None
    elif name == "nystrom":
      yield (f"nystrom m={args.m}",
             Nystrom(m=min(args.m, args.n), centres=args.centres,
                     block_size=args.block, progress=args.progress,
                     store=os.path.join(store_dir, f"knm_m{args.m}.zarr")),
             None)
    elif name == "dask":
      from widenets.scale import DaskCG, local_client
      client = local_client(n_workers=2, dashboard_address=None)
      # Reads (or, run alone, fills) BlockCG's store by worker-owned panels.
      yield "dask (2 workers)", DaskCG(
          client=client, chunks=args.block,
          kernel_store=os.path.join(store_dir, "kernel.zarr")), client


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--small", action="store_true", help="a quick run (CI)")
  p.add_argument("--n", type=int, default=4000, help="training points")
  p.add_argument("--test", type=int, default=1000, help="test points")
  p.add_argument("--d", type=int, default=784, help="input dimension")
  p.add_argument("--outputs", type=int, default=10)
  p.add_argument("--solver", default="all",
                 choices=["all", "block_cg", "nystrom", "dask"])
  p.add_argument("--m", type=int, default=1000, help="Nystrom centres")
  p.add_argument("--centres", default="uniform",
                 choices=["uniform", "rpcholesky"])
  p.add_argument("--block", type=int, default=1024, help="block size")
  p.add_argument("--diag-reg", type=float, default=1e-2)
  p.add_argument("--store", default=None,
                 help="directory for the kernel store (default: a temp dir)")
  p.add_argument("--progress", action="store_true", help="tqdm bars")
  args = p.parse_args(argv)
  if args.small:
    args.n, args.test, args.d, args.m, args.block = 600, 100, 32, 200, 256
  import widenets as nt

  x, y, xt, yt = teacher_data(args.n, args.test, args.d, args.outputs)
  kernel_fn = network()
  print(f"n={args.n} train / {args.test} test, d={args.d}, "
        f"{args.outputs} outputs; predicting 0 gives test MSE "
        f"{np.mean(yt ** 2):.4f}")
  with tempfile.TemporaryDirectory() as tmp:
    store_dir = args.store or tmp
    os.makedirs(store_dir, exist_ok=True)
    for name, solver, client in solvers(args, store_dir):
      t0 = time.perf_counter()
      try:
        mean = nt.predict.gp_inference(kernel_fn, x, y, xt, "nngp",
                                       args.diag_reg, solver=solver)
      finally:
        if client is not None:
          client.close()
          client.cluster.close()
      mse = float(np.mean((np.asarray(mean) - yt) ** 2))
      iters = {g: c.iterations for g, c in solver.info["cg"].items()}
      print(f"{name}: test MSE {mse:.4f}, {time.perf_counter() - t0:.1f} s, "
            f"CG iterations {iters['nngp']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
