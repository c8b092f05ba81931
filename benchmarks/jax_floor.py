"""JAX's own cost, without any kernel library: the floor under a program.

Two measurements that call only JAX, run in fresh processes with this
Python (JAX 0.10) and with the peer's (neural-tangents' venv, JAX 0.4.26),
interleaved, so that the part of a gap that is JAX's can be told from the
part that is ours (benchmarks/ISSUE15.md, section 11):

* ``notebook``: the cookbook program's own JAX code (benchmarks/programs/
  cookbook.py without its kernel library): data, ``random.normal`` of the
  network's parameter shapes for 10 prior draws, the loss arithmetic over
  1000 times, a jitted 3-layer Erf MLP apply and 1000 SGD steps. Whole
  process wall time and XLA compile time.
* ``erf_first_call``: a minimal hand-written 3-layer Erf NNGP + NTK program
  (arcsine formulas, nothing else), 1000 x 784 against 1000 x 784, first
  call under ``jax.jit`` (trace, lower, compile, run) and a second call.

Usage::

  .venv/bin/python benchmarks/jax_floor.py --peer .peer/nt/bin/python \\
      --repeat 3

Standard library only in the parent process.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

MARK = "FLOOR "


def _notebook() -> dict:
  t0 = time.perf_counter()
  import collections

  import jax
  import jax.monitoring
  import jax.numpy as jnp
  import numpy as np
  from jax import random
  compile_s = collections.defaultdict(float)
  jax.monitoring.register_event_duration_secs_listener(
      lambda name, secs, **kw: compile_s.__setitem__(
          name.split("/")[-1], compile_s[name.split("/")[-1]] + secs))
  rs = np.random.RandomState(10)
  train_xs = jnp.asarray(rs.uniform(-np.pi, np.pi, (5, 1)), jnp.float32)
  train_ys = jnp.sin(train_xs) + 0.1 * jnp.asarray(rs.randn(5, 1),
                                                   jnp.float32)
  test_xs = jnp.reshape(jnp.linspace(-jnp.pi, jnp.pi, 50), (50, 1))
  test_ys = jnp.sin(test_xs)
  shapes = [(1, 512), (512,), (512, 512), (512,), (512, 1), (1,)]

  def init(key):
    params = []
    for shape in shapes:
      key, k = random.split(key)
      params.append(random.normal(k, shape))
    return params

  def apply(params, x):
    h = x
    for i in range(0, 6, 2):
      h = (h @ params[i] * 1.5 / np.sqrt(params[i].shape[0])
           + 0.05 * params[i + 1])
      if i < 4:
        h = jax.scipy.special.erf(h)
    return h

  apply_jit = jax.jit(apply)
  key = random.PRNGKey(10)
  draws = []
  for _ in range(10):
    key, k = random.split(key)
    draws.append(apply_jit(init(k), test_xs))
  jax.block_until_ready(draws)
  float(jnp.mean(jnp.sqrt(jnp.diag(test_xs @ test_xs.T))))
  for m, ys in ((5, train_ys), (50, test_ys)):
    mean, cov = jnp.ones((1000, m, 1)), jnp.ones((1000, m, m))
    mean = jnp.reshape(mean, mean.shape[:1] + (-1,))
    var = jnp.diagonal(cov, axis1=1, axis2=2)
    y = jnp.reshape(ys, (1, -1))
    float((0.5 * jnp.mean(y ** 2 - 2 * mean * y + var + mean ** 2,
                          axis=1))[-1])
  params = init(key)
  loss = jax.jit(lambda p, x, y: 0.5 * jnp.mean((apply(p, x) - y) ** 2))

  @jax.jit
  def step(p, x, y):
    g = jax.grad(loss)(p, x, y)
    return jax.tree_util.tree_map(lambda a, b: a - 0.1 * b, p, g)

  for _ in range(1000):
    params = step(params, train_xs, train_ys)
  float(loss(params, train_xs, train_ys))
  return {"jax": jax.__version__, "wall_s": time.perf_counter() - t0,
          "compile_s": compile_s.get("backend_compile_duration", 0.0)}


def _erf_first_call() -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  rs = np.random.RandomState(0)
  x1 = rs.randn(1000, 784).astype(np.float32)
  x2 = rs.randn(1000, 784).astype(np.float32)

  def kernels(x1, x2, w=1.5, b=0.05):
    d = x1.shape[1]
    c12 = w ** 2 * x1 @ x2.T / d + b ** 2
    v1 = w ** 2 * jnp.sum(x1 * x1, 1) / d + b ** 2
    v2 = w ** 2 * jnp.sum(x2 * x2, 1) / d + b ** 2
    ntk = c12
    for _ in range(3):
      prod = (1 + 2 * v1)[:, None] * (1 + 2 * v2)[None, :]
      new = 2 / jnp.pi * jnp.arcsin(jnp.clip(2 * c12 / jnp.sqrt(prod), -1, 1))
      dot = 4 / jnp.pi / jnp.sqrt(jnp.maximum(prod - 4 * c12 ** 2, 0))
      v1 = w ** 2 * 2 / jnp.pi * jnp.arcsin(2 * v1 / (1 + 2 * v1)) + b ** 2
      v2 = w ** 2 * 2 / jnp.pi * jnp.arcsin(2 * v2 / (1 + 2 * v2)) + b ** 2
      c12 = w ** 2 * new + b ** 2
      ntk = c12 + w ** 2 * dot * ntk
    return c12, ntk

  f = jax.jit(kernels)
  jax.block_until_ready(jnp.zeros(3) + 1)  # JAX's own start-up, untimed
  t = time.perf_counter()
  jax.block_until_ready(f(x1, x2))
  first = time.perf_counter() - t
  t = time.perf_counter()
  jax.block_until_ready(f(x1, x2))
  return {"jax": jax.__version__, "first_s": first,
          "second_s": time.perf_counter() - t}


WORKERS = {"notebook": _notebook, "erf_first_call": _erf_first_call}


def _run(python: str, worker: str) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([python, os.path.abspath(__file__), "--worker", worker],
                       capture_output=True, text=True, env=env, check=True)
  line = [l for l in out.stdout.splitlines() if l.startswith(MARK)][-1]
  return json.loads(line[len(MARK):])


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--worker", choices=sorted(WORKERS))
  ap.add_argument("--peer", default=None, help="the peer venv's python")
  ap.add_argument("--repeat", type=int, default=3)
  args = ap.parse_args()
  if args.worker:
    print(MARK + json.dumps(WORKERS[args.worker]()), flush=True)
    return
  pythons = [sys.executable] + ([args.peer] if args.peer else [])
  print("| measurement | JAX | runs (s) |")
  print("|---|---|---|")
  for worker, keys in (("notebook", ("wall_s", "compile_s")),
                       ("erf_first_call", ("first_s", "second_s"))):
    runs = {}
    for _ in range(args.repeat):
      for python in pythons:  # interleaved: both see the same load
        res = _run(python, worker)
        runs.setdefault(res["jax"], []).append(res)
    for key in keys:
      for version, results in runs.items():
        values = " / ".join(f"{r[key]:.3f}" for r in results)
        print(f"| {worker} {key} | {version} | {values} |", flush=True)

if __name__ == "__main__":
  main()
