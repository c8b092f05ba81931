"""Hyperparameter sweeps: many networks of one architecture (issue 15).

``wstd_sweep_40``: 40 networks Dense(512, W_std) - Erf - Dense(512, W_std) -
Erf - Dense(1, W_std) (b_std 0.05), one per ``W_std`` in ``linspace(0.5, 2.5,
40)``, the NTK of 50 inputs (dimension 32) with ``x2=None`` each. One call of
the workload runs the whole sweep (building the 40 networks included), so
``first`` is the sweep in a fresh process and the runner's process time is
the whole program. ``kernel_fn`` is called as ``bench_core.user_kernel_fn``
says (``BENCH_CALL``): a user writes ``jax.jit(kernel_fn, ...)`` per network,
so under ``jit`` every value is a new program for both libraries.
"""
from __future__ import annotations

import os

import numpy as np

N_NETS = int(os.environ.get("BENCH_SWEEP_NETS", 40))
N = 50
DIM = 32


def _values():
  return np.linspace(0.5, 2.5, N_NETS)


def _net(stax, W_std):
  return stax.serial(stax.Dense(512, W_std=W_std, b_std=0.05), stax.Erf(),
                     stax.Dense(512, W_std=W_std, b_std=0.05), stax.Erf(),
                     stax.Dense(1, W_std=W_std, b_std=0.05))


def wstd_sweep_40(lib):
  """40 networks, one per W_std; NTK of 50 x 32 inputs, x2=None."""
  from bench_core import user_kernel_fn
  x = np.random.RandomState(0).randn(N, DIM).astype(np.float32)

  def sweep():
    out = []
    for w in _values():
      kernel_fn = user_kernel_fn(lib, _net(lib.stax, float(w))[2])
      out.append(kernel_fn(x, None, "ntk"))
    return out

  return sweep


WORKLOADS = {
    "wstd_sweep_40": wstd_sweep_40,
}
