"""scikit-ntk's fully-connected ReLU NTK against ours where they coincide.

scikit-ntk (not a dependency; ``pip install scikit-ntk``) computes, for
depth L and bias beta, Sigma^0 = X Z^T, Sigma^l = 2 E[relu relu],
K^l = K^{l-1} * 2 E[relu' relu'] + Sigma^l + beta^2, and returns
K^L / ((L + 1)(beta^2 + 1)). Its bias enters K but not Sigma, so the
parametrizations coincide at beta = 0: there it is our
serial(Dense(W_std=1, b_std=0), [Relu, Dense(W_std=sqrt(2), b_std=0)] * L)
NTK on inputs scaled by sqrt(d) (our Dense divides by fan-in), over L + 1.

  PYTHONPATH=<dir with skntk> python benchmarks/compare_skntk.py
"""
import math

import jax
import numpy as np

from widenets import stax


def main(depth=3, n=40, d=5):
  from skntk import NeuralTangentKernel
  x = np.random.RandomState(0).randn(n, d)
  theirs = NeuralTangentKernel(depth, bias=0.)(x)
  layers = [stax.Dense(1, 1.0, 0.)]
  for _ in range(depth):
    layers += [stax.Relu(), stax.Dense(1, math.sqrt(2), 0.)]
  with jax.enable_x64(True):
    ours = np.asarray(stax.serial(*layers)[2](x * math.sqrt(d), None, "ntk"))
  ours = ours / (depth + 1)
  err = np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))
  print(f"depth {depth}, n {n}: max |ours - scikit-ntk| / max |K| = "
        f"{err:.2e}")
  return err


if __name__ == "__main__":
  main()
