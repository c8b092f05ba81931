"""Numbers check: widenets' analytic kernels vs neural-tangents 0.6.5's.

Computes a handful of core-stax kernels in both libraries on the same inputs
(the peer runs this same file in its own venv, results pass through an
``.npz``) and prints, per case and field, the largest difference relative to
the largest entry, max |wn - nt| / max |nt|. Not a test: the peer venv is not
available in CI.

  .venv/bin/python benchmarks/compare_nt.py --peer .peer/nt/bin/python
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np


def _cases(stax):
  """``name -> (layers, input key, x2 key or None, get)``."""
  D = lambda *a, **k: stax.Dense(*a, **k)
  deep_relu = []
  for _ in range(10):
    deep_relu += [D(64, W_std=1.4, b_std=0.1), stax.Relu()]
  res_block = stax.serial(
      stax.FanOut(2),
      stax.parallel(stax.serial(stax.Relu(), D(8, W_std=1.3, b_std=0.1)),
                    stax.Identity()),
      stax.FanInSum())
  std = dict(parameterization="standard")
  cases = {
      "erf3_seed": [D(2048, W_std=1.5, b_std=0.05), stax.Erf(),
                    D(2048, W_std=1.5, b_std=0.05), stax.Erf(),
                    D(1, W_std=1.5, b_std=0.05)],
      "relu10": deep_relu + [D(1)],
      "relu10_stabilized": [l if i % 2 == 0 else stax.Relu(do_stabilize=True)
                            for i, l in enumerate(deep_relu)] + [D(1)],
      "abrelu": [D(8, W_std=1.2, b_std=0.3), stax.ABRelu(-0.3, 1.2),
                 D(8, W_std=1.1), stax.ABRelu(0.5, -1.0), D(1)],
      "leaky_abs": [D(8, W_std=1.2, b_std=0.3), stax.LeakyRelu(0.1),
                    D(8, b_std=0.2), stax.Abs(), D(1)],
      "erf_abc_sigmoid": [D(8, W_std=1.3, b_std=0.2),
                          stax.Erf(a=1.2, b=0.7, c=0.3), D(8, b_std=0.1),
                          stax.Sigmoid_like(), D(1)],
      "sign": [D(8, W_std=1.3, b_std=0.2), stax.Sign(), D(8), stax.Relu(),
               D(1)],
      "standard_s": [D(16, W_std=1.5, b_std=0.2, s=(1, 2), **std),
                     stax.Relu(), D(16, W_std=1.3, b_std=0.3, s=(2, 2), **std),
                     stax.Erf(), D(4, W_std=1.0, b_std=0.1, s=(2, 1), **std)],
      "residual": [D(8, b_std=0.1), res_block, res_block, stax.Relu(), D(1)],
      "parallel_concat": [
          D(8, W_std=1.5, b_std=0.1), stax.FanOut(2),
          stax.parallel(stax.serial(stax.Erf(), D(8, b_std=0.2)),
                        stax.serial(stax.Relu(), D(4, W_std=1.5))),
          stax.FanInConcat(), D(1, W_std=1.2)],
      "fan_in_prod": [
          D(8, W_std=1.2, b_std=0.3), stax.FanOut(2),
          stax.parallel(stax.serial(stax.Erf(), D(8, b_std=0.5)),
                        stax.serial(stax.Relu(), D(8, W_std=1.5, b_std=0.2))),
          stax.FanInProd(), D(1)],
      "dropout_train": [D(8, W_std=1.4, b_std=0.1), stax.Relu(),
                        stax.Dropout(0.7), D(8, b_std=0.1), stax.Erf(), D(1)],
      "repeat": [D(8, W_std=1.4, b_std=0.1), stax.repeat(
          stax.serial(D(8, W_std=1.4, b_std=0.1), stax.Relu()), 5), D(1)],
      "flatten_spatial": [D(8, W_std=1.3, b_std=0.2), stax.Erf(),
                          D(8, W_std=1.1), stax.Relu(), stax.Flatten(), D(1)],
      "concat_spatial": [stax.FanOut(2),
                         stax.parallel(D(8, b_std=0.1), D(8, W_std=1.5)),
                         stax.FanInConcat(axis=1), stax.Relu(), stax.Flatten(),
                         D(1)],
  }
  spatial = ("flatten_spatial", "concat_spatial")
  out = {}
  for name, layers in cases.items():
    x = "s" if name in spatial else "f"
    for x2 in (None, x + "2"):
      out[f"{name}/{'x2=None' if x2 is None else 'x1,x2'}"] = (
          layers, x + "1", x2)
  return out


def _inputs():
  rs = np.random.RandomState(0)
  f1 = rs.randn(12, 10).astype(np.float32)
  f1[3] = 0.0          # a zero input
  f1[5] = f1[4]        # a repeated input
  f2 = (0.6 * f1[:7] + 0.8 * rs.randn(7, 10)).astype(np.float32)
  s1 = rs.randn(6, 4, 5).astype(np.float32)
  s2 = rs.randn(5, 4, 5).astype(np.float32)
  return {"f1": f1, "f2": f2, "s1": s1, "s2": s2}


def compute(lib_name: str, inputs: dict) -> dict:
  """Kernels of every case with library ``lib_name``."""
  import importlib
  import warnings
  lib = importlib.import_module(lib_name)
  out = {}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for key, (layers, a, b) in _cases(lib.stax).items():
      kernel_fn = lib.stax.serial(*layers)[2]
      k = kernel_fn(inputs[a], None if b is None else inputs[b],
                    ("nngp", "ntk"))
      out[key + "/nngp"] = np.asarray(k.nngp)
      out[key + "/ntk"] = np.asarray(k.ntk)
  return out


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--peer", default=".peer/nt/bin/python")
  p.add_argument("--side", default=None, help=argparse.SUPPRESS)
  p.add_argument("--npz", default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.side:  # inside one library's venv
    inputs = dict(np.load(args.npz + ".in.npz"))
    np.savez(args.npz + f".{args.side}.npz", **compute(args.side, inputs))
    return

  tmp = os.path.join(tempfile.mkdtemp(), "cmp")
  np.savez(tmp + ".in.npz", **_inputs())
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  for python, side in ((sys.executable, "widenets"),
                       (args.peer, "neural_tangents")):
    subprocess.run([python, os.path.abspath(__file__), "--side", side,
                    "--npz", tmp], check=True, env=env)
  wn = np.load(tmp + ".widenets.npz")
  nt = np.load(tmp + ".neural_tangents.npz")
  inputs = _inputs()
  worst = worst_other = 0.0
  print("rel = max|wn - nt| / max|nt|; 'other' excludes the pairs of identical "
        "inputs (the diagonal, and rows 4 and 5) of x2=None kernels, where "
        "neural-tangents' own round-off is sqrt(eps) (see the README)")
  print(f"{'case':40s} {'field':5s} {'rel':>10s} {'rel other':>10s}  "
        f"{'max|nt|':>9s}")
  for key in nt.files:
    a, b = wn[key].astype(np.float64), nt[key].astype(np.float64)
    if a.shape != b.shape:
      print(f"{key:46s} SHAPE MISMATCH wn {a.shape} nt {b.shape}")
      worst = np.inf
      continue
    scale = np.abs(b).max()
    diff = np.abs(a - b) / (scale if scale > 0 else 1.0)
    rel = diff.max()
    case, field = key.rsplit("/", 1)
    other = rel
    if case.endswith("x2=None"):
      x = inputs[_cases_inputs(case)]
      flat = x.reshape(x.shape[0], -1)
      same = np.all(flat[:, None] == flat[None, :], axis=-1)
      same = same.reshape(same.shape + (1,) * (diff.ndim - 2))
      other = np.where(same, 0.0, diff).max()
    worst, worst_other = max(worst, rel), max(worst_other, other)
    print(f"{case:40s} {field:5s} {rel:10.2e} {other:10.2e}  {scale:9.3g}")
  print(f"worst: {worst:.2e}; worst on pairs of different inputs: "
        f"{worst_other:.2e}")


def _cases_inputs(case: str) -> str:
  return "s1" if case.split("/")[0] in ("flatten_spatial",
                                        "concat_spatial") else "f1"


if __name__ == "__main__":
  main()
