"""Core stax workloads (issue 2): widenets vs neural-tangents 0.6.5.

``WORKLOADS = {name: make}``; ``make(lib)`` (``lib``: the imported module
``widenets`` or ``neural_tangents``) builds the network and the inputs
(untimed) and returns a zero-argument callable that computes the kernels once
(see benchmarks/README.md for the convention). Run them through the runner::

  .venv/bin/python benchmarks/run.py --only core --peer .peer/nt/bin/python

How ``kernel_fn`` is called follows ``BENCH_CALL`` (see `user_kernel_fn`):
``user`` (default: neural-tangents' wrapped in ``jax.jit(kernel_fn,
static_argnames='get')`` as its README says, widenets' as is, since it jits
inside), ``direct`` (both as is) or ``jit`` (both under ``jax.jit``);
``run.py --call`` sets it per worker.
"""
from __future__ import annotations

import os

import numpy as np

N = int(os.environ.get("BENCH_N", 2000))
DIM = 784


def _inputs(n=N, dim=DIM, seed=0):
  rs = np.random.RandomState(seed)
  return rs.randn(n, dim).astype(np.float32)


CALLS = ("user", "direct", "jit")


def call_mode() -> str:
  """How workloads call ``kernel_fn``: ``BENCH_CALL`` (default ``user``)."""
  mode = os.environ.get("BENCH_CALL", "user")
  if mode not in CALLS:
    raise ValueError(f"BENCH_CALL must be one of {CALLS}; got {mode!r}.")
  return mode


def user_kernel_fn(lib, kernel_fn):
  """``kernel_fn`` as a user of ``lib`` calls it (see `call_mode`).

  ``jit``: ``jax.jit(kernel_fn, static_argnames='get')`` for both libraries;
  ``direct``: as is for both; ``user``: neural-tangents' jitted (its README's
  advice), widenets' as is (jitted inside).
  """
  mode = call_mode()
  peer = lib.__name__.startswith("neural_tangents")
  if mode == "jit" or (mode == "user" and peer):
    import jax
    return jax.jit(kernel_fn, static_argnames="get")
  return kernel_fn


def _erf3(lib):
  stax = lib.stax
  return stax.serial(stax.Dense(2048, W_std=1.5, b_std=0.05), stax.Erf(),
                     stax.Dense(2048, W_std=1.5, b_std=0.05), stax.Erf(),
                     stax.Dense(1, W_std=1.5, b_std=0.05))[2]


def erf3_x1_x2(lib):
  """The seed network (Dense(2048, 1.5, 0.05) + Erf, twice, + Dense(1)) on
  (2000, 784) x (2000, 784) inputs, get=('nngp', 'ntk')."""
  kernel_fn = user_kernel_fn(lib, _erf3(lib))
  x1, x2 = _inputs(), _inputs(seed=1)
  return lambda: kernel_fn(x1, x2, ("nngp", "ntk"))


def relu20_x2_none(lib):
  """20 x (Dense(512, 1.4, 0.1) + Relu) + Dense(1) on (2000, 784) inputs,
  x2=None, get=('nngp', 'ntk')."""
  stax = lib.stax
  layers = []
  for _ in range(20):
    layers += [stax.Dense(512, W_std=1.4, b_std=0.1), stax.Relu()]
  kernel_fn = user_kernel_fn(lib, stax.serial(*layers, stax.Dense(1))[2])
  x = _inputs()
  return lambda: kernel_fn(x, None, ("nngp", "ntk"))


def erf3_x2_none(lib):
  """The seed network on (2000, 784) inputs with x2=None (nngp, ntk)."""
  kernel_fn = user_kernel_fn(lib, _erf3(lib))
  x = _inputs()
  return lambda: kernel_fn(x, None, ("nngp", "ntk"))


WORKLOADS = {
    "erf3_x1_x2_n2000": erf3_x1_x2,
    "relu20_x2_none_n2000": relu20_x2_none,
    "erf3_x2_none_n2000": erf3_x2_none,
}
