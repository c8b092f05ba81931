"""`widenets.empirical.conv_grad`: convolution weight gradients as shifted
slices times a matmul equal JAX's own VJP, in every layout."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import widenets as nt
from widenets.empirical import conv_grad

from .models import reference_ntk

# (lhs layout, rhs layout, out layout) for 1, 2 and 3 spatial axes.
LAYOUTS = {
    1: [("NWC", "WIO", "NWC"), ("NCW", "OIW", "NCW")],
    2: [("NHWC", "HWIO", "NHWC"), ("NCHW", "OIHW", "NCHW"),
        ("NHWC", "OIHW", "NCHW"), ("HWCN", "IHWO", "NHWC")],
    3: [("NDHWC", "DHWIO", "NDHWC")],
}


def _conv_eqn_params(lhs, rhs, **kw):
  """The ``conv_general_dilated`` equation's params for these arguments."""
  jaxpr = jax.make_jaxpr(
      lambda a, b: jax.lax.conv_general_dilated(a, b, **kw))(lhs, rhs)
  (eqn,) = [e for e in jaxpr.jaxpr.eqns
            if e.primitive.name == "conv_general_dilated"]
  return eqn.params


def _case(n_sp, layout, spatial, kernel, strides, dilation, padding, seed=0):
  lhs_l, rhs_l, out_l = layout
  rng = np.random.RandomState(seed)
  sizes = dict(N=2, C=3, I=3, O=4)
  sp_names = [c for c in lhs_l if c not in "NC"]
  lhs_shape = [sizes[c] if c in "NC" else spatial[sp_names.index(c)]
               for c in lhs_l]
  rsp = [c for c in rhs_l if c not in "IO"]
  rhs_shape = [sizes[c] if c in "IO" else kernel[rsp.index(c)]
               for c in rhs_l]
  lhs = jnp.asarray(rng.randn(*lhs_shape).astype(np.float32))
  rhs = jnp.asarray(rng.randn(*rhs_shape).astype(np.float32))
  kw = dict(window_strides=strides, padding=padding, rhs_dilation=dilation,
            dimension_numbers=layout,
            precision=jax.lax.Precision.HIGHEST)
  return lhs, rhs, kw


def _check(lhs, rhs, kw, seed=1):
  out, pull = jax.vjp(lambda w: jax.lax.conv_general_dilated(lhs, w, **kw),
                      rhs)
  ct = jnp.asarray(np.random.RandomState(seed).randn(*out.shape)
                   .astype(np.float32))
  params = _conv_eqn_params(lhs, rhs, **kw)
  got = conv_grad.weight_grad(lhs, ct, rhs.shape, params)
  (want,) = pull(ct)
  assert got.shape == rhs.shape and got.dtype == rhs.dtype
  np.testing.assert_allclose(got, want, rtol=1e-4,
                             atol=1e-4 * float(jnp.max(jnp.abs(want))))


@pytest.mark.parametrize("n_sp,layout", [(n, l) for n, ls in LAYOUTS.items()
                                         for l in ls])
@pytest.mark.parametrize("strides,dilation,padding", [
    (1, 1, "SAME"), (2, 1, "VALID"), (1, 2, "SAME"), (2, 2, "SAME"),
    (1, 1, "explicit")])
def test_weight_grad_equals_vjp(n_sp, layout, strides, dilation, padding):
  spatial = [7, 6, 5][:n_sp]
  kernel = [3, 2, 2][:n_sp]
  if padding == "explicit":  # asymmetric, one side negative
    padding = [(2, -1), (0, 1), (1, 1)][:n_sp]
  lhs, rhs, kw = _case(n_sp, layout, spatial, kernel, (strides,) * n_sp,
                       (dilation,) * n_sp, padding)
  _check(lhs, rhs, kw)


@settings(max_examples=15, deadline=None)
@given(h=st.integers(3, 9), w=st.integers(3, 9), kh=st.integers(1, 3),
       kw_=st.integers(1, 3), sh=st.integers(1, 3), dh=st.integers(1, 2),
       pad=st.sampled_from(["SAME", "VALID", "SAME_LOWER"]))
