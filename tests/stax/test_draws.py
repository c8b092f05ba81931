"""Parameter draws: the same bits as `jax.random.normal`, fewer programs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.compiles import count_compiles
from widenets import stax
from widenets.stax import draws

shapes = st.lists(st.integers(1, 40), min_size=0, max_size=4).map(tuple)


def _same(a, b):
  assert a.shape == b.shape and a.dtype == b.dtype
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@settings(max_examples=30, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31 - 1))
def test_equals_jax_random_normal_bit_for_bit(shape, seed):
  key = jax.random.PRNGKey(seed)
  _same(draws.normal(key, shape), jax.random.normal(key, shape))


@pytest.mark.parametrize("x64", [False, True])
@pytest.mark.parametrize("dtype", [None, jnp.float32, jnp.bfloat16])
def test_dtypes_and_precision(x64, dtype):
  with jax.enable_x64(x64):
    key = jax.random.PRNGKey(7)
    args = () if dtype is None else (dtype,)
    for shape in [(3, 5), (1, 512), (1500,), (2, 3, 4)]:
      _same(draws.normal(key, shape, dtype),
            jax.random.normal(key, shape, *args))


def test_typed_keys_traced_keys_and_other_modes():
  key = jax.random.key(3)
  _same(draws.normal(key, (6, 7)), jax.random.normal(key, (6, 7)))
  raw = jax.random.PRNGKey(3)
  jitted = jax.jit(lambda k: draws.normal(k, (6, 7)))(raw)
  _same(jitted, jax.random.normal(raw, (6, 7)))
  keys = jax.random.split(raw, 3)
  _same(jax.vmap(lambda k: draws.normal(k, (4,)))(keys),
        jax.vmap(lambda k: jax.random.normal(k, (4,)))(keys))
  with jax.threefry_partitionable(False):
    # A prefix of a longer draw differs here: the shortcut must not apply.
    _same(draws.normal(raw, (6, 7)), jax.random.normal(raw, (6, 7)))
  rbg = jax.random.key(3, impl="rbg")
  _same(draws.normal(rbg, (6, 7)), jax.random.normal(rbg, (6, 7)))


def test_empty_and_bad_shapes_behave_as_jax():
  key = jax.random.PRNGKey(0)
  _same(draws.normal(key, (0, 3)), jax.random.normal(key, (0, 3)))
  with pytest.raises(Exception):
    draws.normal(key, (-1, 3))


def test_a_network_init_compiles_one_draw_program():
  # Five parameter shapes (odd sizes, so no other test compiled them):
  # `jax.random.normal` at each shape compiles five programs.
  init_fn, _, _ = stax.serial(stax.Dense(37), stax.Relu(), stax.Dense(37),
                              stax.Relu(), stax.Dense(3))
  with count_compiles() as seen:
    _, params = init_fn(jax.random.PRNGKey(1), (-1, 5))
    jax.block_until_ready(params)
  assert sum("normal" in name for name in seen) <= 1, seen
  k1, _ = jax.random.split(jax.random.split(jax.random.PRNGKey(1))[1])
  _same(params[0][0], jax.random.normal(k1, (5, 37)))
