"""Phase diagram and trainability of deep Erf networks, end to end.

In the style of neural-tangents' notebooks ``phase_diagram`` and
``Disentangling_Trainability_and_Generalization``, at reduced sizes:

1. the fixed point ``c*`` of the correlation map and its slope ``chi_1`` of
   one ``Dense(W_std, b_std) + Erf`` layer, over a grid of ``(W_var, b_var)``
   with ``jax.vmap`` over traced hyperparameters (the layer is built inside
   the vmapped function, as the notebooks do);
2. a trainability sweep: for a few ``(W_var, b_var)`` pairs on both sides of
   the order-to-chaos line, the NTK of ``depth`` layers of ``Erf + Dense`` on
   a small synthetic data set, its condition number and the test error of the
   infinite-time NTK predictor (one network, hence one ``jax.jit`` of
   ``kernel_fn``, per pair, as a user writes it).

Run with either library; prints one ``RESULT`` line of numbers to compare::

  python benchmarks/programs/phase_diagram.py --lib widenets
  .peer/nt/bin/python benchmarks/programs/phase_diagram.py --lib neural_tangents
"""
from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import time

import numpy as np

GRID_W = int(os.environ.get("PROGRAM_GRID", 24))
PAIRS = ((0.5, 0.05), (1.76, 0.05), (3.0, 0.1), (1.5, 0.2))
DEPTHS = (4, 16)


def input_kernel(nt, cov):
  """A ``Kernel`` of Gaussian pre-activations with covariance ``cov``."""
  import jax.numpy as jnp
  n = cov.shape[0]
  return nt.Kernel(
      nngp=cov, ntk=None, cov1=jnp.diag(cov), cov2=None, x1_is_x2=True,
      is_gaussian=True, is_reversed=False, is_input=True,
      diagonal_batch=True, diagonal_spatial=False, shape1=(n, 1024),
      shape2=(n, 1024), batch_axis=0, channel_axis=1, mask1=None, mask2=None)


def fixed_point(f, initial_value, threshold):
  """A fixed point of ``f: R -> R`` by Newton's method."""
  import jax
  import jax.numpy as jnp
  g = lambda x: f(x) - x
  dg = jax.grad(g)

  def cond(state):
    x, last = state
    return jnp.abs(x - last) > threshold

  def body(state):
    x, _ = state
    return x - g(x) / dg(x), x

  return jax.lax.while_loop(cond, body, (initial_value, 0.0))[0]


def correlation_map(nt, W_var, b_var):
  """``c -> c'`` of one ``Dense(W_std, b_std) + Erf`` layer at its q*."""
  import jax.numpy as jnp
  stax = nt.stax
  kernel_fn = stax.serial(stax.Dense(1024, jnp.sqrt(W_var), jnp.sqrt(b_var)),
                          stax.Erf())[2]
  q_map = lambda q: kernel_fn(input_kernel(nt, jnp.array([[q]]))).nngp[0, 0]
  q_star = fixed_point(q_map, 1.0, 1e-7)

  def c_map(c):
    cov = jnp.array([[q_star, q_star * c], [q_star * c, q_star]])
    return kernel_fn(input_kernel(nt, cov)).nngp[1, 0] / q_star

  return c_map


def phase_grid(nt):
  """``(c*, chi_1)`` over a ``GRID_W x GRID_W`` grid, vmapped."""
  import jax
  import jax.numpy as jnp
  c_star = lambda w, b: fixed_point(correlation_map(nt, w, b), 0.1, 1e-7)
  chi_1 = lambda w, b: jax.grad(correlation_map(nt, w, b))(1.0)

  def over_grid(fn):
    return jax.jit(jax.vmap(jax.vmap(fn, (0, None)), (None, 0)))

  W_var = jnp.linspace(0.1, 3.0, GRID_W)
  b_var = jnp.linspace(0.01, 0.25, GRID_W)
  return (np.asarray(over_grid(c_star)(W_var, b_var)),
          np.asarray(over_grid(chi_1)(W_var, b_var)))


def trainability(nt, x_train, y_train, x_test, y_test):
  """Per (W_var, b_var, depth): NTK condition number and test MSE."""
  import jax
  import jax.numpy as jnp
  stax = nt.stax
  out = []
  for W_var, b_var in PAIRS:
    for depth in DEPTHS:
      W_std, b_std = W_var ** 0.5, b_var ** 0.5
      layers = [stax.Dense(1024, 1.0, 0.0)]
      for _ in range(depth):
        layers += [stax.Erf(), stax.Dense(1024, W_std, b_std)]
      kernel_fn = jax.jit(stax.serial(*layers)[2], static_argnames="get")
      k_dd = kernel_fn(x_train, None, "ntk")
      k_td = kernel_fn(x_test, x_train, "ntk")
      evals = jnp.linalg.eigvalsh(k_dd)
      pred = k_td @ jnp.linalg.solve(
          k_dd + 1e-6 * jnp.trace(k_dd) / k_dd.shape[0] * jnp.eye(
              k_dd.shape[0]), y_train)
      out.append((float(evals[-1] / evals[0]),
                  float(jnp.mean((pred - y_test) ** 2))))
  return out


def data(n_train=64, n_test=64, dim=16, seed=0):
  """float64, as the notebooks run with ``jax_enable_x64`` (ill-conditioned
  NTKs of deep ordered networks need it)."""
  rs = np.random.RandomState(seed)
  x = rs.randn(n_train + n_test, dim)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  w = rs.randn(dim, 1)
  y = np.sin(3 * x @ w)
  return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def main(lib_name: str) -> dict:
  t0 = time.perf_counter()
  nt = importlib.import_module(lib_name)
  import jax
  jax.config.update("jax_enable_x64", True)
  times = {"import": time.perf_counter() - t0}
  t = time.perf_counter()
  c_star, chi_1 = phase_grid(nt)
  times["phase_grid"] = time.perf_counter() - t
  t = time.perf_counter()
  train = trainability(nt, *data())
  times["trainability"] = time.perf_counter() - t
  return {"times": times,
          "numbers": {"c_star_mean": float(np.mean(c_star)),
                      "chi_1_mean": float(np.mean(chi_1)),
                      "ordered_fraction": float(np.mean(c_star > 0.999)),
                      "log_condition": [float(np.log10(abs(c))) for c, _ in train],
                      "test_mse": [m for _, m in train]}}


if __name__ == "__main__":
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--lib", default="widenets",
                 choices=("widenets", "neural_tangents"))
  res = main(p.parse_args().lib)
  print("RESULT " + json.dumps(res), flush=True)
