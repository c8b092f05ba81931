"""Empirical (finite-width) NTK workloads: widenets vs neural-tangents 0.6.5.

``WORKLOADS = {name: make}``; ``make(lib)`` (``lib``: the module ``widenets``
or ``neural_tangents``) returns a zero-argument callable computing the NTK
once (jitted; the first call compiles), or None where the library cannot run
it (neural-tangents' structured derivatives crash on current JAX, so method 3
is ours only). The networks are plain JAX functions (``jax.lax`` convolutions
and matmuls) shared by both libraries, so only the NTK method differs.

* ``cnn_*``: 3 conv layers (3x3, SAME, width 64, ReLU) + flatten + Dense(10)
  on 32 inputs of 16x16x3; NTK traced over the 10 logits, ``vmap_axes=0``.
* ``fcn_*``: 3 Dense layers of width 2048 (ReLU) on 16 inputs of dim 256 with
  a scalar output, ``vmap_axes=0``.

Suffix ``_1``/``_2``/``_3``: `NtkImplementation` 1 (Jacobian contraction),
2 (NTK-vector products), 3 (structured derivatives). Standalone::

  .venv/bin/python benchmarks/bench_empirical.py [--only fcn_3 ...]
  .peer/nt/bin/python benchmarks/bench_empirical.py --lib neural_tangents

prints compile+first-run time, best of a few runs and the process's peak RSS
(run one workload per process, ``--only``, for per-workload peak memory).
"""
from __future__ import annotations


import numpy as np

CNN_N, CNN_HW, CNN_WIDTH, CNN_OUT = 32, 16, 64, 10
FCN_N, FCN_DIM, FCN_WIDTH = 16, 256, 2048


def _cnn(seed=0):
  import jax
  import jax.numpy as jnp
  rs = np.random.RandomState(seed)
  chans = [3, CNN_WIDTH, CNN_WIDTH, CNN_WIDTH]
  params = []
  for cin, cout in zip(chans[:-1], chans[1:]):
    w = rs.randn(3, 3, cin, cout).astype(np.float32) / np.sqrt(9 * cin)
    params.append((jnp.asarray(w), jnp.zeros((cout,), jnp.float32)))
  dense = rs.randn(CNN_HW * CNN_HW * CNN_WIDTH, CNN_OUT).astype(np.float32)
  params.append((jnp.asarray(dense / np.sqrt(dense.shape[0])),
                 jnp.zeros((CNN_OUT,), jnp.float32)))

  def f(params, x):
    for w, b in params[:-1]:
      x = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO",
                                                          "NHWC"))
      x = jax.nn.relu(x + b)
    w, b = params[-1]
    return x.reshape(x.shape[0], -1) @ w + b

  x = rs.randn(CNN_N, CNN_HW, CNN_HW, 3).astype(np.float32)
  return f, params, jnp.asarray(x)


def _fcn(seed=0):
  import jax
  import jax.numpy as jnp
  rs = np.random.RandomState(seed)
  dims = [FCN_DIM, FCN_WIDTH, FCN_WIDTH, 1]
  params = [(jnp.asarray(rs.randn(a, b).astype(np.float32) / np.sqrt(a)),
             jnp.zeros((b,), jnp.float32)) for a, b in zip(dims[:-1],
                                                           dims[1:])]

  def f(params, x):
    for i, (w, b) in enumerate(params):
      x = x @ w + b
      if i < len(params) - 1:
        x = jax.nn.relu(x)
    return x

  x = rs.randn(FCN_N, FCN_DIM).astype(np.float32)
  return f, params, jnp.asarray(x)


def _make(net, implementation):
  def make(lib):
    if implementation == 3 and lib.__name__ != "widenets":
      return None  # crashes on current JAX in neural-tangents 0.6.5
    import jax
    f, params, x = net()
    ntk_fn = jax.jit(lib.empirical_ntk_fn(
        f, vmap_axes=0, implementation=implementation))
    return lambda: ntk_fn(x, None, params)
  make.__doc__ = f"{net.__name__[1:]} NTK, implementation {implementation}"
  return make


WORKLOADS = {f"{name}_{i}": _make(net, i)
             for name, net in (("cnn", _cnn), ("fcn", _fcn))
             for i in (1, 2, 3)}


def main():
  from standalone import main as run
  run(WORKLOADS)


if __name__ == "__main__":
  main()
