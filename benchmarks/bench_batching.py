"""Batching workloads: widenets vs neural-tangents 0.6.5.

``WORKLOADS = {name: make}``; ``make(lib)`` (``lib``: the module ``widenets``
or ``neural_tangents``) builds the network and inputs and returns a
zero-argument callable that computes the kernel once (the first call
compiles). Workloads that need widenets-only features (Dask) return None for
neural-tangents. Standalone::

  .venv/bin/python benchmarks/bench_batching.py              # widenets
  .peer/nt/bin/python benchmarks/bench_batching.py --lib neural_tangents

prints, per workload, compile+first-run time and the best of a few timed runs.
The target workload is the 20-layer ReLU kernel of N=4000 (``BENCH_N``)
inputs with x2=None through ``batch(batch_size=500)``.
"""
from __future__ import annotations

import os

import numpy as np

N = int(os.environ.get("BENCH_N", 4000))
DIM = 32
DEPTH = 20
BATCH = 500


def _inputs(n=N, seed=0):
  return np.random.RandomState(seed).randn(n, DIM).astype(np.float32)


def _relu20(lib):
  stax = lib.stax
  layers = []
  for _ in range(DEPTH):
    layers += [stax.Dense(512, W_std=1.5, b_std=0.05), stax.Relu()]
  return stax.serial(*layers, stax.Dense(1))[2]


def relu20_batch500(lib):
  """20 x (Dense(512, 1.5, 0.05), Relu) + Dense(1); N=4000, x2=None,
  batch(batch_size=500), nngp and ntk."""
  kernel_fn = lib.batch(_relu20(lib), batch_size=BATCH)
  x = _inputs()
  return lambda: kernel_fn(x, None, ("nngp", "ntk"))


def relu20_unbatched(lib):
  """The same kernel in one call (the batching-overhead baseline)."""
  kernel_fn = _relu20(lib)
  x = _inputs()
  return lambda: kernel_fn(x, None, ("nngp", "ntk"))


def relu20_dask_threads(lib):
  """The same kernel as a Dask array of 500 x 500 chunks, threaded
  scheduler (ntk only)."""
  if lib.__name__ != "widenets":
    return None
  from widenets.scale import kernel_array
  kernel_fn, x = _relu20(lib), _inputs()

  def run():
    return kernel_array(kernel_fn, x, None, "ntk", BATCH).compute(
        scheduler="threads")
  return run


def relu20_dask_cluster(lib, processes=False):
  """The same Dask array on a 2-worker LocalCluster (one thread each;
  workers in this process)."""
  if lib.__name__ != "widenets":
    return None
  from widenets.scale import kernel_array, local_client
  kernel_fn, x = _relu20(lib), _inputs()
  client = local_client(2, processes=processes, dashboard_address=None,
                        silence_logs=40)

  def run():
    return kernel_array(kernel_fn, x, None, "ntk", BATCH).compute(
        scheduler=client)
  run.client = client
  return run


def relu20_dask_cluster_processes(lib):
  """The same on a 2-worker LocalCluster of worker processes (results travel
  between processes)."""
  return relu20_dask_cluster(lib, processes=True)


WORKLOADS = {
    "relu20_batch500": relu20_batch500,
    "relu20_unbatched": relu20_unbatched,
    "relu20_dask_threads": relu20_dask_threads,
    "relu20_dask_cluster": relu20_dask_cluster,
    "relu20_dask_cluster_processes": relu20_dask_cluster_processes,
}




def _close_client(fn):
  client = getattr(fn, "client", None)
  if client is not None:
    client.close()
    client.cluster.close()


def main():
  from standalone import main as run
  run(WORKLOADS, default_repeat=2, after=_close_client)


if __name__ == "__main__":
  main()
