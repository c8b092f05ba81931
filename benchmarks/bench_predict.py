"""Predict workloads: widenets vs neural-tangents 0.6.5, and CG at N=20,000.

``WORKLOADS = {name: make}``; ``make(lib)`` (``lib``: the module ``widenets``
or ``neural_tangents``) prepares inputs and kernels (untimed) and returns a
zero-argument callable that runs the workload once from scratch (new
``predict_fn``, so factorizations are part of the timing). Standalone::

  .venv/bin/python benchmarks/bench_predict.py                  # widenets
  .peer/nt/bin/python benchmarks/bench_predict.py --lib neural_tangents
  .venv/bin/python benchmarks/bench_predict.py cg               # CG, ours only

The ``cg`` workload (kernel regression on N=20,000 train / 2,000 test
examples with a 2-hidden-layer Erf kernel, 10 outputs) prints the kernel
time, Cholesky time, CG time and iterations for each preconditioner, and the
agreement of CG's predictions and test accuracy with Cholesky's.
"""
from __future__ import annotations

import os
import resource
import sys
import time

import numpy as np

N_TRAIN = int(os.environ.get("BENCH_N", 2000))
N_TEST = 500
N_OUT = 10
DIM = 32


def _data(n_train=N_TRAIN, n_test=N_TEST, seed=0, with_test=False):
  rs = np.random.RandomState(seed)
  x_train = rs.randn(n_train, DIM).astype(np.float32)
  x_test = rs.randn(n_test, DIM).astype(np.float32)
  w = rs.randn(DIM, N_OUT).astype(np.float32) / np.sqrt(DIM)
  y_train = np.sin(2 * x_train @ w).astype(np.float32)
  if with_test:
    return x_train, x_test, y_train, np.sin(2 * x_test @ w)
  return x_train, x_test, y_train


def _kernel_fn(lib):
  stax = lib.stax
  return stax.serial(stax.Dense(512, W_std=1.5, b_std=0.05), stax.Erf(),
                     stax.Dense(512, W_std=1.5, b_std=0.05), stax.Erf(),
                     stax.Dense(1, W_std=1.5, b_std=0.05))[2]


def _kernels(lib):
  kernel_fn = _kernel_fn(lib)
  x_train, x_test, y_train = _data()
  get = ("nngp", "ntk")
  k_dd = kernel_fn(x_train, None, get)
  k_td = kernel_fn(x_test, x_train, get)
  k_tt = kernel_fn(x_test, None, get)
  return kernel_fn, x_train, x_test, y_train, k_dd, k_td, k_tt


def gp_inference_n2000(lib):
  """gp_inference on precomputed FC Erf kernels: N=2000 train, 500 test, 10
  outputs, get=('nngp', 'ntk') with test covariances (two Cholesky)."""
  _, _, _, y_train, k_dd, k_td, k_tt = _kernels(lib)

  def run():
    predict_fn = lib.predict.gp_inference(k_dd, y_train, diag_reg=1e-4)
    return predict_fn(("nngp", "ntk"), k_td, k_tt)
  return run


def ensemble_n2000(lib):
  """gradient_descent_mse_ensemble, N=2000 train, 500 test, 10 outputs,
  compute_cov=True, t=[0, 1, 10, inf], get=None (nngp and ntk); the kernel
  function (FC Erf, 32-d inputs) is called inside, as users do."""
  import jax.numpy as jnp
  kernel_fn = _kernel_fn(lib)
  x_train, x_test, y_train = _data()
  ts = jnp.array([0., 1., 10., jnp.inf])

  def run():
    predict_fn = lib.predict.gradient_descent_mse_ensemble(
        kernel_fn, x_train, y_train, diag_reg=1e-4)
    return predict_fn(ts, x_test, None, compute_cov=True)
  return run


def ensemble_n2000_precomputed(lib):
  """The same with the kernels precomputed (a lookup `kernel_fn`), timing
  only the eigendecompositions and the t-dependent contractions."""
  import jax.numpy as jnp
  _, x_train, x_test, y_train, k_dd, k_td, k_tt = _kernels(lib)
  ts = jnp.array([0., 1., 10., jnp.inf])

  def lookup(x1, x2, get, **kwargs):
    if x2 is None:
      k = k_dd if x1.shape[0] == x_train.shape[0] else k_tt
    else:
      k = k_td
    return getattr(k, get) if isinstance(get, str) else _subset(k, get)

  def run():
    predict_fn = lib.predict.gradient_descent_mse_ensemble(
        lookup, x_train, y_train, diag_reg=1e-4)
    return predict_fn(ts, x_test, None, compute_cov=True)
  return run


