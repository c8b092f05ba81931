"""vmap_axes for networks of several inputs and outputs: a sequence of axes
fits a list or a tuple alike (stax.parallel returns its inputs' container
type: a list here, with tuple axes)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import widenets as nt
from widenets import stax

RNG = np.random.RandomState(0)


def _net(*shapes, width=4):
  layer = lambda n: stax.parallel(*(stax.Dense(n + i)
                                    for i in range(len(shapes))))
  return stax.serial(layer(width), layer(1))


@pytest.mark.parametrize("impl", [1, pytest.param(2, marks=pytest.mark.slow),
                                  pytest.param(3, marks=pytest.mark.slow)])
def test_tuple_axes_for_list_outputs(impl):
  x1 = [jnp.asarray(RNG.randn(3, 5), jnp.float32),
        jnp.asarray(RNG.randn(3, 6), jnp.float32)]
  x2 = [a[:2] * 2 for a in x1]
  init, apply, _ = _net(5, 6)
  _, params = init(jax.random.PRNGKey(0), ((-1, 5), (-1, 6)))
  assert isinstance(apply(params, x1), list)
  ref = nt.empirical_ntk_fn(apply, implementation=impl)
  fast = nt.empirical_ntk_fn(apply, implementation=impl, vmap_axes=(0, 0))
  for b in (None, x2):
    want, got = ref(x1, b, params), fast(x1, b, params)
    assert jax.tree_util.tree_structure(want) == \
        jax.tree_util.tree_structure(got)
    for w, g in zip(want, got):
      np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_nested_axes():
  x1 = ([jnp.asarray(RNG.randn(3, 2), jnp.float32),
         jnp.asarray(RNG.randn(3, 3), jnp.float32)],
        jnp.asarray(RNG.randn(3, 4), jnp.float32))
  layer = lambda n: stax.parallel(
      stax.parallel(stax.Dense(n), stax.Dense(n + 1)), stax.Dense(n + 2))
  init, apply, _ = stax.serial(layer(4), layer(1))
  _, params = init(jax.random.PRNGKey(0), jax.tree_util.tree_map(jnp.shape,
                                                                 x1))
  want = nt.empirical_ntk_fn(apply)(x1, None, params)
  got = nt.empirical_ntk_fn(apply, vmap_axes=([0, 0], 0))(x1, None, params)
  for w, g in zip(jax.tree_util.tree_leaves(want),
                  jax.tree_util.tree_leaves(got)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_axes_of_another_length_are_refused():
  x1 = (jnp.ones((3, 5)), jnp.ones((3, 6)))
  init, apply, _ = _net(5, 6)
  _, params = init(jax.random.PRNGKey(0), ((-1, 5), (-1, 6)))
  fn = nt.empirical_ntk_fn(apply, vmap_axes=((0, 0, 0), 0, {}))
  with pytest.raises(ValueError, match="vmap_axes"):
    fn(x1, None, params)
