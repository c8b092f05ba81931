"""`monte_carlo_kernel_fn`: agreement with the analytic kernel of a wide
network, exactness of the sample mean, generators and errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import widenets as nt
from widenets import stax


def _rel(a, b):
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.fixture(scope="module")
def data():
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  return jax.random.normal(k1, (6, 4)), jax.random.normal(k2, (3, 4))


@pytest.mark.parametrize("same", [True, False])
def test_mc_matches_analytic_dense_erf(data, same):
  x1, x2 = data
  x2 = None if same else x2
  # Wide hidden and output layers: the output channels average the NNGP.
  init_fn, apply_fn, kernel_fn = stax.serial(
      stax.Dense(512, W_std=1.5, b_std=0.1), stax.Erf(),
      stax.Dense(128, W_std=1.2, b_std=0.1))
  # Structured derivatives: the NTK of 128 logits without forming J.
  mc = nt.monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(1), 64,
                                vmap_axes=0, implementation=3)
  est = mc(x1, x2, ("nngp", "ntk"))
  exact = kernel_fn(x1, x2, ("nngp", "ntk"))
  assert est.nngp.shape == exact.nngp.shape
  assert _rel(est.nngp, exact.nngp) < 0.05
  assert _rel(est.ntk, exact.ntk) < 0.05


def test_mc_equals_mean_of_empirical_kernels(data):
  x1, x2 = data
  init_fn, apply_fn, _ = stax.serial(stax.Dense(16), stax.Erf(),
                                     stax.Dense(3))
  key = jax.random.PRNGKey(3)
  n = 5
  est = nt.monte_carlo_kernel_fn(init_fn, apply_fn, key, n,
                                 trace_axes=())(x1, x2)
  emp = nt.empirical_kernel_fn(apply_fn, trace_axes=())
  # neural-tangents' key order: key, k_s = split(key) per sample.
  total = None
  for _ in range(n):
    key, k = jax.random.split(key)
    init_key, drop_key = jax.random.split(k)
    _, params = init_fn(init_key, x1.shape)
    one = emp(x1, x2, None, params, rng=drop_key)
    total = one if total is None else jax.tree_util.tree_map(jnp.add, total,
                                                             one)
  np.testing.assert_allclose(est.nngp, total.nngp / n, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(est.ntk, total.ntk / n, rtol=1e-4, atol=1e-5)
  assert type(est).__name__ == "EmpiricalKernel"
  assert est.ntk.shape == (6, 3, 3, 3)


# neural-tangents 0.6.5's estimate for the network and keys of
# `test_mc_is_the_estimate_neural_tangents_draws`, under JAX's old
# (partitionable=False) and new default random streams: (nngp, ntk), both
# 3x2, recorded by running neural-tangents 0.6.5 (JAX 0.4.26).
_NT_ESTIMATES = {
    False: ([[-0.523529, 4.343049], [1.0334847, 0.22493058],
             [0.90904444, 1.6475595]],
            [[0.3006591, 1.4705936], [2.4745452, 0.24346559],
             [4.2302737, 1.007829]]),
    True: ([[-0.2771316, -0.01809692], [-0.2612117, 0.0194414],
            [-0.18204486, 0.00287331]],
           [[0.40018788, 1.1600662], [0.99520224, 0.79120564],
            [0.43613243, 0.9283721]]),
}


@pytest.mark.skipif(jax.config.jax_enable_x64,
                    reason="the recorded draws are float32 draws")
@pytest.mark.parametrize("partitionable", [False, True])
def test_mc_is_the_estimate_neural_tangents_draws(partitionable):
  # Same key, same stream -> the same sampled networks as neural-tangents,
  # so the same estimate to float32 round-off (not only in distribution).
  with jax.threefry_partitionable(partitionable):
    x1 = jax.random.normal(jax.random.PRNGKey(1), (3, 5))
    x2 = jax.random.normal(jax.random.PRNGKey(2), (2, 5))
    init_fn, apply_fn, _ = stax.serial(stax.Dense(16), stax.Relu(),
                                       stax.Dense(2, 2., 0.5))
    mc = nt.monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(3), 3,
                                  vmap_axes=0)
    nngp, ntk = mc(x1, x2, ("nngp", "ntk"))
  want_nngp, want_ntk = _NT_ESTIMATES[partitionable]
  np.testing.assert_allclose(nngp, want_nngp, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ntk, want_ntk, rtol=1e-5, atol=1e-6)


# neural-tangents 0.6.5's parameters (JAX 0.4.26, its default old stream) for
# `init_fn(PRNGKey(0), (-1, 4))` of the network below: the first four entries
# of the first Dense's W and the first three of the last Dense's W.
_NT_INIT = ([1.0658787, -0.23089151, 1.3371083, 0.02989214],
            [-0.37244782, -1.2998707, 0.87299186])


@pytest.mark.skipif(jax.config.jax_enable_x64,
                    reason="the recorded draws are float32 draws")
def test_init_fn_draws_neural_tangents_parameters_on_its_stream():
  # widenets draws on the program's stream: under the old one (set by the
  # program, as docs/migration.md says) the parameters are neural-tangents'
  # exactly; under the new one they are another draw.
  init_fn = stax.serial(stax.Dense(3, 1.5, 0.1), stax.Relu(), stax.Dense(2))[0]
  with jax.threefry_partitionable(False):
    _, old = init_fn(jax.random.PRNGKey(0), (-1, 4))
  with jax.threefry_partitionable(True):
    _, new = init_fn(jax.random.PRNGKey(0), (-1, 4))
  got = (np.ravel(old[0][0])[:4], np.ravel(old[2][0])[:3])
  for g, want in zip(got, _NT_INIT):
    np.testing.assert_allclose(g, want, rtol=1e-6)
  assert not np.allclose(np.ravel(new[0][0])[:4], _NT_INIT[0])


def test_mc_generator_and_batch_size(data):
  x1, _ = data
  init_fn, apply_fn, _ = stax.serial(stax.Dense(8), stax.Erf(),
                                     stax.Dense(2))
  key = jax.random.PRNGKey(5)
  gen = nt.monte_carlo_kernel_fn(init_fn, apply_fn, key, [3, 1, 7])(
      x1, None, "ntk")
  ests = list(gen)
  assert len(ests) == 3
  for n, e in zip([1, 7], [ests[0], ests[2]]):
    ref = nt.monte_carlo_kernel_fn(init_fn, apply_fn, key, n)(x1, None, "ntk")
    np.testing.assert_allclose(e, ref, rtol=1e-5, atol=1e-6)
  blocked = nt.monte_carlo_kernel_fn(init_fn, apply_fn, key, 7, batch_size=3)
  np.testing.assert_allclose(blocked(x1, None, "ntk"), ests[-1], rtol=1e-5,
                             atol=1e-6)
  got = nt.monte_carlo_kernel_fn(init_fn, apply_fn, key, 2)(x1, None,
                                                            ("ntk",))
  assert type(got).__name__ == "MonteCarloKernel" and got._fields == ("ntk",)


def test_mc_nngp_only_needs_no_jacobian(data):
  x1, _ = data
  init_fn, apply_fn, _ = stax.serial(stax.Dense(8), stax.Erf(),
                                     stax.Dense(2))

  def apply_no_grad(params, x, **kw):
    # Differentiating this would fail: the nngp path must never try.
    return jax.lax.stop_gradient(apply_fn(params, x, **kw)) + jax.pure_callback(
        lambda: np.zeros((), np.float32), jax.ShapeDtypeStruct((), jnp.float32))
  mc = nt.monte_carlo_kernel_fn(init_fn, apply_no_grad, jax.random.PRNGKey(0),
                                4)
  assert mc(x1, None, "nngp").shape == (6, 6)


@pytest.mark.parametrize("bad", [0, -1, [2, 0], "3", 2.5])
def test_mc_bad_n_samples(bad):
  init_fn, apply_fn, _ = stax.serial(stax.Dense(8))
  with pytest.raises((ValueError, TypeError), match="n_samples"):
    nt.monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(0), bad)


def test_mc_bad_batch_size(data):
  x1, _ = data
  init_fn, apply_fn, _ = stax.serial(stax.Dense(8))
  mc = nt.monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(0), 2,
                                batch_size=4)
  with pytest.raises(ValueError, match="batch_size"):
    mc(x1, None, "nngp")


def test_mc_all_implementations_agree(data):
  x1, x2 = data
  init_fn, apply_fn, _ = stax.serial(stax.Dense(16, b_std=0.1), stax.Erf(),
                                     stax.Dense(3))
  ests = [nt.monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(1),
                                   4, vmap_axes=0, implementation=i)(
                                       x1, x2, "ntk") for i in (1, 2, 3, 0)]
  for e in ests[1:]:
    np.testing.assert_allclose(e, ests[0], rtol=1e-4, atol=1e-5)


def _tiny_net():
  return stax.serial(stax.Dense(16), stax.Relu(), stax.Dense(2))


@pytest.mark.parametrize("kwargs", [dict(device_count=0),
                                    dict(device_count=1)])
def test_single_device_counts_work_silently(data, kwargs, recwarn):
  x1, _ = data
  init_fn, apply_fn, _ = _tiny_net()
  key = jax.random.PRNGKey(3)
  ref = nt.monte_carlo_kernel_fn(init_fn, apply_fn, key, 4)(x1, None, "nngp")
  got = nt.monte_carlo_kernel_fn(init_fn, apply_fn, key, 4, **kwargs)(
      x1, None, "nngp")
  np.testing.assert_array_equal(got, ref)
  assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


@pytest.mark.parametrize("kwargs, name", [
    (dict(device_count=2), "device_count"),
    (dict(store_on_device=False), "store_on_device")])
def test_unused_compat_arguments_warn(data, kwargs, name):
  x1, _ = data
  init_fn, apply_fn, _ = _tiny_net()
  key = jax.random.PRNGKey(3)
  ref = nt.monte_carlo_kernel_fn(init_fn, apply_fn, key, 4)(x1, None, "nngp")
  with pytest.warns(UserWarning, match=name):
    mc = nt.monte_carlo_kernel_fn(init_fn, apply_fn, key, 4, **kwargs)
  np.testing.assert_array_equal(mc(x1, None, "nngp"), ref)
