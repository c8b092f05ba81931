"""Conv, ConvTranspose, ConvLocal: analytic kernels vs Monte Carlo, exact
layout identities, shapes and errors."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from widenets import stax
from tests.stax.mc import check_against_mc, rel_err

W = 256  # hidden width for Monte Carlo


def _images(shape, n1=4, n2=3, seed=0):
  rs = np.random.RandomState(seed)
  x1 = rs.randn(n1, *shape).astype(np.float32)
  x2 = (0.7 * x1[:n2] + 0.7 * rs.randn(n2, *shape)).astype(np.float32)
  return jnp.asarray(x1), jnp.asarray(x2)


MC_CASES = {
    # name: (layers, input shape)
    "2d_same_gap": ([stax.Conv(W, (3, 3), padding="SAME", W_std=1.3,
                               b_std=0.2), stax.Relu(),
                     stax.Conv(W, (2, 2), padding="SAME"), stax.Relu(),
                     stax.GlobalAvgPool()], (5, 5, 3)),
    "2d_valid_stride_flatten": ([stax.Conv(W, (3, 2), (2, 1), "VALID",
                                           b_std=0.1), stax.Relu(),
                                 stax.Flatten()], (6, 5, 2)),
    "1d_circular_transpose": ([stax.Conv(W, (3,), padding="CIRCULAR"),
                               stax.Erf(),
                               stax.ConvTranspose(W, (3,), (2,), "CIRCULAR",
                                                  b_std=0.3), stax.Relu(),
                               stax.GlobalSumPool()], (6, 2)),
    "3d_nchw_local": ([stax.Conv(W, (2, 2, 2), padding="SAME",
                                 dimension_numbers=("NCHWD", "OIHWD",
                                                    "NHWDC")),
                       stax.Relu(),
                       stax.ConvLocal(W, (2, 1, 2), W_std=1.2, b_std=0.1),
                       stax.Relu(), stax.Flatten()], (2, 3, 4, 3)),
    "standard_parameterization": ([stax.Conv(W, (3, 3), padding="SAME",
                                             b_std=0.2, W_std=1.5,
                                             parameterization="standard",
                                             s=(2, 3)), stax.Relu(),
                                   stax.GlobalAvgPool()], (4, 4, 2)),
}


_SLOW = {"3d_nchw_local", "1d_circular_transpose"}


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n in _SLOW else n
    for n in sorted(MC_CASES)])
def test_conv_kernel_matches_monte_carlo(name):
  layers, shape = MC_CASES[name]
  net = stax.serial(*layers, stax.Dense(W, W_std=1.1, b_std=0.1))
  x1, x2 = _images(shape)
  check_against_mc(net, x1, x2, n_samples=24, tol=0.08, ntk_tol=0.1)


def _cnn(readout):
  return stax.serial(
      stax.Conv(8, (3, 3), (1, 2), "SAME", W_std=1.4, b_std=0.1),
      stax.Relu(), stax.ConvLocal(8, (2, 2), padding="VALID", b_std=0.2),
      stax.Erf(), stax.Conv(8, (2, 3), padding="CIRCULAR"), stax.Relu(),
      readout, stax.Dense(1, b_std=0.1))


def test_diagonal_spatial_true_and_false_agree_for_flatten():
  x1, x2 = _images((6, 7, 3))
  kernel_fn = _cnn(stax.Flatten())[2]
  for x in (x2, None):
    a = kernel_fn(x1, x, ("nngp", "ntk"), diagonal_spatial=True)
    b = kernel_fn(x1, x, ("nngp", "ntk"), diagonal_spatial=False)
    np.testing.assert_allclose(a.nngp, b.nngp, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.ntk, b.ntk, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("readout", ["flatten", "gap"])
def test_x2_none_equals_x2_x1(readout):
  # x2=None runs the packed upper-triangle path; x2=x1 the full grid.
  x1, _ = _images((5, 6, 2), n1=7)
  ro = stax.Flatten() if readout == "flatten" else stax.GlobalAvgPool()
  kernel_fn = _cnn(ro)[2]
  a = kernel_fn(x1, None)
  b = kernel_fn(x1, x1)
  for f in ("nngp", "ntk"):
    np.testing.assert_allclose(getattr(a, f), getattr(b, f), rtol=2e-5,
                               atol=1e-6)
  np.testing.assert_allclose(a.nngp, a.nngp.T, rtol=1e-6)


def test_x2_none_packed_full_spatial_kernel():
  # No readout: the spatial covariances come back unpacked and mirrored.
  x1, _ = _images((5, 4, 2), n1=5)
  net = stax.serial(stax.Conv(4, (3, 2), (2, 1), "SAME", b_std=0.1),
                    stax.Relu(), stax.AvgPool((2, 2), padding="SAME"),
                    stax.ConvTranspose(4, (2, 2), (2, 1)))
  a = net[2](x1, None, "nngp")
  b = net[2](x1, x1, "nngp")
  np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("dn,shape", [
    (None, (2, 5, 6, 3)),
    (("NCHW", "OIHW", "NHWC"), (2, 3, 5, 6)),
    (("HWNC", "HWIO", "CNWH"), (5, 6, 2, 3)),
])
@pytest.mark.parametrize("cls", ["Conv", "ConvTranspose", "ConvLocal"])
def test_init_shapes_match_kernel_shapes(cls, dn, shape):
  layer = getattr(stax, cls)(4, (3, 2), (2, 1), "SAME", b_std=0.1,
                             dimension_numbers=dn)
  init_fn, apply_fn, kernel_fn = stax.serial(layer, stax.Relu())
  out_shape, params = init_fn(jax.random.PRNGKey(0), shape)
  x = jnp.asarray(np.random.RandomState(0).randn(*shape), jnp.float32)
  x2 = x[:1] if shape[0] == 2 and dn is None else None
  assert apply_fn(params, x).shape == tuple(out_shape)
  k = kernel_fn(x, x2)
  assert tuple(k.shape1) == tuple(out_shape)
  n_out_spatial = len(out_shape) - 2
  assert k.nngp.ndim == 2 + 2 * n_out_spatial


@pytest.mark.parametrize("cls", ["Conv", "ConvTranspose", "ConvLocal"])
def test_float32_inputs_with_x64_parameters(cls):
  # Under x64 `init_fn` draws float64 weights; float32 inputs then give
  # float64 outputs, as Dense's matmul does (lax's convolutions alone
  # refuse mixed dtypes).
  with jax.enable_x64(True):
    init_fn, apply_fn, _ = getattr(stax, cls)(4, (3, 2), b_std=0.1)
    _, params = init_fn(jax.random.PRNGKey(0), (2, 5, 6, 3))
    assert params[0].dtype == jnp.float64
    x = jnp.asarray(np.random.RandomState(0).randn(2, 5, 6, 3), jnp.float32)
    out = apply_fn(params, x)
    ref = apply_fn(params, x.astype(jnp.float64))
    assert out.dtype == jnp.float64
    np.testing.assert_array_equal(out, ref)


def test_conv_params_like_neural_tangents():
  # Shapes and RNG splitting of jax.example_libraries.stax.GeneralConv with
  # normal(1) initializers; b drawn from the second key.
  key = jax.random.PRNGKey(3)
  _, (W_, b) = stax.Conv(5, (3, 2), b_std=0.1)[0](key, (1, 6, 7, 2))
  k1, k2 = jax.random.split(key)
  np.testing.assert_array_equal(W_, jax.random.normal(k1, (3, 2, 2, 5)))
  np.testing.assert_array_equal(b, jax.random.normal(k2, (1, 1, 1, 5)))
  _, (W_, b) = stax.Conv(5, (3, 2))[0](key, (1, 6, 7, 2))
  assert b is None
  _, (W_, b) = stax.ConvLocal(5, (3, 2), b_std=1.)[0](key, (1, 6, 7, 2))
  assert W_.shape == (4, 6, 12, 5) and b.shape == (1, 4, 6, 5)


def test_filter_larger_than_input_is_a_clear_error():
  x = jnp.ones((2, 3, 3, 1))
  kernel_fn = stax.serial(stax.Conv(4, (4, 2)), stax.Flatten())[2]
  with pytest.raises(ValueError, match=r"Conv.*\(4, 2\).*\(3, 3\)"):
    kernel_fn(x)
  with pytest.raises(ValueError, match=r"Conv.*\(4, 2\)"):
    stax.Conv(4, (4, 2))[0](jax.random.PRNGKey(0), (2, 3, 3, 1))


def test_diagonal_spatial_with_global_pool_is_a_clear_error():
  x = jnp.ones((2, 4, 4, 1))
  kernel_fn = stax.serial(stax.Conv(4, (2, 2)), stax.Relu(),
                          stax.GlobalAvgPool())[2]
  with pytest.raises(ValueError, match="GlobalAvgPool.*all pairs"):
    kernel_fn(x, diagonal_spatial=True)


def test_mismatched_input_shapes_are_a_clear_error():
  kernel_fn = stax.serial(stax.Conv(4, (2, 2)), stax.Flatten())[2]
  with pytest.raises(ValueError, match=r"\(2, 4, 4, 1\).*\(2, 5, 4, 1\)"):
    kernel_fn(jnp.ones((2, 4, 4, 1)), jnp.ones((2, 5, 4, 1)))


def test_bad_padding_is_a_clear_error():
  with pytest.raises(ValueError, match="padding"):
    stax.Conv(4, (2, 2), padding="FULL")


def test_ntk_parameterization_ignores_width():
  x1, x2 = _images((4, 4, 2))
  k = [stax.serial(stax.Conv(c, (2, 2), padding="SAME", b_std=0.1),
                   stax.Relu(), stax.GlobalAvgPool())[2](x1, x2, "ntk")
       for c in (1, 1000)]
  np.testing.assert_allclose(k[0], k[1], rtol=1e-6)
  assert rel_err(k[0], k[0] * 1.01) > 0  # sanity of the helper


def test_kernel_is_differentiable_in_the_inputs():
  x1, x2 = _images((4, 4, 2))
  kernel_fn = stax.serial(stax.Conv(4, (3, 3), padding="SAME", b_std=0.1),
                          stax.Relu(), stax.AvgPool((2, 2)),
                          stax.Conv(4, (2, 2), padding="CIRCULAR"),
                          stax.Relu(), stax.GlobalAvgPool())[2]
  g = jax.grad(lambda a: kernel_fn(a, x2, "ntk").sum())(x1)
  assert np.all(np.isfinite(np.asarray(g))) and np.any(np.asarray(g) != 0)


def _myrtle5(width=W):
  conv = lambda: stax.Conv(width, (3, 3), padding="SAME", W_std=2**0.5)
  pool = lambda: stax.AvgPool((2, 2), strides=(2, 2))
  return stax.serial(conv(), stax.Relu(), conv(), stax.Relu(), pool(),
                     conv(), stax.Relu(), pool(), conv(), stax.Relu(),
                     stax.GlobalAvgPool(), stax.Dense(width, 2**0.5))


@pytest.mark.slow
def test_myrtle5_matches_monte_carlo():
  x1, x2 = _images((8, 8, 3), n1=3, n2=2)
  check_against_mc(_myrtle5(), x1, x2, n_samples=12, tol=0.1, ntk_tol=0.15)


def test_myrtle5_packed_equals_full():
  x1, _ = _images((8, 8, 3), n1=4)
  kernel_fn = _myrtle5(8)[2]
  a, b = kernel_fn(x1, None), kernel_fn(x1, x1)
  np.testing.assert_allclose(a.ntk, b.ntk, rtol=2e-5)
  np.testing.assert_allclose(a.nngp, b.nngp, rtol=2e-5)


@pytest.mark.parametrize("method", ["linear", "nearest"])
def test_image_resize_matches_monte_carlo(method):
  # (neural-tangents 0.6.5 resizes the wrong axes after a Conv, whose kernel
  # it stores with reversed spatial axes; widenets keeps the natural order.)
  net = stax.serial(stax.Conv(W, (2, 2), padding="SAME", b_std=0.1),
                    stax.Relu(), stax.ImageResize((-1, 6, 3, -1), method),
                    stax.Conv(W, (2, 2)), stax.Relu(), stax.GlobalAvgPool(),
                    stax.Dense(W))
  x1, x2 = _images((4, 5, 2))
  check_against_mc(net, x1, x2, n_samples=40, tol=0.08, ntk_tol=0.12)
