"""The float32 `atan2` of the angle-based kernels: accuracy against float64
NumPy, arctan2's conventions at zeros and signs, exact derivatives, float64
untouched."""
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from widenets.stax.activations import atan2 as atan2_module
from widenets.stax.activations.atan2 import atan2

# Our float32 approximation itself (small arrays go to XLA's atan2).
_fast = jax.jit(atan2_module._atan2_float32)


def _ulps(got, y, x):
  ref = np.arctan2(np.float64(y), np.float64(x))
  ulp = np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)
  return np.abs(np.asarray(got, np.float64) - ref) / ulp


def test_float32_within_a_few_ulps_in_every_octant():
  rs = np.random.RandomState(0)
  # Unit-scale pairs, pairs at the octant boundaries (|y| = |x|,
  # |y| = tan(pi / 8) |x|) and widely different magnitudes.
  y = rs.randn(200_000)
  x = rs.randn(200_000)
  b = rs.randn(20_000)
  huge = 3e38 * rs.rand(1000)  # near float32's max: num + den overflows
  tiny = 1.2e-38 * (1 + 3 * rs.rand(1000))  # near the smallest normal
  y = np.concatenate([y, b, 0.41421356 * b, 1e-20 * b, 1e20 * b, huge, tiny])
  x = np.concatenate([x, -b[::-1], b, b, b, -3e38 * rs.rand(1000),
                      tiny[::-1]])
  y, x = y.astype(np.float32), x.astype(np.float32)
  err = _ulps(_fast(y, x), y, x)
  assert err.max() <= 4.5, err.max()


@settings(max_examples=300, deadline=None)
@given(st.floats(width=32, allow_nan=False, allow_infinity=False,
                 allow_subnormal=False),
       st.floats(width=32, allow_nan=False, allow_infinity=False,
                 allow_subnormal=False))
def test_float32_accuracy_property(y, x):
  y, x = np.float32(y), np.float32(x)
  got = float(_fast(y, x))
  ref = float(np.arctan2(np.float64(y), np.float64(x)))
  # Results below float32's normal range are flushed to zero on XLA CPU.
  tol = 4.5 * np.spacing(np.float32(abs(ref))) + 2 * np.finfo(np.float32).tiny
  assert abs(got - ref) <= tol, (y, x, got, ref)


def test_signed_zeros_and_axes_follow_arctan2():
  vals = np.array([0., -0., 1., -1., 3e38, -3e38], np.float32)
  y, x = (a.ravel() for a in np.meshgrid(vals, vals))
  got, ref = np.asarray(_fast(y, x)), np.arctan2(y, x)
  np.testing.assert_allclose(got, ref, rtol=3e-7, atol=np.float32(1e-38))
  exact = (y == 0) | (x == 0)
  np.testing.assert_array_equal(np.signbit(got[exact]), np.signbit(ref[exact]))


def test_float64_is_numpys_arctan2():
  with jax.enable_x64(True):
    rs = np.random.RandomState(1)
    y, x = rs.randn(1000), rs.randn(1000)
    got = atan2(jnp.asarray(y), jnp.asarray(x))
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got), np.arctan2(y, x), rtol=1e-15,
                               atol=1e-15)


def test_small_arrays_use_xlas_and_large_ones_ours():
  # The choice follows the (broadcast) size only; both are accurate, so a
  # kernel changes by round-off across the threshold, no more.
  rs = np.random.RandomState(2)
  n = atan2_module.XLA_UP_TO
  y, x = (rs.randn(n + 1).astype(np.float32) for _ in range(2))
  small = np.asarray(jax.jit(atan2)(y[:n], x[:n]))
  np.testing.assert_array_equal(small, np.asarray(jnp.arctan2(y[:n], x[:n])))
  large = np.asarray(jax.jit(atan2)(y, x))
  np.testing.assert_array_equal(large, np.asarray(_fast(y, x)))
  # Broadcasting counts the output's entries.
  col = jnp.asarray(y[:n // 2 + 1, None])
  wide = np.asarray(jax.jit(atan2)(col, jnp.asarray(x[None, :2])))
  np.testing.assert_array_equal(wide, np.asarray(_fast(col, x[None, :2])))
  assert _ulps(small, y[:n], x[:n]).max() <= 4
  assert _ulps(large, y, x).max() <= 4.5


def test_derivative_is_exact():
  y = jnp.array([0.3, -2.0, 1e-3, 5.0], jnp.float32)
  x = jnp.array([1.2, -0.5, 2.0, -1e-3], jnp.float32)
  gy, gx = jax.vmap(jax.grad(atan2, argnums=(0, 1)))(y, x)
  r2 = x * x + y * y
  np.testing.assert_allclose(gy, x / r2, rtol=1e-6)
  np.testing.assert_allclose(gx, -y / r2, rtol=1e-6)


def test_broadcasts_scalars_and_arrays():
  y = jnp.linspace(-2, 2, 7, dtype=jnp.float32)[:, None]
  out = atan2(y, 1.5)
  assert out.shape == (7, 1) and out.dtype == jnp.float32
  np.testing.assert_allclose(out, np.arctan2(np.asarray(y), 1.5), rtol=3e-7)


def test_rational_approximation_is_accurate_in_exact_arithmetic():
  # The coefficients themselves (in float64): any error here would show up
  # in float32 as a bias, not as round-off.
  u = np.linspace(-np.tan(np.pi / 8), np.tan(np.pi / 8), 100_001)
  z = u * u
  p = np.polyval(np.asarray(atan2_module._P)[::-1], z)
  q = np.polyval(np.asarray(atan2_module._Q)[::-1], z)
  rel = np.abs(u * p / q - np.arctan(u)) / np.maximum(np.abs(np.arctan(u)),
                                                       1e-300)
  assert rel.max() < 1e-9, rel.max()
