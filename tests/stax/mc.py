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

import contextlib
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from widenets.stax import packing


def rel_err(a, b) -> float:
  """Relative Frobenius error ``|a - b| / |b|``."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def mc_kernels(init_fn: Callable, apply_fn: Callable, x, n_samples: int = 32,
               key=None, ntk_channels: int = 1,
               batch_size: Optional[int] = None, use_rng: bool = False):
  """``(nngp, ntk)``, each ``(N, N)``, Monte-Carlo estimates over inits.

  Args:
    init_fn, apply_fn: the finite network; outputs ``(N, C)``.
    x: ``(N, ...)`` inputs.
    n_samples: number of random initializations.
    key: PRNG key (default ``PRNGKey(0)``).
    ntk_channels: output channels used for the NTK estimate.
    batch_size: initializations vmapped together (``None``: a plain loop,
      which compiles fastest).
    use_rng: pass a fresh ``rng=`` to ``apply_fn`` per init (Dropout).
  """
  key = jax.random.PRNGKey(0) if key is None else key
  x = jnp.asarray(x)
  n = x.shape[0]
  keys = jax.random.split(key, n_samples)
  # Parameters are drawn eagerly: JAX caches the compiled random kernels per
  # shape, so every network with the same layer widths reuses them, and only
  # the (cheap to compile) forward pass and Jacobian are compiled per network.
  params = [init_fn(jax.random.fold_in(k, 0), x.shape)[1] for k in keys]
  params = jax.tree_util.tree_map(lambda *p: jnp.stack(p), *params)
  apply_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)

  def one(args):
    p, k_apply = args

    # Per-sample forward passes (every core layer treats samples
    # independently): Jacobians of one sample cost a batch-1 backward pass,
    # not a batch-N one. Dropout masks are per sample via fold_in.
    def f(q, xi, i):
      kw = {"rng": jax.random.fold_in(k_apply, i)} if use_rng else {}
      return apply_fn(q, xi[None], **kw)[0]

    def sample(xi, i):
      out = f(p, xi, i)
      jac = jax.jacrev(lambda q: f(q, xi, i)[..., :ntk_channels])(p)
      jac = jnp.concatenate([l.reshape(ntk_channels, -1) for l in
                             jax.tree_util.tree_leaves(jac)], axis=1)
      return out, jac

    out, jac = jax.vmap(sample)(x, jnp.arange(n))
    out = out.reshape(n, -1)
    nngp = out @ out.T / out.shape[-1]
    ntk = jnp.einsum("icp,jcp->ij", jac, jac) / ntk_channels
    return nngp, ntk

  @jax.jit
  def run(params, apply_keys):
    nngp, ntk = jax.lax.map(one, (params, apply_keys), batch_size=batch_size)
    return nngp.mean(0), ntk.mean(0)

  return run(params, apply_keys)


def inputs(n1: int = 6, n2: int = 4, shape=(8,), seed: int = 1):
  """Two different batches ``(n1,) + shape`` and ``(n2,) + shape``.

  ``x2`` is correlated with ``x1`` (``0.7 x1[:n2] + 0.7 noise``), so the
  cross block ``K(x1, x2)`` has entries of the size of the diagonal ones and
  its relative error is meaningful (independent inputs give a near-zero
  cross block for odd activations).
  """
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  x1 = jax.random.normal(k1, (n1,) + tuple(shape))
  noise = jax.random.normal(k2, (n2,) + tuple(shape))
  reps = -(-n2 // n1)
  x2 = 0.7 * jnp.concatenate([x1] * reps)[:n2] + 0.7 * noise
  return x1, x2


@contextlib.contextmanager
def packed_x2_none():
  """x2=None calls inside run packed, however small (by default small ones
  run on the whole grid: `packing.MIN_PACKED_BYTES`)."""
  old = packing.MIN_PACKED_BYTES
  packing.MIN_PACKED_BYTES = 0
  try:
    yield
  finally:
    packing.MIN_PACKED_BYTES = old


def check_against_mc(net, x1, x2, n_samples: int = 32, tol: float = 0.05,
                     ntk_tol: Optional[float] = None, use_rng: bool = False,
                     ntk: bool = True, **kernel_kwargs):
  """Asserts the analytic kernels of ``net`` match Monte Carlo.

  Checks ``kernel_fn(x1, None)`` (packed: `packed_x2_none`) against the
  ``x1 x1`` block and ``kernel_fn(x1, x2)`` against the ``x1 x2`` block of
  one Monte-Carlo estimate on ``concat(x1, x2)``, for the NNGP and (if ``ntk``) the NTK.
  Returns the relative errors (for debugging).
  """
  init_fn, apply_fn, kernel_fn = net
  n1 = x1.shape[0]
  mc_nngp, mc_ntk = mc_kernels(init_fn, apply_fn,
                               jnp.concatenate([x1, x2]), n_samples,
                               use_rng=use_rng)
  get = ("nngp", "ntk") if ntk else ("nngp",)
  with packed_x2_none():
    k11 = kernel_fn(x1, None, get, **kernel_kwargs)
  k12 = kernel_fn(x1, x2, get, **kernel_kwargs)
  errs = {
      "nngp_11": rel_err(k11.nngp, mc_nngp[:n1, :n1]),
      "nngp_12": rel_err(k12.nngp, mc_nngp[:n1, n1:]),
  }
  if ntk:
    errs["ntk_11"] = rel_err(k11.ntk, mc_ntk[:n1, :n1])
    errs["ntk_12"] = rel_err(k12.ntk, mc_ntk[:n1, n1:])
  ntk_tol = tol if ntk_tol is None else ntk_tol
  bad = {k: v for k, v in errs.items()
         if v > (ntk_tol if k.startswith("ntk") else tol)}
  assert not bad, f"analytic vs Monte Carlo relative errors too large: {errs}"
  return errs
