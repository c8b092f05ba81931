"""The neural-tangents cookbook, end to end, at reduced sizes.

In the style of neural-tangents' notebook ``neural_tangents_cookbook``: a
noisy sine, a 3-layer Erf network with ``kernel_fn = jax.jit(kernel_fn,
static_argnames='get')`` and ``apply_fn = jax.jit(apply_fn)``; prior draws,
the NNGP prior variance, NNGP and NTK posteriors with covariances from
``predict.gradient_descent_mse_ensemble``, the mean train/test loss over a
grid of training times, a finite network trained by SGD, and a residual
network (FanOut / parallel / FanInSum) kernel and posterior.

Run with either library; prints one ``RESULT`` line (times and numbers)::

  python benchmarks/programs/cookbook.py --lib widenets
  .peer/nt/bin/python benchmarks/programs/cookbook.py --lib neural_tangents
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import time

import numpy as np

TRAIN_POINTS = 5
TEST_POINTS = 50
TIMES = int(os.environ.get("PROGRAM_TIMES", 1000))
SGD_STEPS = int(os.environ.get("PROGRAM_SGD_STEPS", 1000))


def loss_fn(predict_fn, ys, t, xs=None):
  """Mean squared loss of the infinite ensemble at times ``t``."""
  import jax.numpy as jnp
  mean, cov = predict_fn(t=t, get="ntk", x_test=xs, compute_cov=True)
  mean = jnp.reshape(mean, mean.shape[:1] + (-1,))
  var = jnp.diagonal(cov, axis1=1, axis2=2)
  ys = jnp.reshape(ys, (1, -1))
  return 0.5 * jnp.mean(ys ** 2 - 2 * mean * ys + var + mean ** 2, axis=1)


def sgd(apply_fn, params, train, steps, lr=0.1):
  """Plain gradient descent on the MSE; returns params and final losses."""
  import jax
  import jax.numpy as jnp
  loss = jax.jit(lambda p, x, y: 0.5 * jnp.mean((apply_fn(p, x) - y) ** 2))

  @jax.jit
  def step(p, x, y):
    g = jax.grad(loss)(p, x, y)
    return jax.tree_util.tree_map(lambda a, b: a - lr * b, p, g)

  for _ in range(steps):
    params = step(params, *train)
  return params, float(loss(params, *train))


def main(lib_name: str) -> dict:
  t0 = time.perf_counter()
  nt = importlib.import_module(lib_name)
  import jax
  import jax.numpy as jnp
  from jax import random
  stax = nt.stax
  times = {"import": time.perf_counter() - t0}
  numbers = {}

  t = time.perf_counter()
  key = random.PRNGKey(10)
  # Data from numpy, so that both libraries (different jax versions, whose
  # random streams differ) see the same points and compute the same numbers.
  rs = np.random.RandomState(10)
  train_xs = jnp.asarray(rs.uniform(-np.pi, np.pi, (TRAIN_POINTS, 1)),
                         jnp.float32)
  train_ys = jnp.sin(train_xs) + 0.1 * jnp.asarray(
      rs.randn(TRAIN_POINTS, 1), jnp.float32)
  train = (train_xs, train_ys)
  test_xs = jnp.reshape(jnp.linspace(-jnp.pi, jnp.pi, TEST_POINTS),
                        (TEST_POINTS, 1))
  test_ys = jnp.sin(test_xs)

  init_fn, apply_fn, kernel_fn = stax.serial(
      stax.Dense(512, W_std=1.5, b_std=0.05), stax.Erf(),
      stax.Dense(512, W_std=1.5, b_std=0.05), stax.Erf(),
      stax.Dense(1, W_std=1.5, b_std=0.05))
  apply_fn = jax.jit(apply_fn)
  kernel_fn = jax.jit(kernel_fn, static_argnames="get")

  draws = []
  for _ in range(10):
    key, net_key = random.split(key)
    _, params = init_fn(net_key, (-1, 1))
    draws.append(apply_fn(params, test_xs))
  # Random draws differ between jax versions: waited for, not compared.
  jax.block_until_ready(draws)
  prior = kernel_fn(test_xs, test_xs, "nngp")
  numbers["prior_std_mean"] = float(jnp.mean(jnp.sqrt(jnp.diag(prior))))
  times["prior"] = time.perf_counter() - t

  t = time.perf_counter()
  predict_fn = nt.predict.gradient_descent_mse_ensemble(
      kernel_fn, train_xs, train_ys, diag_reg=1e-4)
  for get in ("nngp", "ntk"):
    mean, cov = predict_fn(x_test=test_xs, get=get, compute_cov=True)
    numbers[f"{get}_mean_mse"] = float(jnp.mean((mean - test_ys) ** 2))
    numbers[f"{get}_std_mean"] = float(jnp.mean(jnp.sqrt(jnp.diag(cov))))
  ts = jnp.linspace(0, 1000, TIMES)
  numbers["train_loss_end"] = float(loss_fn(predict_fn, train_ys, ts)[-1])
  numbers["test_loss_end"] = float(
      loss_fn(predict_fn, test_ys, ts, test_xs)[-1])
  times["posterior"] = time.perf_counter() - t

  t = time.perf_counter()
  _, params = init_fn(key, (-1, 1))
  # A random initialization too: timed, not compared.
  sgd(apply_fn, params, train, SGD_STEPS)
  times["sgd"] = time.perf_counter() - t

  t = time.perf_counter()
  res_block = stax.serial(
      stax.FanOut(2),
      stax.parallel(stax.serial(stax.Erf(), stax.Dense(512, W_std=1.1,
                                                       b_std=0)),
                    stax.Identity()),
      stax.FanInSum())
  _, _, res_kernel_fn = stax.serial(
      stax.Dense(512, W_std=1, b_std=0), res_block, res_block, stax.Erf(),
      stax.Dense(1, W_std=1.5, b_std=0))
  res_kernel_fn = jax.jit(res_kernel_fn, static_argnames="get")
  predict_fn = nt.predict.gradient_descent_mse_ensemble(
      res_kernel_fn, train_xs, train_ys, diag_reg=1e-4)
  mean, cov = predict_fn(x_test=test_xs, get="ntk", compute_cov=True)
  numbers["resnet_ntk_mean_mse"] = float(jnp.mean((mean - test_ys) ** 2))
  numbers["resnet_test_loss_end"] = float(
      loss_fn(predict_fn, test_ys, ts, test_xs)[-1])
  times["resnet"] = time.perf_counter() - t
  return {"times": times, "numbers": numbers}


if __name__ == "__main__":
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--lib", default="widenets",
                 choices=("widenets", "neural_tangents"))
  res = main(p.parse_args().lib)
  print("RESULT " + json.dumps(res), flush=True)
