"""Aggregate (graph networks): Monte Carlo, dense vs sparse patterns."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from widenets import stax
from tests.stax.mc import mc_kernels, rel_err


def _graph(v=6, seed=0):
  rs = np.random.RandomState(seed)
  adj = (rs.rand(v, v) < 0.4).astype(np.float32)
  return jnp.asarray(adj)


def _net(width=256, **kw):
  return stax.serial(
      stax.Dense(width, b_std=0.1), stax.Relu(), stax.Aggregate(**kw),
      stax.Dense(width, W_std=1.2), stax.Relu(), stax.Aggregate(**kw),
      stax.GlobalAvgPool(), stax.Dense(width))


def test_graph_network_matches_monte_carlo():
  rs = np.random.RandomState(1)
  x1 = jnp.asarray(rs.randn(3, 6, 4), jnp.float32)
  x2 = jnp.asarray(rs.randn(2, 6, 4), jnp.float32)
  adj = _graph()
  init_fn, apply_fn, kernel_fn = _net()
  # One graph shared by all samples: a batch-1 pattern per forward pass.
  f = lambda p, x, **kw: apply_fn(p, x, pattern=adj[None], **kw)
  nngp, ntk = mc_kernels(init_fn, f, jnp.concatenate([x1, x2]), 16)
  tile = lambda n: jnp.broadcast_to(adj, (n,) + adj.shape)
  k = kernel_fn(x1, x2, ("nngp", "ntk"), pattern=(tile(3), tile(2)))
  assert rel_err(k.nngp, nngp[:3, 3:]) < 0.08
  assert rel_err(k.ntk, ntk[:3, 3:]) < 0.12


def test_sparse_pattern_equals_dense():
  rs = np.random.RandomState(2)
  x1 = jnp.asarray(rs.randn(3, 5, 2), jnp.float32)
  x2 = jnp.asarray(rs.randn(2, 5, 2), jnp.float32)
  edges1 = rs.randint(0, 5, (3, 7, 1, 2))
  edges1[0, -2:, 0, 1] = -1  # padding edges
  edges2 = rs.randint(0, 5, (2, 7, 1, 2))

  def to_adj(edges):
    adj = np.zeros((edges.shape[0], 5, 5), np.float32)
    for n, e in enumerate(edges):
      for t, h in e[:, 0]:
        if h >= 0:
          adj[n, t, h] += 1
    return jnp.asarray(adj)

  dense = _net(8)[2](x1, x2, ("nngp", "ntk"),
                     pattern=(to_adj(edges1), to_adj(edges2)))
  sparse = _net(8, implementation="SPARSE")[2](
      x1, x2, ("nngp", "ntk"), pattern=(jnp.asarray(edges1),
                                        jnp.asarray(edges2)))
  np.testing.assert_allclose(sparse.nngp, dense.nngp, rtol=1e-5)
  np.testing.assert_allclose(sparse.ntk, dense.ntk, rtol=1e-5)
  y_s = stax.Aggregate(implementation="SPARSE")[1]((), x1,
                                                  pattern=jnp.asarray(edges1))
  y_d = stax.Aggregate()[1]((), x1, pattern=to_adj(edges1))
  np.testing.assert_allclose(y_s, y_d, rtol=1e-6)


def test_no_pattern_is_identity():
  x = jnp.ones((2, 4, 3))
  k0 = stax.serial(stax.Dense(4), stax.Relu())[2](x, None, "nngp")
  k1 = stax.serial(stax.Dense(4), stax.Relu(), stax.Aggregate())[2](
      x, None, "nngp")
  np.testing.assert_allclose(k0, k1)


def test_sparse_pattern_shape_error():
  x = jnp.ones((2, 4, 3))
  with pytest.raises(ValueError, match="SPARSE pattern"):
    stax.Aggregate(implementation="SPARSE")[2](
        x, x, pattern=(jnp.zeros((2, 3, 1, 3), jnp.int32),) * 2)


def test_dot_general_contracts_both_positions():
  rs = np.random.RandomState(3)
  x1 = jnp.asarray(rs.randn(3, 5, 4, 2), jnp.float32)
  x2 = jnp.asarray(rs.randn(2, 5, 4, 2), jnp.float32)
  m = jnp.asarray(rs.randn(5, 6), jnp.float32)
  base = stax.serial(stax.Conv(4, (2, 2), padding="SAME"), stax.Relu())
  net = stax.serial(base, stax.DotGeneral(
      rhs=m, dimension_numbers=(((1,), (0,)), ((), ()))))
  k = base[2](x1, x2, "nngp")
  out = net[2](x1, x2, "nngp")
  # Output layout (N, Y, C, X'): the new axis of size 6 comes last.
  ref = jnp.einsum("xa,nmxzyw,zb->nmywab", m, k, m)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  shape, _ = net[0](jax.random.PRNGKey(0), x1.shape)
  assert tuple(shape) == (3, 4, 4, 6)  # (N, Y, C, new)
  k2 = stax.serial(base, stax.DotGeneral(rhs=2.0))[2](x1, None, "nngp")
  np.testing.assert_allclose(k2, 4 * base[2](x1, None, "nngp"), rtol=1e-6)