def _subset(k, get):
  import collections
  return collections.namedtuple("Kernel", tuple(get))(
      *[getattr(k, g) for g in get])


WORKLOADS = {
    "gp_inference_n2000": gp_inference_n2000,
    "ensemble_n2000_t4_cov": ensemble_n2000,
    "ensemble_n2000_t4_cov_precomputed": ensemble_n2000_precomputed,
}




def cg_benchmark(n_train: int = 20_000, n_test: int = 2_000,
                 diag_reg: float = 1e-3, block: int = 2_000):
  """Kernel regression at N=20,000: Cholesky vs preconditioned CG."""
  import jax
  import jax.numpy as jnp
  import widenets
  predict = widenets.predict
  kernel_fn = _kernel_fn(widenets)
  x_train, x_test, y_train, y_test = _data(n_train, n_test, seed=1,
                                           with_test=True)

  t0 = time.perf_counter()
  k_dd = np.empty((n_train, n_train), np.float32)
  kf = jax.jit(lambda a, b: kernel_fn(a, b, "nngp"))
  for i in range(0, n_train, block):
    k_dd[i:i + block] = np.asarray(kf(x_train[i:i + block], x_train))
  k_td = np.asarray(kf(x_test, x_train))
  t_kernel = time.perf_counter() - t0
  print(f"kernel ({n_train}, {n_train}) float32 in {t_kernel:.1f}s "
        f"({k_dd.nbytes / 2**30:.2f} GiB)", flush=True)
  k = jnp.asarray(k_dd)

  def report(name, mean, seconds, extra=""):
    mse = float(np.mean((np.asarray(mean) - y_test) ** 2))
    acc = float(np.mean(np.argmax(np.asarray(mean), 1) ==
                        np.argmax(y_test, 1)))
    print(f"{name:30s} {seconds:7.1f}s  test MSE {mse:.5f}  argmax-acc "
          f"{acc:.4f} {extra}", flush=True)
    return mse, acc

  t0 = time.perf_counter()
  ref = predict.gp_inference(k, y_train, diag_reg=diag_reg)("nngp", k_td)
  ref.block_until_ready()
  t_chol = time.perf_counter() - t0
  report("cholesky float32", ref, t_chol)
  rows = []
  for pc, rank in (("nystrom", 500), ("block_jacobi", 0)):
    cg = predict.CG(tol=1e-5, preconditioner=pc, rank=rank or 512,
                    block_size=2_000, maxiter=400)
    t0 = time.perf_counter()
    mean = predict.gp_inference(k, y_train, diag_reg=diag_reg, solver=cg)(
        "nngp", k_td)
    mean.block_until_ready()
    sec = time.perf_counter() - t0
    rel = float(jnp.linalg.norm(mean - ref) / jnp.linalg.norm(ref))
    name = f"cg {pc}" + (f" rank {rank}" if rank else "")
    report(name, mean, sec, f"iterations {cg.info.iterations} converged "
           f"{cg.info.converged} rel.diff vs cholesky {rel:.2e}")
    rows.append((name, sec, cg.info.iterations, rel))
  # Matrix-free: the kernel on disk (np.memmap), read by row blocks.
  import tempfile
  path = os.path.join(tempfile.mkdtemp(), "k.dat")
  mm = np.memmap(path, np.float32, "w+", shape=k_dd.shape)
  mm[:] = k_dd
  mm.flush()
  del mm
  mm = np.memmap(path, np.float32, "r", shape=k_dd.shape)
  cg = predict.CG(tol=1e-5, preconditioner="nystrom", rank=500,
                  block_size=2_000)
  t0 = time.perf_counter()
  mean = predict.gp_inference(predict.KernelBlocks(mm, block_size=2_000),
                              y_train, diag_reg=diag_reg, solver=cg)(
      "nngp", k_td)
  sec = time.perf_counter() - t0
  rel = float(jnp.linalg.norm(mean - ref) / jnp.linalg.norm(ref))
  report("cg nystrom 500, kernel on disk", mean, sec,
         f"iterations {cg.info.iterations} rel.diff vs cholesky {rel:.2e}")
  os.remove(path)
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f"peak RSS {rss:.0f} MiB")


def main():
  if len(sys.argv) > 1 and sys.argv[1] == "cg":
    cg_benchmark()
    return
  from standalone import main as run
  run(WORKLOADS)


if __name__ == "__main__":
  main()
