"""Activation workloads: widenets vs neural-tangents 0.6.5.

``WORKLOADS = {name: make}``; ``make(lib)`` (``lib``: the module ``widenets``
or ``neural_tangents``) builds the network and inputs and returns a
zero-argument callable that computes the kernels once (the first call
compiles). Standalone::

  .venv/bin/python benchmarks/bench_activations.py              # widenets
  .peer/nt/bin/python benchmarks/bench_activations.py --lib neural_tangents

prints, per workload, compile+first-run time, the best of a few timed runs
and the process peak RSS (``BENCH_N`` overrides N).

Measured 2026-11-27 on the shared 2-core CPU box (heavily loaded; same
hour for both), N=1000, run time / process peak RSS:
  x2 given:  widenets 0.83 s / 566 MiB, neural-tangents 26.9 s / 12157 MiB
  x2=None:   widenets 0.49 s / 567 MiB, neural-tangents 26.9 s / 12157 MiB
"""
from __future__ import annotations

import os
import warnings

import numpy as np

N = int(os.environ.get("BENCH_N", 1000))
DIM = 32
DEG = 25


def _inputs(n=N, seed=0):
  rs = np.random.RandomState(seed)
  return rs.randn(n, DIM).astype(np.float32)


def _numerical_tanh_net(lib):
  import jax.numpy as jnp
  stax = lib.stax
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # neural-tangents warns on construction
    act = stax.ElementwiseNumerical(jnp.tanh, deg=DEG)
  return stax.serial(stax.Dense(512, 1.5, 0.05), act,
                     stax.Dense(512, 1.5, 0.05), act,
                     stax.Dense(1, 1.5, 0.05))[2]


def numerical_tanh_x2(lib):
  """2-hidden-layer ElementwiseNumerical(tanh, deg=25), (1000, 32) x (1000,
  32) inputs, nngp and ntk."""
  kernel_fn = _numerical_tanh_net(lib)
  x1, x2 = _inputs(), _inputs(seed=1)
  return lambda: kernel_fn(x1, x2, ("nngp", "ntk"))


def numerical_tanh_none(lib):
  """The same network with x2=None (widenets computes the i <= j pairs)."""
  kernel_fn = _numerical_tanh_net(lib)
  x1 = _inputs()
  return lambda: kernel_fn(x1, None, ("nngp", "ntk"))


WORKLOADS = {
    "elementwise_numerical_tanh_deg25_x2": numerical_tanh_x2,
    "elementwise_numerical_tanh_deg25_none": numerical_tanh_none,
}




def main():
  from standalone import main as run
  run(WORKLOADS)


if __name__ == "__main__":
  main()
