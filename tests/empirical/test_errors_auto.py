"""Clear errors on bad input; AUTO picks a method, says which, and agrees."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import widenets as nt

from .models import MODELS, inputs, reference_ntk

F, PARAMS, S1, S2 = MODELS["fc"]()
X1, X2 = inputs(S1, 0), inputs(S2, 1)


@pytest.mark.parametrize("bad", [7, -1, "jacobian", 1.5, None])
def test_bad_implementation(bad):
  with pytest.raises(ValueError, match="implementation"):
    nt.empirical_ntk_fn(F, implementation=bad)
  with pytest.raises(ValueError, match="implementation"):
    nt.empirical_kernel_fn(F, implementation=bad)


@pytest.mark.parametrize("impl", [1, 2, 3])
@pytest.mark.parametrize("vmap_axes, match", [
    ((0, 1, {}), "same size"),
    (5, "invalid"),
    ({"a": 0}, "vmap_axes"),
    ((0, 0, {"pattern": 0}), "pattern"),
    ((0, None, {}), "both None"),
])
def test_bad_vmap_axes(impl, vmap_axes, match):
  fn = nt.empirical_ntk_fn(F, vmap_axes=vmap_axes, implementation=impl)
  with pytest.raises(ValueError, match=match):
    fn(X1, X2, PARAMS)


@pytest.mark.parametrize("impl", [0, 1, 2, 3])
def test_params_not_matching_f(impl):
  bad = dict(PARAMS, w1=jnp.ones((5, 8)))
  with pytest.raises(ValueError, match="params"):
    nt.empirical_ntk_fn(F, implementation=impl)(X1, X2, bad)
  with pytest.raises(ValueError, match="params"):
    nt.empirical_nngp_fn(F)(X1, X2, {"w1": PARAMS["w1"]})


def test_trace_axes_out_of_range_and_mismatch():
  with pytest.raises(ValueError, match="trace_axes"):
    nt.empirical_ntk_fn(F, trace_axes=(3,))(X1, None, PARAMS)
  with pytest.raises(ValueError, match="diagonal_axes"):
    nt.empirical_ntk_fn(F, trace_axes=(), diagonal_axes=(0,))(X1, X2, PARAMS)


def test_auto_picks_reports_and_agrees():
  fn = nt.empirical_ntk_fn(F, vmap_axes=0, implementation=0)
  got = fn(X1, X2, PARAMS)
  assert fn.choice in (1, 2, 3)
  assert fn.method_for(X1, X2, PARAMS) == fn.choice
  kernel_fn = nt.empirical_kernel_fn(F, vmap_axes=0, implementation=0)
  assert kernel_fn.ntk_fn.method_for(X1, X2, PARAMS) == fn.choice
  (costs,) = fn.costs.values()
  assert set(costs) == {1, 2, 3} and min(costs, key=costs.get) == fn.choice
  np.testing.assert_allclose(got, reference_ntk(F, PARAMS, X1, X2, (-1,), ()),
                             rtol=1e-4, atol=1e-4)
  # Shapes seen before reuse the choice (no new estimates).
  fn(X1, X2, PARAMS)
  assert len(fn.costs) == 1
