"""The Myrtle-5 convolutional kernel (Shankar et al. 2020) on digits.

Myrtle-5: two 3x3 ReLU convolutions, 2x2 average pooling, a convolution,
pooling, a convolution, pooling, then a global average and a linear readout
(adapted to 8x8 images: three 2x2 pools take 8x8 to 1x1). Its NTK is
computed block by block with `widenets.batch` and used for kernel regression.

    python examples/myrtle5.py [--small]
"""
import argparse
import sys
import time

import numpy as np

from widenets import predict, stax
from widenets.apps.evaluate import load_digits, one_hot


def myrtle5(width=128, W_std=2 ** 0.5, b_std=0.0):
  conv = lambda: stax.Conv(width, (3, 3), padding="SAME", W_std=W_std,
                           b_std=b_std)
  pool = lambda: stax.AvgPool((2, 2), strides=(2, 2))
  return stax.serial(
      conv(), stax.Relu(), conv(), stax.Relu(), pool(),
      conv(), stax.Relu(), pool(),
      conv(), stax.Relu(), pool(),
      stax.GlobalAvgPool(), stax.Dense(10, W_std=W_std, b_std=b_std))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--small", action="store_true", help="12 train / 6 test")
  args = p.parse_args(argv)
  missing = [n for n in ("Conv", "AvgPool", "GlobalAvgPool")
             if not hasattr(stax, n)]
  if missing:
    print(f"skipped: this widenets has no stax.{', stax.'.join(missing)} "
          f"yet (convolutional layers).")
    return 0
  from widenets.batching import batch
  n_train, n_test = (12, 6) if args.small else (300, 200)
  x_train, y_train, x_test, y_test = load_digits(n_train, n_test)
  kernel_fn = batch(myrtle5()[2], 20)
  start = time.perf_counter()
  k_train = kernel_fn(x_train, None, "ntk")
  k_test = kernel_fn(x_test, x_train, "ntk")
  print(f"Myrtle-5 NTK of {n_train} train / {n_test} test digits in "
        f"{time.perf_counter() - start:.1f} s")
  out = predict.gradient_descent_mse(k_train, one_hot(y_train, 10),
                                     diag_reg=1e-4)(None, None, 0., k_test)
  acc = np.mean(np.asarray(out).argmax(-1) == y_test)
  print(f"Myrtle-5 NTK kernel regression, test accuracy {100 * acc:.1f}%")
  return 0


if __name__ == "__main__":
  sys.exit(main())
