"""`linearize`/`taylor_expand` against the exact Taylor series of a
polynomial; `empirical_ntk_vp_fn` against the materialized NTK."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import widenets as nt

from .models import MODELS, inputs


def _poly(p, x):
  # Degree 3 in p, PyTree params and outputs.
  return (x * p["u"]**3, {"s": jnp.sum(p["v"]**2) * x})


P0 = {"u": jnp.array([0.5, -1.0, 2.0]), "v": jnp.array([1.0, 0.3, -0.2])}
D = {"u": jnp.array([0.1, 0.4, -0.3]), "v": jnp.array([-0.5, 0.2, 0.7])}
X = jnp.array([1.0, 2.0, -1.5])


def _exact(degree):
  u0, du, v0, dv = P0["u"], D["u"], P0["v"], D["v"]
  a = [u0**3, 3 * u0**2 * du, 3 * u0 * du**2, du**3]
  b = [jnp.sum(v0**2), 2 * jnp.sum(v0 * dv), jnp.sum(dv**2), 0.]
  return (X * sum(a[:degree + 1]), {"s": sum(b[:degree + 1]) * X})


@pytest.mark.parametrize("degree", [0, 1, 2, 3, 4])
def test_taylor_expand_polynomial(degree):
  p = jax.tree_util.tree_map(jnp.add, P0, D)
  got = nt.taylor_expand(_poly, P0, degree)(p, X)
  want = _exact(min(degree, 3))
  for g, w in zip(jax.tree_util.tree_leaves(got),
                  jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_linearize_is_degree_one():
  p = jax.tree_util.tree_map(jnp.add, P0, D)
  got = nt.linearize(_poly, P0)(p, X)
  for g, w in zip(jax.tree_util.tree_leaves(got),
                  jax.tree_util.tree_leaves(_exact(1))):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
  # At the expansion point both equal f.
  for g, w in zip(jax.tree_util.tree_leaves(nt.linearize(_poly, P0)(P0, X)),
                  jax.tree_util.tree_leaves(_poly(P0, X))):
    np.testing.assert_allclose(g, w, rtol=1e-6)


def test_taylor_bad_degree():
  with pytest.raises(ValueError, match="degree"):
    nt.taylor_expand(_poly, P0, -1)


@pytest.mark.parametrize("same", [True, False])
def test_ntk_vp_matches_materialized(same):
  f, params, s1, s2 = MODELS["fc"]()
  x1 = inputs(s1, 0)
  x2 = x1 if same else inputs(s2, 1)
  theta = nt.empirical_ntk_fn(f, trace_axes=())(x1, None if same else x2,
                                                params)
  v = jax.random.normal(jax.random.PRNGKey(9), f(params, x2).shape)
  vp = nt.empirical_ntk_vp_fn(f, x1, None if same else x2, params)(v)
  np.testing.assert_allclose(vp, jnp.einsum("ijab,jb->ia", theta, v),
                             rtol=1e-4, atol=1e-4)
