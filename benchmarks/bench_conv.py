"""Convolutional workloads: widenets vs neural-tangents 0.6.5.

``WORKLOADS = {name: make}``; ``make(lib)`` (``lib``: the module ``widenets``
or ``neural_tangents``) builds the network and inputs and returns a
zero-argument callable that computes the kernels once (the first call
compiles). Standalone::

  .venv/bin/python benchmarks/bench_conv.py              # widenets
  .peer/nt/bin/python benchmarks/bench_conv.py --lib neural_tangents

Workloads (nngp and ntk, float32):
  * ``cnn4_8x8``, ``cnn4_16x16``: 4 x (Conv 3x3 SAME + Relu) + GlobalAvgPool
    + Dense on 8x8x3 / 16x16x3 images (all pairs of positions are needed);
  * ``myrtle5_32x32``: the Myrtle-5 network (Shankar et al. 2020) on 32x32x3;
  each with ``x2`` given (``_x2``) and ``x2=None`` (``_none``; widenets
  computes only the sample pairs ``i <= j``).
Sizes: ``BENCH_CONV_SCALE`` (default 1) multiplies the sample counts.
``kernel_fn`` is called as ``bench_core.user_kernel_fn`` says (``BENCH_CALL``).
"""
from __future__ import annotations

import os

import numpy as np

SCALE = float(os.environ.get("BENCH_CONV_SCALE", 1))


def _n(n: int) -> int:
  return max(2, int(round(n * SCALE)))


def _images(n, size, seed=0):
  rs = np.random.RandomState(seed)
  return rs.randn(n, size, size, 3).astype(np.float32)


def _cnn4(lib):
  stax = lib.stax
  layers = []
  for _ in range(4):
    layers += [stax.Conv(256, (3, 3), padding="SAME", W_std=1.4, b_std=0.1),
               stax.Relu()]
  layers += [stax.GlobalAvgPool(), stax.Dense(1, W_std=1.4, b_std=0.1)]
  return stax.serial(*layers)[2]


def _myrtle5(lib):
  stax = lib.stax
  conv = lambda: stax.Conv(256, (3, 3), padding="SAME", W_std=2**0.5,
                           b_std=0.0)
  pool = lambda: stax.AvgPool((2, 2), strides=(2, 2))
  layers = [conv(), stax.Relu()] * 2 + [pool()]
  layers += [conv(), stax.Relu(), pool()]
  layers += [conv(), stax.Relu()] + [pool()] * 3
  layers += [stax.Flatten(), stax.Dense(10, 2**0.5, 0.0)]
  return stax.serial(*layers)[2]


def _workload(net, n, size, with_x2):
  def make(lib):
    from bench_core import user_kernel_fn
    kernel_fn = user_kernel_fn(lib, net(lib))
    x1 = _images(_n(n), size)
    x2 = _images(_n(n), size, seed=1) if with_x2 else None
    return lambda: kernel_fn(x1, x2, ("nngp", "ntk"))
  make.__doc__ = (f"{net.__name__.strip('_')} on {_n(n)} {size}x{size}x3 "
                  f"images, x2={'given' if with_x2 else 'None'}")
  return make


WORKLOADS = {
    "cnn4_8x8_x2": _workload(_cnn4, 48, 8, True),
    "cnn4_8x8_none": _workload(_cnn4, 64, 8, False),
    "cnn4_16x16_x2": _workload(_cnn4, 12, 16, True),
    "cnn4_16x16_none": _workload(_cnn4, 16, 16, False),
    "myrtle5_32x32_x2": _workload(_myrtle5, 3, 32, True),
    "myrtle5_32x32_none": _workload(_myrtle5, 4, 32, False),
}




def main():
  from standalone import main as run
  run(WORKLOADS)


if __name__ == "__main__":
  main()
