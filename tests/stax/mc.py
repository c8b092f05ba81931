"""A small Monte-Carlo kernel estimator for the stax tests.

The analytic (infinite-width) kernels are checked against averages over
random initializations of the finite network:

* NNGP: ``E[f(x) f(x')^T] / C`` averaged over the ``C`` output channels and
  over initializations.
* NTK: ``sum_p df(x)/dp df(x')/dp`` (contracted over all parameters) for the
  first ``ntk_channels`` output channels, averaged over those channels and
  over initializations. The NTK of a wide network concentrates, so a few
  channels and a few dozen initializations suffice.

Both are computed on one batch ``x`` (the concatenation of ``x1`` and ``x2``
in the tests), giving every block ``K[x1, x1]``, ``K[x1, x2]`` at once.

This is deliberately independent of the library's empirical kernels, so a bug
in those cannot hide a bug in the analytic ones.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def rel_err(a, b) -> float:
  """Relative Frobenius error ``|a - b| / |b|``."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def mc_kernels(init_fn: Callable, apply_fn: Callable, x, n_samples: int = 32,
               key=None, ntk_channels: int = 1, batch_size: int = 8,
               use_rng: bool = False):
  """``(nngp, ntk)``, each ``(N, N)``, Monte-Carlo estimates over inits.

  Args:
    init_fn, apply_fn: the finite network; outputs ``(N, C)``.
    x: ``(N, ...)`` inputs.
    n_samples: number of random initializations.
    key: PRNG key (default ``PRNGKey(0)``).
    ntk_channels: output channels used for the NTK estimate.
    batch_size: initializations evaluated together (memory vs speed).
    use_rng: pass a fresh ``rng=`` to ``apply_fn`` per init (Dropout).
  """
  key = jax.random.PRNGKey(0) if key is None else key
  x = jnp.asarray(x)
  n = x.shape[0]

  def one(k):
    k_init, k_apply = jax.random.split(k)
    _, params = init_fn(k_init, x.shape)
    kw = {"rng": k_apply} if use_rng else {}
    f = lambda p: apply_fn(p, x, **kw)
    out = f(params)
    nngp = out @ out.T / out.shape[-1]
    jac = jax.jacrev(lambda p: f(p)[:, :ntk_channels])(params)
    ntk = jnp.zeros((n, n), out.dtype)
    for leaf in jax.tree_util.tree_leaves(jac):
      leaf = leaf.reshape(n, ntk_channels, -1)
      ntk = ntk + jnp.einsum("icp,jcp->ij", leaf, leaf)
    return nngp, ntk / ntk_channels

  @jax.jit
  def run(keys):
    nngp, ntk = jax.lax.map(one, keys, batch_size=batch_size)
    return nngp.mean(0), ntk.mean(0)

  return run(jax.random.split(key, n_samples))
