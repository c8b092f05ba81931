"""Empirical kernels: NaN in inputs or parameters is an error, not NaN."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import widenets as nt
from widenets import stax


@pytest.fixture(scope="module")
def net():
  init_fn, apply_fn, _ = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(1))
  _, params = init_fn(jax.random.PRNGKey(0), (-1, 3))
  x = np.random.RandomState(0).randn(4, 3).astype(np.float32)
  return apply_fn, params, x


def _nan_at(x):
  x = x.copy()
  x[1, 1] = np.nan
  return x


@pytest.mark.parametrize("implementation", [1, 2, 3])
def test_nan_in_x1_or_x2(net, implementation):
  apply_fn, params, x = net
  ntk_fn = nt.empirical_ntk_fn(apply_fn, implementation=implementation)
  with pytest.raises(ValueError, match=r"empirical_ntk_fn: `x1` .* NaN"):
    ntk_fn(_nan_at(x), None, params)
  with pytest.raises(ValueError, match=r"empirical_ntk_fn: `x2` .* NaN"):
    ntk_fn(x, _nan_at(x), params)


def test_nan_in_params(net):
  apply_fn, params, x = net
  bad = jax.tree_util.tree_map(lambda a: a.at[0].set(jnp.inf), params)
  with pytest.raises(ValueError, match=r"empirical_ntk_fn: `params` .* NaN "
                     r"or infinite"):
    nt.empirical_ntk_fn(apply_fn)(x, None, bad)
  with pytest.raises(ValueError, match=r"empirical_nngp_fn: `params`"):
    nt.empirical_nngp_fn(apply_fn)(x, None, bad)


def test_empirical_kernel_fn_checks_too(net):
  apply_fn, params, x = net
  kernel_fn = nt.empirical_kernel_fn(apply_fn)
  with pytest.raises(ValueError, match=r"`x1` .* NaN"):
    kernel_fn(_nan_at(x), None, "ntk", params)


def test_finite_inputs_unchanged_and_jit_skips_check(net):
  apply_fn, params, x = net
  ntk_fn = nt.empirical_ntk_fn(apply_fn)
  k = ntk_fn(x, None, params)
  assert k.shape == (4, 4) and bool(jnp.all(jnp.isfinite(k)))
  np.testing.assert_allclose(jax.jit(ntk_fn)(x, None, params), k, rtol=1e-5)
  # Under jit nothing concrete is checked: the NaN comes back as NaN.
  assert bool(jnp.isnan(jax.jit(ntk_fn)(_nan_at(x), None, params)).any())
