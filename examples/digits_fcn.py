"""Infinite fully connected network on scikit-learn's digits.

The NNGP and NTK of a 2-hidden-layer ReLU network, kernel regression on
centered one-hot labels (infinite width, infinite training time), and the
test accuracy; then the NTK ensemble's accuracy along gradient-flow time.

    python examples/digits_fcn.py [--small]
"""
import argparse
import time

import numpy as np

from widenets import predict, stax
from widenets.apps.evaluate import load_digits, one_hot


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--small", action="store_true", help="100 train / 100 test")
  args = p.parse_args(argv)
  n_train, n_test = (100, 100) if args.small else (1000, 500)
  x_train, y_train, x_test, y_test = load_digits(n_train, n_test)

  _, _, kernel_fn = stax.serial(
      stax.Flatten(),
      stax.Dense(512, W_std=1.5, b_std=0.05), stax.Relu(),
      stax.Dense(512, W_std=1.5, b_std=0.05), stax.Relu(),
      stax.Dense(10, W_std=1.5, b_std=0.05))

  start = time.perf_counter()
  k_train = kernel_fn(x_train, None, ("nngp", "ntk"))
  k_test = kernel_fn(x_test, x_train, ("nngp", "ntk"))
  print(f"kernels of {n_train} train / {n_test} test digits in "
        f"{time.perf_counter() - start:.1f} s")

  targets = one_hot(y_train, 10)
  predict_fn = predict.gp_inference(k_train, targets, diag_reg=1e-4)
  for get in ("nngp", "ntk"):
    out = predict_fn(get, k_test)
    acc = np.mean(np.asarray(out).argmax(-1) == y_test)
    print(f"{get.upper()} kernel regression, test accuracy {100 * acc:.1f}%")

  flow = predict.gradient_descent_mse(k_train.ntk, targets, diag_reg=1e-4)
  times = np.array([10., 100., 1000., 10000.])
  outs = flow(times, None, 0., k_test.ntk)
  for t, out in zip(times, np.asarray(outs)):
    acc = np.mean(out.argmax(-1) == y_test)
    print(f"NTK ensemble after gradient flow to t={t:g}: {100 * acc:.1f}%")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
