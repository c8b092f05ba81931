"""A learning curve of NTK regression over many training-set sizes.

In the style of neural-tangents' notebook ``learning_curves``: inputs on the
sphere, a polynomial teacher, and the test error of the infinite-time NTK
predictor of a ReLU network for training sets of geometrically growing size
(each size a new input shape), averaged over a few draws of the data. The
kernel function is jitted as neural-tangents' README says, and predictions go
through ``predict.gradient_descent_mse_ensemble``.

Run with either library; prints one ``RESULT`` line (times and numbers)::

  python benchmarks/programs/learning_curve.py --lib widenets
  .peer/nt/bin/python benchmarks/programs/learning_curve.py --lib neural_tangents
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import time

import numpy as np

DIM = 24
N_MAX = int(os.environ.get("PROGRAM_N_MAX", 800))
N_TEST = 200
N_AVERAGE = 2


def sizes(n_max: int = N_MAX):
  """Training-set sizes 10, 13, 16, ... (factor ~1.3) up to ``n_max``."""
  return sorted({int(10 * 1.3 ** i) for i in range(40)
                 if 10 * 1.3 ** i <= n_max})


def sphere_data(n, seed):
  rs = np.random.RandomState(seed)
  x = rs.randn(n, DIM)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  # Teacher: x1 + x1 x2 + x1 x2 x3 (degrees 1..3), plus a little noise.
  y = x[:, :1] + 2 * x[:, :1] * x[:, 1:2] + 4 * x[:, :1] * x[:, 1:2] * x[:, 2:3]
  return x.astype(np.float32), (y + 0.05 * rs.randn(n, 1)).astype(np.float32)


def main(lib_name: str) -> dict:
  t0 = time.perf_counter()
  nt = importlib.import_module(lib_name)
  import jax
  import jax.numpy as jnp
  stax = nt.stax
  times = {"import": time.perf_counter() - t0}

  t = time.perf_counter()
  _, _, kernel_fn = stax.serial(stax.Dense(512, W_std=1.5, b_std=0.05),
                                stax.Relu(),
                                stax.Dense(512, W_std=1.5, b_std=0.05),
                                stax.Relu(),
                                stax.Dense(1, W_std=1.5, b_std=0.05))
  kernel_fn = jax.jit(kernel_fn, static_argnames="get")
  ns = sizes()
  losses = np.zeros((N_AVERAGE, len(ns)))
  for rep in range(N_AVERAGE):
    x_all, y_all = sphere_data(N_MAX + N_TEST, seed=rep)
    x_test, y_test = x_all[N_MAX:], y_all[N_MAX:]
    for i, n in enumerate(ns):
      x_train, y_train = x_all[:n], y_all[:n]
      predict_fn = nt.predict.gradient_descent_mse_ensemble(
          kernel_fn, x_train, y_train, diag_reg=1e-6)
      pred = predict_fn(x_test=x_test, get="ntk")
      losses[rep, i] = float(jnp.mean((pred - y_test) ** 2))
  times["curve"] = time.perf_counter() - t
  return {"times": times,
          "numbers": {"sizes": ns, "test_mse": losses.mean(0).tolist()}}


if __name__ == "__main__":
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--lib", default="widenets",
                 choices=("widenets", "neural_tangents"))
  res = main(p.parse_args().lib)
  print("RESULT " + json.dumps(res), flush=True)
