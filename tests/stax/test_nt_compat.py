"""neural-tangents' API surface: custom layers, several outputs and inputs,
traced mask constants, spatial layout (`conformance/` runs NT's own tests)."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from widenets import Kernel, stax

KEY = jax.random.PRNGKey(0)


def _x(shape, seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), shape)


# -- Bool / Diagonal ---------------------------------------------------------


def test_diagonal_composition_is_associative():
  for ins in itertools.product(stax.Bool, repeat=3):
    for outs in itertools.product(stax.Bool, repeat=3):
      a, b, c = (stax.Diagonal(i, o) for i, o in zip(ins, outs))
      assert (a >> b) >> c == a >> (b >> c)
      assert c << (b << a) == (c << b) << a == (a >> b) >> c


def test_diagonal_and_and_bool():
  d = stax.Diagonal(stax.Bool.MAYBE, stax.Bool.YES)
  e = stax.Diagonal(stax.Bool.YES, stax.Bool.NO)
  assert d & e == stax.Diagonal(stax.Bool.MAYBE, stax.Bool.NO)
  assert d & d == d
  assert bool(stax.Diagonal(stax.Bool.YES, stax.Bool.MAYBE))
  assert not bool(stax.Diagonal(stax.Bool.MAYBE, stax.Bool.YES))
  # A readout (output YES) absorbs whatever follows.
  assert stax.Diagonal(output=stax.Bool.YES) >> stax.Diagonal(
      stax.Bool.NO) == stax.Diagonal(output=stax.Bool.YES)


# -- custom layers the neural-tangents way -----------------------------------


def _scaled(factor, **reqs):
  """An NT-style layer multiplying its input by ``factor``."""

  @stax.layer
  @stax.supports_masking(remask_kernel=True)
  def Scale():
    init_fn = lambda key, shape: (shape, ())
    apply_fn = lambda params, x, **kw: factor * x

    @stax.requires(**reqs)
    def kernel_fn(k, **kw):
      f2 = factor ** 2
      return k.replace(
          nngp=f2 * k.nngp, cov1=f2 * k.cov1,
          cov2=None if k.cov2 is None else f2 * k.cov2,
          ntk=None if k.ntk is None else f2 * k.ntk)

    return init_fn, apply_fn, kernel_fn

  return Scale()


def test_nt_style_layer_scales_kernel():
  x1, x2 = _x((3, 5, 4, 2)), _x((2, 5, 4, 2), 1)
  head = [stax.Conv(8, (2, 2)), stax.Relu()]
  tail = [stax.Conv(8, (2, 2)), stax.Relu(), stax.Flatten(), stax.Dense(1)]
  layer = _scaled(2., diagonal_spatial=stax.Diagonal())
  _, apply_fn, kf = stax.serial(*head, layer, *tail)
  _, _, ref = stax.serial(*head, stax.Dense(8, W_std=2., b_std=0.),
                          *tail)
  assert layer[0].__name__ == "Scale" and layer[2].__name__ == "Scale"
  for a, b in ((x1, None), (x1, x2)):
    k, r = kf(a, b, ("nngp", "ntk")), ref(a, b, ("nngp", "ntk"))
    np.testing.assert_allclose(k.nngp, r.nngp, rtol=1e-5)
  # A Flatten readout and Diagonal() requirements keep diagonal covariances.
  assert kf.reqs.default_diagonal_spatial
  params = stax.serial(*head, layer, *tail)[0](KEY, x1.shape)[1]
  assert apply_fn(params, x1).shape == (3, 1)


def test_requires_refuses_diagonal_kernel():
  layer = _scaled(1., diagonal_spatial=stax.Diagonal(input=stax.Bool.NO))
  _, _, kf = stax.serial(stax.Conv(4, (2, 2)), layer, stax.Flatten())
  assert not kf.reqs.diagonal_spatial_ok
  k = stax.Conv(4, (2, 2))[2](_x((2, 4, 4, 1)), None,
                              diagonal_spatial=True)
  with pytest.raises(ValueError, match="diagonal_spatial"):
    layer[2](k)


def test_requires_checks_channel_axis():
  layer = _scaled(1., channel_axis=0)
  k = stax.Dense(4)[2](_x((2, 3)))
  with pytest.raises(ValueError, match="channel_axis"):
    layer[2](k)


# -- several outputs and inputs ----------------------------------------------


def test_get_on_several_outputs_keeps_structure():
  x1, x2 = _x((4, 3)), _x((2, 3), 1)
  _, _, kf = stax.serial(stax.Dense(8), stax.FanOut(2),
                         stax.parallel(stax.Dense(1), stax.Dense(1)))
  out = kf(x1, None, "ntk")
  assert isinstance(out, list) and [o.shape for o in out] == [(4, 4)] * 2
  both = kf(x1, x2, ("nngp", "ntk"))
  assert [o.ntk.shape for o in both] == [(4, 2)] * 2
  np.testing.assert_allclose(both[0].ntk, kf(x1, x2, "ntk")[0], rtol=1e-6)


def test_nested_parallel_and_none_structure():
  x1, x2 = _x((4, 3)), _x((6, 3), 1)
  _, _, kf = stax.parallel(
      stax.Dense(2), stax.parallel(stax.Dense(2),
                                   stax.serial(stax.Dense(3), stax.Erf())))
  out = kf((x1, (x1, x1)), (x2, (x2, x2)), "nngp")
  assert out[0].shape == (4, 6) and [o.shape for o in out[1]] == [(4, 6)] * 2
  same = kf((x1, (x1, x1)), (None, (None, None)), "nngp")
  ref = kf((x1, (x1, x1)), None, "nngp")
  np.testing.assert_allclose(same[1][1], ref[1][1], rtol=1e-6)


# -- mask_constant as an array under jit -------------------------------------


def test_mask_constant_traced_under_jit():
  x = _x((4, 6, 3)).at[:, 2].set(10.)
  _, _, kf = stax.serial(stax.Conv(8, (2,)), stax.Relu(), stax.Flatten(),
                         stax.Dense(1))
  eager = kf(x, None, "ntk", mask_constant=10.)
  jitted = jax.jit(kf, static_argnames="get")(x, None, "ntk",
                                              mask_constant=jnp.asarray(10.))
  np.testing.assert_allclose(jitted, eager, rtol=1e-5)
  assert not np.allclose(eager, kf(x, None, "ntk"))


# -- spatial layout ----------------------------------------------------------


def test_spatial_axes_natural_order_matches_monte_carlo():
  # neural-tangents 0.6.5 returns (N1, N2, W, W, H, H) here (one Conv, no
  # readout); the finite network's covariances are (N1, N2, H, H, W, W).
  x = _x((2, 3, 4, 2))
  width, n_samples = 256, 16
  init_fn, apply_fn, kf = stax.serial(stax.Conv(width, (2, 3), padding="SAME"),
                                      stax.Relu())
  k = kf(x, None, "nngp")
  assert k.shape == (2, 2, 3, 3, 4, 4)

  def sample(key):
    out = apply_fn(init_fn(key, x.shape)[1], x)
    return jnp.einsum("ahwc,bHWc->abhHwW", out, out) / width

  mc = jnp.mean(jax.vmap(sample)(jax.random.split(KEY, n_samples)), 0)
  err = jnp.linalg.norm(mc - k) / jnp.linalg.norm(k)
  assert err < 0.05, err
  full = kf(x, None)
  nt_layout = full.reverse()
  assert nt_layout.is_reversed and nt_layout.nngp.shape == (2, 2, 4, 4, 3, 3)
  np.testing.assert_allclose(nt_layout.reverse().nngp, full.nngp)
  assert isinstance(nt_layout, Kernel)


def test_avg_pool_kernel_under_strict_rank_promotion():
  x1, x2 = _x((3, 4, 5, 2)), _x((2, 4, 5, 2), 1)
  for normalize_edges in (False, True):
    _, _, kf = stax.serial(
        stax.Conv(4, (2, 2)),
        stax.AvgPool((2, 2), (1, 1), "SAME", normalize_edges=normalize_edges),
        stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1))
    with jax.numpy_rank_promotion("raise"):
      assert kf(x1, x2, "ntk").shape == (3, 2)


def test_monte_carlo_blocks_slice_per_input_kwargs():
  import widenets as nt
  x = _x((8, 3, 4))
  pattern = jax.random.normal(KEY, (8, 3, 3))
  init_fn, apply_fn, _ = stax.serial(stax.Dense(8), stax.Relu(),
                                     stax.Aggregate(), stax.GlobalAvgPool(),
                                     stax.Dense(8))
  blocked = nt.monte_carlo_kernel_fn(init_fn, apply_fn, KEY, 2, batch_size=2)
  whole = nt.monte_carlo_kernel_fn(init_fn, apply_fn, KEY, 2)
  a = blocked(x, None, "ntk", pattern=(pattern, pattern))
  b = whole(x, None, "ntk", pattern=(pattern, pattern))
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_parallel_keeps_the_inputs_container_type():
  # neural-tangents' parallel returns its inputs' type: a tuple in, a tuple
  # out (init shapes, apply outputs, kernels); a list stays a list.
  init_fn, apply_fn, kernel_fn = stax.parallel(
      stax.Dense(3), stax.serial(stax.Dense(3), stax.Relu()))
  x = np.random.RandomState(0).randn(4, 5).astype(np.float32)
  shapes, params = init_fn(jax.random.PRNGKey(0), ((4, 5), (4, 5)))
  assert isinstance(shapes, tuple)
  assert isinstance(apply_fn(params, (x, x)), tuple)
  assert isinstance(apply_fn(params, [x, x]), list)
  ks = kernel_fn((x, x), None, "ntk")
  assert isinstance(ks, tuple) and [k.shape for k in ks] == [(4, 4)] * 2
  assert isinstance(kernel_fn([x, x], None, "ntk"), list)
  jitted = jax.jit(kernel_fn, static_argnames="get")((x, x), (x[:2], x[:2]),
                                                     "nngp")
  assert isinstance(jitted, tuple) and jitted[1].shape == (4, 2)


# -- layers once reported as neural-tangents bugs ----------------------------
# neural-tangents 0.6.5's kernels of these two networks (recorded by running
# it on the inputs below): widenets gives the same numbers, and both agree
# with Monte Carlo estimates of the finite network (docs/migration.md).
_NT_ATTENTION_NNGP = [[15.267352, 3.4690108, -3.2340727],
                      [3.469011, 2.0636785, -0.5846134],
                      [-3.2340724, -0.5846135, 3.0503132]]
_NT_DROPOUT_AGGREGATE_NNGP = [[132.87901, 59.545597, 14.092606],
                              [59.545593, 53.626755, 21.173561],
                              [14.092606, 21.173565, 32.935215]]


def _graph_inputs():
  rs = np.random.RandomState(0)
  x = jnp.asarray(rs.randn(3, 5, 3).astype(np.float32))
  pattern = jnp.asarray((rs.rand(3, 5, 5) < 0.5).astype(np.float32))
  return x, pattern


def _mc_nngp(init_fn, apply_fn, x, n_samples, **kwargs):
  """Mean of ``f f^T / width`` over random networks (and dropout masks)."""

  def one(key):
    init_key, drop_key = jax.random.split(key)
    out = apply_fn(init_fn(init_key, x.shape)[1], x, rng=drop_key, **kwargs)
    return out @ out.T / out.shape[-1]

  keys = jax.random.split(jax.random.PRNGKey(0), n_samples)
  return jnp.mean(jax.lax.map(one, keys), 0)


@pytest.mark.slow
def test_identity_attention_with_summed_positions_matches_monte_carlo():
  x, _ = _graph_inputs()
  init_fn, apply_fn, kf = stax.serial(
      stax.Dense(512),
      stax.GlobalSelfAttention(512, 256, 256, 4, attention_mechanism="IDENTITY",
                               pos_emb_type="SUM"),
      stax.GlobalAvgPool(), stax.Dense(512))
  k = kf(x, None, "nngp")
  np.testing.assert_allclose(k, _NT_ATTENTION_NNGP, rtol=1e-4, atol=1e-4)
  mc = _mc_nngp(init_fn, apply_fn, x, 64)
  # Unnormalized attention weights fluctuate at finite key width: a few
  # percent of bias at these sizes, shrinking as the widths grow.
  assert float(jnp.linalg.norm(mc - k) / jnp.linalg.norm(k)) < 0.08


@pytest.mark.slow
def test_train_dropout_before_aggregate_matches_monte_carlo():
  x, pattern = _graph_inputs()
  init_fn, apply_fn, kf = stax.serial(
      stax.Dense(512), stax.Relu(), stax.Dropout(0.7, mode="train"),
      stax.Aggregate(), stax.GlobalSumPool(), stax.Dense(512))
  k = kf(x, None, "nngp", pattern=(pattern, pattern))
  np.testing.assert_allclose(k, _NT_DROPOUT_AGGREGATE_NNGP, rtol=1e-4,
                             atol=1e-3)
  mc = _mc_nngp(init_fn, apply_fn, x, 64, pattern=pattern)
  assert float(jnp.linalg.norm(mc - k) / jnp.linalg.norm(k)) < 0.05
  # Without the dropout term on the diagonal the estimate is clearly off:
  # the check can tell a wrong rule.
  _, _, kf_eval = stax.serial(
      stax.Dense(512), stax.Relu(), stax.Dropout(0.7, mode="test"),
      stax.Aggregate(), stax.GlobalSumPool(), stax.Dense(512))
  k_eval = kf_eval(x, None, "nngp", pattern=(pattern, pattern))
  assert float(jnp.linalg.norm(mc - k_eval) / jnp.linalg.norm(k)) > 0.1


# -- errors and masks as neural-tangents programs meet them ------------------


@pytest.mark.parametrize("idx", [stax.Slice[..., 1], stax.Slice[0, ...]])
def test_index_refusals_are_not_implemented_errors(idx):
  # NT raises NotImplementedError here; ours is that and a ValueError.
  _, _, kf = stax.serial(stax.Conv(4, (2, 2)), stax.Index(idx=idx),
                         stax.GlobalAvgPool(), stax.Dense(1))
  x = _x((3, 4, 5, 2))
  with pytest.raises(NotImplementedError, match="Index"):
    kf(x, None, "nngp")
  with pytest.raises(ValueError, match="Index"):
    kf(x, None, "nngp")


def test_masked_apply_through_fan_out_and_parallel():
  x = _x((4, 6)).at[:, 2].set(10.)
  init_fn, apply_fn, _ = stax.serial(
      stax.FanOut(2), stax.parallel(stax.Dense(3), stax.Dense(3)),
      stax.FanInSum())
  params = init_fn(KEY, x.shape)[1]
  out = stax.unmask_fn(apply_fn)(params, x, mask_constant=10.)
  # The masked input entries contribute nothing: the same as zeroing them.
  np.testing.assert_allclose(out, apply_fn(params, x.at[:, 2].set(0.)),
                             rtol=1e-6)


def test_gradient_descent_predictor_jits_over_a_closed_kernel():
  import widenets as nt
  x = _x((5, 3))
  k = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(1))[2](x, None, "ntk")
  y = _x((5, 1), 1)
  predictor = jax.jit(nt.predict.gradient_descent_mse(k, y))
  fx = jnp.zeros((5, 1))
  np.testing.assert_allclose(predictor(0., fx), fx, atol=1e-6)
  np.testing.assert_allclose(predictor(1e6, fx), y, atol=1e-3)
