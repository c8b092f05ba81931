"""neural-tangents' `_fwd` flag: accepted, has no effect, and says so."""
import warnings

import jax
import numpy as np
import pytest

import widenets as nt
from widenets import stax


def _net():
  init_fn, apply_fn, _ = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(2))
  _, params = init_fn(jax.random.PRNGKey(0), (-1, 3))
  return apply_fn, params


@pytest.mark.parametrize("implementation", [1, 3, 0])
def test_fwd_set_warns_and_changes_nothing(implementation):
  apply_fn, params = _net()
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
  with warnings.catch_warnings():
    warnings.simplefilter("error", UserWarning)
    ref = nt.empirical_ntk_fn(apply_fn, implementation=implementation)(
        x, None, params)
  for fwd in (True, False):
    with pytest.warns(UserWarning, match="_fwd"):
      fn = nt.empirical_ntk_fn(apply_fn, implementation=implementation,
                               _fwd=fwd)
    np.testing.assert_allclose(fn(x, None, params), ref, rtol=1e-6)


def test_fwd_warns_through_kernel_fn():
  apply_fn, _ = _net()
  with pytest.warns(UserWarning, match="_fwd"):
    nt.empirical_kernel_fn(apply_fn, _fwd=True)