def test_weight_grad_any_geometry(h, w, kh, kw_, sh, dh, pad):
  # The dilated window fits the input (VALID would leave no outputs).
  assume((kh - 1) * dh + 1 <= h and (kw_ - 1) * dh + 1 <= w)
  lhs, rhs, kw = _case(2, LAYOUTS[2][0], [h, w], [kh, kw_], (sh, 1),
                       (dh, 1), pad, seed=h * 10 + w)
  _check(lhs, rhs, kw)


def test_grouped_and_transposed_convs_are_left_alone():
  lhs = jnp.ones((2, 5, 5, 4))
  grouped = _conv_eqn_params(lhs, jnp.ones((3, 3, 2, 4)),
                             window_strides=(1, 1), padding="SAME",
                             feature_group_count=2,
                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
  dilated = _conv_eqn_params(lhs, jnp.ones((3, 3, 4, 4)),
                             window_strides=(1, 1),
                             padding=((1, 1), (1, 1)), lhs_dilation=(2, 2),
                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert not conv_grad.supported(grouped)
  assert not conv_grad.supported(dilated)
  assert conv_grad.weight_grad(lhs, jnp.ones((2, 5, 5, 4)), (3, 3, 2, 4),
                               grouped) is None


def _net(p, x, mode="train"):
  """Conv (strided) -> relu -> grouped conv -> conv in a nested jit ->
  dense; a string keyword."""
  dn = ("NHWC", "HWIO", "NHWC")
  y = jax.lax.conv_general_dilated(x, p["c1"], (2, 1), "SAME",
                                   dimension_numbers=dn)
  y = jax.nn.relu(y)
  y = jax.lax.conv_general_dilated(y, p["g"], (1, 1), "SAME",
                                   feature_group_count=2,
                                   dimension_numbers=dn)

  @jax.jit
  def inner(y, w):
    return jnp.tanh(jax.lax.conv_general_dilated(
        y, w, (1, 1), "VALID", rhs_dilation=(2, 1), dimension_numbers=dn))

  y = inner(y, p["c2"])
  out = y.reshape(y.shape[0], -1) @ p["d"]
  return out * (2.0 if mode == "train" else 1.0)


def _net_params():
  ks = jax.random.split(jax.random.PRNGKey(0), 4)
  return {"c1": jax.random.normal(ks[0], (3, 3, 3, 4)) / 5,
          "g": jax.random.normal(ks[1], (3, 3, 2, 4)) / 5,
          "c2": jax.random.normal(ks[2], (2, 2, 4, 4)) / 5,
          "d": jax.random.normal(ks[3], (1 * 5 * 4, 3)) / 5}


def test_rewritten_function_has_same_values_and_gradients():
  p = _net_params()
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 6, 3))
  fast = conv_grad.with_fast_conv_grads(_net)
  np.testing.assert_array_equal(fast(p, x, "test"), _net(p, x, "test"))
  loss = lambda fn: lambda q: jnp.sum(fn(q, x, "train") ** 2)
  g_fast = jax.grad(loss(fast))(p)
  g_ref = jax.grad(loss(_net))(p)
  for k in p:
    np.testing.assert_allclose(g_fast[k], g_ref[k], rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("impl", [1, 3])
@pytest.mark.parametrize("vmap_axes", [None, 0])
def test_ntk_of_strided_grouped_nested_convs(impl, vmap_axes):
  p = _net_params()
  x1 = jax.random.normal(jax.random.PRNGKey(2), (3, 6, 6, 3))
  x2 = jax.random.normal(jax.random.PRNGKey(3), (2, 6, 6, 3))
  ref = reference_ntk(_net, p, x1, x2, (-1,), ())
  got = nt.empirical_ntk_fn(_net, vmap_axes=vmap_axes,
                            implementation=impl)(x1, x2, p)
  np.testing.assert_allclose(got, ref, rtol=1e-4,
                             atol=1e-5 * float(jnp.max(jnp.abs(ref))))


def test_has_conv_sees_nested_convolutions():
  p = _net_params()
  x = jnp.ones((2, 6, 6, 3))
  assert conv_grad.has_conv(_net, p, x)
  assert not conv_grad.has_conv(lambda q, y: jnp.tanh(y @ q), jnp.ones((3, 2)),
                                jnp.ones((4, 3)))
