"""serial / parallel / repeat, FanOut and the fan-ins, Identity, Flatten,
Dropout: exact identities and Monte Carlo."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from widenets import stax

from .mc import check_against_mc, inputs

GET = ("nngp", "ntk", "cov1", "cov2")


def _assert_kernels_close(a, b, rtol=1e-6, atol=1e-7):
  for name in GET:
    u, v = getattr(a, name), getattr(b, name)
    if u is None or v is None:
      assert u is None and v is None, name
      continue
    np.testing.assert_allclose(u, v, rtol=rtol, atol=atol, err_msg=name)


# --- repeat ------------------------------------------------------------------

def test_repeat_equals_serial():
  block = stax.serial(stax.Dense(16, W_std=1.4, b_std=0.1), stax.Relu())
  n = 4
  init_r, apply_r, kernel_r = stax.repeat(block, n)
  init_s, apply_s, kernel_s = stax.serial(*[block] * n)
  x1, x2 = inputs(shape=(16,))
  for a, b in ((x1, x2), (x1, None)):
    _assert_kernels_close(kernel_r(a, b), kernel_s(a, b), rtol=2e-6)
  # Parameters: stacked along a new leading axis (neural-tangents' layout);
  # unstacked, they drive serial to the same outputs.
  out_shape, params = init_r(jax.random.PRNGKey(0), x1.shape)
  assert out_shape == x1.shape
  W = params[0][0]
  assert W.shape == (n, 16, 16)
  unstacked = tuple(jax.tree_util.tree_map(lambda p: p[i], params)
                    for i in range(n))
  np.testing.assert_allclose(apply_r(params, x1), apply_s(unstacked, x1),
                             rtol=1e-5, atol=1e-6)


def test_repeat_zero_and_one():
  layer = stax.serial(stax.Dense(8, b_std=0.2), stax.Erf())
  x1, x2 = inputs(shape=(8,))
  _assert_kernels_close(stax.repeat(layer, 1)[2](x1, x2), layer[2](x1, x2))
  k0 = stax.repeat(layer, 0)[2](x1, x2)
  k_in = stax.Identity()[2](x1, x2)
  _assert_kernels_close(k0, k_in)


# --- Identity, serial and chaining ------------------------------------------

def test_identity_changes_nothing():
  x1, x2 = inputs()
  base = [stax.Dense(4, W_std=1.2, b_std=0.3), stax.Relu(), stax.Dense(2)]
  with_id = [stax.Identity(), base[0], stax.Identity(), base[1], base[2],
             stax.Identity()]
  _assert_kernels_close(stax.serial(*with_id)[2](x1, x2),
                        stax.serial(*base)[2](x1, x2))
  init_fn, apply_fn, _ = stax.Identity()
  assert init_fn(None, (3, 5)) == ((3, 5), ())
  np.testing.assert_array_equal(apply_fn((), x1), x1)


def test_nested_serial_equals_flat():
  x1, x2 = inputs()
  a, b, c = stax.Dense(3, b_std=0.1), stax.Erf(), stax.Dense(2, W_std=2.)
  _assert_kernels_close(stax.serial(stax.serial(a, b), c)[2](x1, x2),
                        stax.serial(a, b, c)[2](x1, x2))


# --- residual blocks, parallel, fan-ins ---------------------------------------

def _residual(width):
  branch = stax.serial(stax.Relu(), stax.Dense(width, W_std=1.3, b_std=0.1))
  return stax.serial(stax.FanOut(2), stax.parallel(branch, stax.Identity()),
                     stax.FanInSum())


def test_residual_kernel_is_sum_of_branches():
  x1, x2 = inputs()
  first = stax.Dense(8, W_std=1.2, b_std=0.1)
  k_in = first[2](x1, x2)
  k_branch = stax.serial(first, stax.Relu(),
                         stax.Dense(8, W_std=1.3, b_std=0.1))[2](x1, x2)
  k = stax.serial(first, _residual(8))[2](x1, x2)
  for name in GET:
    np.testing.assert_allclose(getattr(k, name), getattr(k_in, name) +
                               getattr(k_branch, name), rtol=1e-6)


def test_residual_network_matches_monte_carlo():
  net = stax.serial(stax.Dense(512, W_std=1.2, b_std=0.1), _residual(512),
                    _residual(512), stax.Relu(), stax.Dense(512))
  x1, x2 = inputs()
  check_against_mc(net, x1, x2, n_samples=32)


def test_parallel_concat_matches_monte_carlo():
  net = stax.serial(
      stax.Dense(512, W_std=1.5, b_std=0.1), stax.FanOut(2),
      stax.parallel(stax.serial(stax.Erf(), stax.Dense(512, b_std=0.2)),
                    stax.serial(stax.Relu(), stax.Dense(256, W_std=1.5))),
      stax.FanInConcat(), stax.Dense(512, W_std=1.2))
  x1, x2 = inputs()
  check_against_mc(net, x1, x2, n_samples=32)


def test_fan_in_prod_matches_monte_carlo():
  net = stax.serial(
      stax.Dense(512, W_std=1.2, b_std=0.3), stax.FanOut(2),
      stax.parallel(stax.serial(stax.Erf(), stax.Dense(512, b_std=0.5)),
                    stax.serial(stax.Relu(), stax.Dense(512, W_std=1.5,
                                                        b_std=0.2))),
      stax.FanInProd(), stax.Dense(512))
  x1, x2 = inputs()
  check_against_mc(net, x1, x2, n_samples=32)


def test_fan_in_concat_channel_is_width_weighted_mean():
  x1, x2 = inputs()
  a = stax.Dense(3, W_std=1.0)
  b = stax.serial(stax.Dense(5, W_std=2.0, b_std=0.5), stax.Erf())
  ka, kb = a[2](x1, x2), b[2](x1, x2)
  k = stax.serial(stax.FanOut(2), stax.parallel(a, b),
                  stax.FanInConcat())[2](x1, x2)
  for name in GET:
    np.testing.assert_allclose(
        getattr(k, name), (3 * getattr(ka, name) + 5 * getattr(kb, name)) / 8,
        rtol=1e-6)
  assert k.shape1 == (6, 8) and not k.is_gaussian


@pytest.mark.parametrize("diagonal_spatial", [False, True])
def test_fan_in_concat_spatial(diagonal_spatial):
  # Concatenating independent Gaussian branches along space: each branch's
  # covariance on its own block, zero across branches.
  x1, x2 = inputs(shape=(3, 4))
  a = stax.Dense(2, W_std=1.0, b_std=0.1)
  b = stax.Dense(2, W_std=2.0)
  kw = dict(diagonal_spatial=diagonal_spatial)
  ka, kb = a[2](x1, x2, **kw), b[2](x1, x2, **kw)
  k = stax.serial(stax.FanOut(2), stax.parallel(a, b),
                  stax.FanInConcat(axis=1))[2](x1, x2, **kw)
  assert k.shape1 == (6, 6, 2)
  if diagonal_spatial:
    np.testing.assert_allclose(k.nngp, np.concatenate([ka.nngp, kb.nngp], 2))
  else:
    assert k.nngp.shape == (6, 4, 6, 6)
    np.testing.assert_allclose(k.nngp[..., :3, :3], ka.nngp)
    np.testing.assert_allclose(k.nngp[..., 3:, 3:], kb.nngp)
    np.testing.assert_array_equal(k.nngp[..., :3, 3:], 0)
    np.testing.assert_allclose(k.cov1[:, 3:, 3:], kb.cov1)


@pytest.mark.slow
def test_fan_in_concat_spatial_then_flatten_matches_monte_carlo():
  net = stax.serial(
      stax.FanOut(2),
      stax.parallel(stax.serial(stax.Dense(512, b_std=0.1), stax.Relu(),
                                stax.Dense(512)),
                    stax.Dense(512, W_std=1.5)),
      stax.FanInConcat(axis=1), stax.Relu(), stax.Flatten(), stax.Dense(512))
  x1, x2 = inputs(shape=(2, 4))
  check_against_mc(net, x1, x2, n_samples=32)


def test_parallel_on_list_inputs():
  (x1, x2), (y1, y2) = inputs(), inputs(shape=(5,), seed=3)
  a = stax.serial(stax.Dense(3, b_std=0.2), stax.Relu())
  b = stax.Dense(3, W_std=2.0)
  ks = stax.parallel(a, b)[2]([x1, y1], [x2, y2])
  assert isinstance(ks, list) and len(ks) == 2
  _assert_kernels_close(ks[0], a[2](x1, x2))
  _assert_kernels_close(ks[1], b[2](y1, y2))
  init_fn, apply_fn, _ = stax.parallel(a, b)
  shapes, params = init_fn(jax.random.PRNGKey(0), [x1.shape, y1.shape])
  assert [tuple(s) for s in shapes] == [(6, 3), (6, 3)]
  outs = apply_fn(params, [x1, y1])
  assert outs[0].shape == outs[1].shape == (6, 3)


def test_fan_out_then_single_branch_parallel():
  x1, x2 = inputs()
  net = stax.Dense(3, b_std=0.1)
  ks = stax.serial(stax.FanOut(1), stax.parallel(net))[2](x1, x2)
  _assert_kernels_close(ks[0], net[2](x1, x2))


# --- Flatten -----------------------------------------------------------------

def test_flatten_defaults_to_diagonal_spatial_and_agrees_with_full():
  net = stax.serial(stax.Dense(4, b_std=0.1), stax.Relu(), stax.Flatten(),
                    stax.Dense(2))
  x1, x2 = inputs(shape=(3, 2, 5))
  assert net[2].reqs.default_diagonal_spatial
  k_default = net[2](x1, x2)
  k_full = net[2](x1, x2, diagonal_spatial=False)
  _assert_kernels_close(k_default, k_full, rtol=1e-5, atol=1e-6)
  assert k_default.nngp.shape == (6, 4)
  init_fn, apply_fn, _ = stax.Flatten()
  out_shape, _ = init_fn(None, (6, 3, 2, 5))
  assert out_shape == (6, 30)
  np.testing.assert_array_equal(apply_fn((), x1), x1.reshape(6, 30))


def test_flatten_matches_monte_carlo():
  net = stax.serial(stax.Dense(512, W_std=1.3, b_std=0.2), stax.Erf(),
                    stax.Dense(512, W_std=1.1), stax.Relu(), stax.Flatten(),
                    stax.Dense(512))
  x1, x2 = inputs(shape=(3, 4))
  check_against_mc(net, x1, x2, n_samples=32)


# --- Dropout -----------------------------------------------------------------

def test_dropout_test_mode_is_identity():
  x1, x2 = inputs()
  base = [stax.Dense(4, b_std=0.1), stax.Relu()]
  _assert_kernels_close(
      stax.serial(*base, stax.Dropout(0.3, mode="test"), stax.Dense(2))[2](
          x1, x2),
      stax.serial(*base, stax.Dense(2))[2](x1, x2))
  _, apply_fn, _ = stax.Dropout(0.3, mode="test")
  np.testing.assert_array_equal(apply_fn((), x1, rng=jax.random.PRNGKey(0)),
                                x1)


def test_dropout_train_inflates_only_same_input_entries():
  x1, x2 = inputs()
  base = stax.serial(stax.Dense(4, b_std=0.1), stax.Relu())
  rate = 0.6
  drop = stax.serial(base, stax.Dropout(rate))
  k0 = base[2](x1, None)
  k = drop[2](x1, None)
  eye = np.eye(6, dtype=bool)
  np.testing.assert_allclose(np.diag(k.nngp), np.diag(k0.nngp) / rate,
                             rtol=1e-6)
  np.testing.assert_allclose(k.nngp[~eye], k0.nngp[~eye], rtol=1e-6)
  np.testing.assert_allclose(k.cov1, k0.cov1 / rate, rtol=1e-6)
  # Different inputs: independent masks, no inflation of nngp.
  k12, k12_0 = drop[2](x1, x2), base[2](x1, x2)
  np.testing.assert_allclose(k12.nngp, k12_0.nngp, rtol=1e-6)
  np.testing.assert_allclose(k12.cov2, k12_0.cov2 / rate, rtol=1e-6)


def test_dropout_train_matches_monte_carlo():
  net = stax.serial(stax.Dense(512, W_std=1.4, b_std=0.1), stax.Relu(),
                    stax.Dropout(0.7), stax.Dense(512, W_std=1.2, b_std=0.1),
                    stax.Erf(), stax.Dense(512))
  x1, x2 = inputs()
  # Dropout masks add Monte-Carlo noise: more samples, a looser bound (the
  # errors halve with 4x the samples, so they are noise, not bias).
  check_against_mc(net, x1, x2, n_samples=48, use_rng=True, tol=0.07)


def test_dropout_apply_keeps_mean():
  _, apply_fn, _ = stax.Dropout(0.25)
  x = jnp.ones((200, 100))
  out = apply_fn((), x, rng=jax.random.PRNGKey(0))
  vals = np.unique(np.asarray(out))
  np.testing.assert_allclose(vals, [0.0, 4.0])
  assert abs(float(out.mean()) - 1.0) < 0.05
