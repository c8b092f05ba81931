"""Empirical NTKs of Flax (linen, nnx) and Equinox models: every method
agrees with the explicit Jacobian contraction. Test-only extras: skipped when
the libraries are not installed."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import widenets as nt
from widenets.empirical.structured_rules import StructureWarning

from .models import reference_ntk

X1 = jax.random.normal(jax.random.PRNGKey(0), (3, 6, 6, 2))
X2 = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 6, 2))


def _check(f, params, x1, x2):
  ref = reference_ntk(f, params, x1, x2, (-1,), ())
  for impl in (1, 2, 3):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", StructureWarning)
      got = jax.jit(nt.empirical_ntk_fn(f, vmap_axes=0, implementation=impl))(
          x1, x2, params)
    np.testing.assert_allclose(got, ref, rtol=2e-4, atol=2e-4 * np.abs(
        ref).max())


def test_flax_linen_cnn():
  nn = pytest.importorskip("flax.linen")

  class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Conv(4, (3, 3))(x))
      x = nn.avg_pool(x, (2, 2), (2, 2))
      x = nn.LayerNorm()(x.reshape(x.shape[0], -1))
      return nn.Dense(3)(nn.gelu(nn.Dense(5)(x)))

  model = CNN()
  params = model.init(jax.random.PRNGKey(2), X1)
  _check(model.apply, params, X1, X2)


def test_flax_nnx_mlp():
  nnx = pytest.importorskip("flax.nnx")

  class MLP(nnx.Module):
    def __init__(self, rngs):
      self.l1 = nnx.Linear(72, 8, rngs=rngs)
      self.l2 = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
      return self.l2(jnp.tanh(self.l1(x.reshape(x.shape[0], -1))))

  graphdef, state = nnx.split(MLP(nnx.Rngs(3)))

  def f(state, x):
    return nnx.merge(graphdef, state)(x)

  _check(f, state, X1, X2)


def test_equinox_mlp():
  eqx = pytest.importorskip("equinox")
  model = eqx.nn.MLP(72, 2, 8, 2, key=jax.random.PRNGKey(4))
  params, static = eqx.partition(model, eqx.is_array)

  def f(params, x):
    return jax.vmap(eqx.combine(params, static))(x.reshape(x.shape[0], -1))

  _check(f, params, X1, X2)
