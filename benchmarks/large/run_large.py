"""Large-n kernel regression: our solvers and neural-tangents, one job each.

Every method runs in its own subprocess (peak RSS is per process) on the
synthetic teacher task of examples/large_regression.py (3-layer ReLU NNGP,
``--d``-dim inputs, ``--outputs`` outputs) and prints one JSON line: wall
time per phase, peak RSS (``ru_maxrss``), disk used by the store, CG
iterations, test MSE.

    # N = 20,000, everything side by side (widenets Cholesky, BlockCG,
    # Nystrom at several m, neural-tangents' gp_inference):
    python benchmarks/large/run_large.py compare --n 20000 \\
        --peer /work/main/.peer/nt/bin/python --store-dir /work/bench
    # one method (e.g. N = 100,000 in the background):
    python benchmarks/large/run_large.py one --method block_cg --n 100000 \\
        --store-dir /work/bench
    python benchmarks/large/run_large.py one --method nystrom --m 5000 ...

Not part of the test suite; results go in benchmarks/RESULTS.md.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "examples"))

from large_regression import teacher_data  # noqa: E402


def _rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _disk(path) -> int:
  total = 0
  for root, _, files in os.walk(path):
    for f in files:
      try:
        total += os.path.getsize(os.path.join(root, f))
      except OSError:
        pass
  return total


def _log(msg):
  print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _ours(args, x, y, xt):
  sys.path.insert(0, ROOT)
  import widenets as nt
  from large_regression import network
  from widenets.predict import BlockCG, Cholesky, Nystrom
  kernel_fn = network()
  store = client = None
  t_it = []
  if args.method == "block_cg":
    store = args.kernel_store or os.path.join(args.store_dir,
                                              f"store_n{args.n}_d{args.d}")
    t_blocks = [time.perf_counter()]

    def cb(i, j):
      t_blocks.append(time.perf_counter())
      k = len(t_blocks) - 1
      if k % args.log_every == 0:
        _log(f"block {k} ({i},{j}): {(t_blocks[-1] - t_blocks[0]) / k:.2f} "
             f"s/block, RSS {_rss_gib():.2f} GiB")

    def it_cb(it, res):
      t_it.append(time.perf_counter())
      _log(f"CG iteration {it}: residual {res:.3g}, "
           f"{t_it[-1] - t_it[-2]:.1f} s, RSS {_rss_gib():.2f} GiB")

    t_it.append(time.perf_counter())
    # --maxiter with --kernel-store: a timing run on another job's store,
    # so no CG checkpoint is written there.
    solver = BlockCG(store=store, block_size=args.block, rank=args.rank,
                     checkpoint_every=0 if args.maxiter else 5,
                     block_callback=cb, maxiter=args.maxiter,
                     iteration_callback=it_cb, tol=args.tol)
  elif args.method == "nystrom":
    t_it = [time.perf_counter()]

    def it_cb(it, res):
      t_it.append(time.perf_counter())
      if it % 5 == 0 or it <= 2:
        _log(f"Nystrom CG iteration {it}: residual {res:.3g}, "
             f"{t_it[-1] - t_it[-2]:.1f} s, RSS {_rss_gib():.2f} GiB")
    if args.knm_store:
      store = os.path.join(args.store_dir,
                           f"knm_n{args.n}_d{args.d}_m{args.m}")
    solver = Nystrom(m=args.m, centres=args.centres, block_size=args.block,
                     iteration_callback=it_cb, tol=args.tol,
                     memory_limit=args.knm_bytes, store=store,
                     dtype=args.dtype, maxiter=args.maxiter)
  elif args.method == "dask":
    from widenets.scale import DaskCG, local_client
    client = local_client(n_workers=args.workers, processes=True,
                          dashboard_address=None)
    t_it = [time.perf_counter()]

    def it_cb(it, res):
      t_it.append(time.perf_counter())
      _log(f"DaskCG iteration {it}: residual {res:.3g}, "
           f"{t_it[-1] - t_it[-2]:.1f} s, workers' peak RSS GiB "
           f"{sorted(v / 2**30 for v in client.run(_rss_bytes).values())}")
    if args.kernel_store:
      store = args.kernel_store
    solver = DaskCG(client=client, chunks=args.block, rank=args.rank,
                    tol=args.tol, kernel_store=args.kernel_store,
                    maxiter=args.maxiter, iteration_callback=it_cb)
  elif args.method == "cholesky":
    solver = Cholesky()
  else:
    raise SystemExit(f"unknown method {args.method}")
  t0 = time.perf_counter()
  if args.method == "cholesky":
    mean = nt.predict.gp_inference(kernel_fn, x, y, xt, "nngp", args.diag_reg)
    mean = __import__("numpy").asarray(mean)
  else:
    mean = __import__("numpy").asarray(nt.predict.gp_inference(
        kernel_fn, x, y, xt, "nngp", args.diag_reg, solver=solver))
  total = time.perf_counter() - t0
  out = {"total_s": total}
  info = getattr(solver, "info", None) or {}
  for k, v in info.items():
    if k.endswith("_seconds"):
      out[k.replace("_seconds", "_s")] = v
  phases = sum(v for k, v in out.items() if k != "total_s")
  if phases:
    out["predict_s"] = total - phases  # test predictions and the rest
  if "cg" in info:
    out["cg_iterations"] = info["cg"]["nngp"].iterations
    out["cg_residual"] = info["cg"]["nngp"].residual
    if len(t_it) > 1:
      out["cg_seconds_per_iteration"] = (t_it[-1] - t_it[1]) / max(
          1, len(t_it) - 2)
  for k in ("knm", "knm_blocks", "dtype", "blocks_computed"):
    if k in info:
      out[k] = info[k]
  if "blocks" in info:
    out["blocks_computed"] = info["blocks"].computed
    out["blocks_skipped"] = info["blocks"].skipped
  if store is not None:
    out["disk_gib"] = _disk(store) / 2**30
  if args.method == "dask":
    out["worker_peak_rss_gib"] = sorted(
        client.run(_rss_gib).values())
  return mean, out


def _peer(args, x, y, xt):
  import neural_tangents as nt
  from neural_tangents import stax
  layers = []
  for _ in range(3):
    layers += [stax.Dense(512, W_std=1.4, b_std=0.05), stax.Relu()]
  kernel_fn = stax.serial(*layers, stax.Dense(1, W_std=1.4, b_std=0.05))[2]
  # nt.batch needs a batch size dividing both n and the test size.
  b = max(d for d in range(1, args.block + 1)
          if args.n % d == 0 and args.test % d == 0)
  batched = nt.batch(kernel_fn, batch_size=b, store_on_device=False)
  t0 = time.perf_counter()
  k_dd = batched(x, None, "nngp")
  k_td = batched(xt, x, "nngp")
  t1 = time.perf_counter()
  predict_fn = nt.predict.gp_inference(k_dd, y, diag_reg=args.diag_reg)
  import numpy as np
  mean = np.asarray(predict_fn("nngp", k_td))
  t2 = time.perf_counter()
  return mean, {"total_s": t2 - t0, "kernel_s": t1 - t0, "solve_s": t2 - t1}


def one(args):
  import numpy as np
  t0 = time.perf_counter()
  x, y, xt, yt = teacher_data(args.n, args.test, args.d, args.outputs)
  if args.eval_test:  # the same training targets, fewer test predictions
    xt, yt = xt[:args.eval_test], yt[:args.eval_test]
  _log(f"{args.method} n={args.n}: data in {time.perf_counter() - t0:.1f} s")
  run = _peer if args.method == "nt" else _ours
  try:
    mean, out = run(args, x, y, xt)
    out["test_mse"] = float(np.mean((mean - yt) ** 2))
  except Exception as e:  # noqa: BLE001 - recorded: e.g. NT out of memory
    out = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
  out.update(method=args.method, n=args.n, m=args.m if args.method ==
             "nystrom" else None, peak_rss_gib=_rss_gib(),
             zero_mse=float(np.mean(yt ** 2)))
  print(json.dumps(out), flush=True)


def compare(args):
  runs = [("cholesky", None), ("block_cg", None)] + [
      ("nystrom", m) for m in args.ms] + [("nt", None)]
  rows = []
  for method, m in runs:
    if method == "nt" and not args.peer:
      continue
    python = args.peer if method == "nt" else sys.executable
    cmd = [python, os.path.abspath(__file__), "one", "--method", method,
           "--n", str(args.n), "--test", str(args.test), "--d", str(args.d),
           "--outputs", str(args.outputs), "--block", str(args.block),
           "--diag-reg", str(args.diag_reg), "--store-dir", args.store_dir,
           "--rank", str(args.rank)]
    if m is not None:
      cmd += ["--m", str(m), "--centres", args.centres]
    if method == "block_cg":
      shutil.rmtree(os.path.join(args.store_dir,
                                 f"store_n{args.n}_d{args.d}"),
                    ignore_errors=True)
    _log(" ".join(cmd))
    r = subprocess.run(cmd, capture_output=True, text=True,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
    with open(os.path.join(args.store_dir, f"{method}_{m}.stderr"), "w") as f:
      f.write(r.stderr)
    line = (r.stdout.strip().splitlines() or [""])[-1]
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      row = {"method": method, "m": m,
             "error": f"rc={r.returncode}: {r.stderr.strip()[-300:]}"}
    _log(json.dumps(row))
    rows.append(row)
  print(json.dumps(rows, indent=1))


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("mode", choices=["one", "compare"])
  p.add_argument("--method", default="block_cg",
                 choices=["block_cg", "nystrom", "dask", "cholesky", "nt"])
  p.add_argument("--n", type=int, default=20000)
  p.add_argument("--test", type=int, default=10000)
  p.add_argument("--d", type=int, default=784)
  p.add_argument("--outputs", type=int, default=10)
  p.add_argument("--m", type=int, default=5000)
  p.add_argument("--ms", type=int, nargs="*", default=[500, 1000, 2000, 5000])
  p.add_argument("--centres", default="uniform")
  p.add_argument("--block", type=int, default=2048)
  p.add_argument("--rank", type=int, default=256)
  p.add_argument("--tol", type=float, default=None)
  p.add_argument("--diag-reg", type=float, default=1e-2)
  p.add_argument("--workers", type=int, default=2)
  p.add_argument("--knm-bytes", type=float, default=4 * 2**30)
  p.add_argument("--knm-store", action="store_true",
                 help="Nystrom: K_NM in a zarr store under --store-dir")
  p.add_argument("--kernel-store", default=None,
                 help="dask, block_cg: the triangle store to use")
  p.add_argument("--maxiter", type=int, default=None)
  p.add_argument("--eval-test", type=int, default=None,
                 help="predict only the first this many test points")
  p.add_argument("--dtype", default=None)
  p.add_argument("--log-every", type=int, default=50)
  p.add_argument("--store-dir", default="/work/bench")
  p.add_argument("--peer", default=None)
  args = p.parse_args()
  os.makedirs(args.store_dir, exist_ok=True)
  (one if args.mode == "one" else compare)(args)


if __name__ == "__main__":
  main()
