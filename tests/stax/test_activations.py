"""Activations beyond the core family: closed forms against float64
quadrature, the custom/numerical escape hatches, derivatives at x = 0, and
bad input. (Monte Carlo checks: test_activations_mc.py; stress and
properties: test_activations_robust.py.)"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf as np_erf

from widenets import stax

W_STD, B_STD = 1.3, 0.4

# name -> (layer factory, numpy phi, numpy phi')
SMOOTH = {
    "Gelu": (stax.Gelu,
             lambda x: 0.5 * x * (1 + np_erf(x / np.sqrt(2))),
             lambda x: 0.5 * (1 + np_erf(x / np.sqrt(2))) +
             x * np.exp(-x**2 / 2) / np.sqrt(2 * np.pi)),
    "Sin": (lambda: stax.Sin(1.2, 0.7, 0.3),
            lambda x: 1.2 * np.sin(0.7 * x + 0.3),
            lambda x: 1.2 * 0.7 * np.cos(0.7 * x + 0.3)),
    "Cos": (lambda: stax.Cos(0.9, 1.1, -0.2),
            lambda x: 0.9 * np.cos(1.1 * x - 0.2),
            lambda x: -0.9 * 1.1 * np.sin(1.1 * x - 0.2)),
    "Rbf": (lambda: stax.Rbf(0.6),
            lambda x: np.sqrt(2) * np.sin(np.sqrt(1.2) * x + np.pi / 4),
            lambda x: np.sqrt(2.4) * np.cos(np.sqrt(1.2) * x + np.pi / 4)),
    "Exp": (lambda: stax.Exp(0.8, 0.6),
            lambda x: 0.8 * np.exp(0.6 * x),
            lambda x: 0.48 * np.exp(0.6 * x)),
    "Gaussian": (lambda: stax.Gaussian(1.1, -0.7),
                 lambda x: 1.1 * np.exp(-0.7 * x**2),
                 lambda x: -1.54 * x * np.exp(-0.7 * x**2)),
    "Gabor": (stax.Gabor,
              lambda x: np.exp(-x**2) * np.sin(x),
              lambda x: np.exp(-x**2) * (np.cos(x) - 2 * x * np.sin(x))),
    "Polynomial": (lambda: stax.Polynomial([0.3, -0.5, 0.2, 0.1]),
                   lambda x: 0.3 - 0.5 * x + 0.2 * x**2 + 0.1 * x**3,
                   lambda x: -0.5 + 0.4 * x + 0.3 * x**2),
    # Quadrature layers at a high deg: checks the code path to 1e-6.
    "Softplus": (lambda: stax.Softplus(deg=80), lambda x: np.logaddexp(0, x),
                 lambda x: 1 / (1 + np.exp(-x))),
    "Silu": (lambda: stax.Silu(deg=80), lambda x: x / (1 + np.exp(-x)),
             lambda x: (1 + np.exp(-x) + x * np.exp(-x)) /
             (1 + np.exp(-x))**2),
}
SMOOTH.update({
    f"Monomial{d}": (lambda d=d: stax.Monomial(d), lambda x, d=d: x**d,
                     lambda x, d=d: d * x**(d - 1) if d else 0 * x)
    for d in range(6)})


def _gh_expectation(f, g, var1, var2, cov, deg=120):
  """Float64 Gauss-Hermite ``E[f(u) g(v)]`` (independent of the library)."""
  x, w = np.polynomial.hermite.hermgauss(deg)
  u = np.sqrt(2 * var1) * x[:, None]
  r = cov / np.sqrt(var1 * var2)
  v = np.sqrt(2 * var2) * (r * x[:, None] + np.sqrt(max(1 - r**2, 0)) *
                           x[None, :])
  return float(np.einsum("i,j,ij->", w, w, f(u) * g(v)) / np.pi)


def _trapezoid_expectation(f, g, var1, var2, cov, n=701):
  """Float64 ``E[f(u) g(v)]`` by the trapezoid rule in standard-normal
  coordinates: spectrally accurate for smooth integrands with Gaussian
  decay, and unlike Gauss-Hermite insensitive to how sharply ``f`` bends
  on the Gaussian's scale."""
  z = np.linspace(-10, 10, n)
  w = np.exp(-z**2 / 2)
  w /= w.sum()
  r = cov / np.sqrt(var1 * var2)
  u = np.sqrt(var1) * z[:, None]
  v = np.sqrt(var2) * (r * z[:, None] + np.sqrt(max(1 - r**2, 0)) *
                       z[None, :])
  return float(np.einsum("i,j,ij->", w, w, f(u) * g(v)))


def _inputs(n=4, d=5, seed=0):
  x = np.random.RandomState(seed).randn(n, d)
  x[3] = 0.6 * x[0] + 0.1 * x[1]  # a strongly correlated pair
  return x


def _reference(phi, dphi, x, expectation=_gh_expectation):
  pre = W_STD**2 * x @ x.T / x.shape[1] + B_STD**2
  n = len(x)
  nngp, ntk = np.zeros((n, n)), np.zeros((n, n))
  for i in range(n):
    for j in range(i, n):
      args = (pre[i, i], pre[j, j], pre[i, j])
      nngp[i, j] = nngp[j, i] = expectation(phi, phi, *args)
      ntk[i, j] = ntk[j, i] = pre[i, j] * expectation(dphi, dphi, *args)
  return nngp, ntk


def _layer_kernels(make, x, x2=None):
  _, _, kernel_fn = stax.serial(stax.Dense(1, W_std=W_STD, b_std=B_STD),
                                make())
  return kernel_fn(jnp.asarray(x), x2 if x2 is None else jnp.asarray(x2),
                   ("nngp", "ntk"))


# Exp(-x**2) is narrow on the Gaussian's scale: a finer reference.
_REFERENCE_DEG = {"Gabor": 300, "Gaussian": 200}


@pytest.mark.parametrize("name", sorted(SMOOTH) + ["Tanh"])
def test_closed_form_matches_quadrature_float64(name):
  if name == "Tanh":  # the erf-mixture closed form: ~1e-5 absolute
    make, phi, dphi, tol = (stax.Tanh, np.tanh,
                            lambda x: 1 - np.tanh(x)**2, 2e-5)
  else:
    (make, phi, dphi), tol = SMOOTH[name], 1e-6
  x = _inputs()
  with jax.enable_x64(True):
    k = _layer_kernels(make, x)
    k12 = _layer_kernels(make, x[:2], x[2:])
  deg = _REFERENCE_DEG.get(name, 120)
  nngp, ntk = _reference(
      phi, dphi, x, _trapezoid_expectation if name == "Tanh" else
      lambda *a: _gh_expectation(*a, deg=deg))
  np.testing.assert_allclose(k.nngp, nngp, atol=tol * np.abs(nngp).max())
  np.testing.assert_allclose(k.ntk, ntk, atol=tol * np.abs(ntk).max())
  np.testing.assert_allclose(k12.nngp, nngp[:2, 2:],
                             atol=tol * np.abs(nngp).max())


def _rectified_expectation(n):
  """``E[u_+**n v_+**n]`` in polar coordinates: the integrand is smooth on
  the arc where both are positive, so Gauss-Legendre is exact to float64."""
  nodes, weights = np.polynomial.legendre.leggauss(60)

  def expectation(f, g, var1, var2, cov):
    theta = np.arccos(np.clip(cov / np.sqrt(var1 * var2), -1, 1))
    lo, hi = theta - np.pi / 2, np.pi / 2
    phi = (hi - lo) / 2 * nodes + (hi + lo) / 2
    arc = (hi - lo) / 2 * np.sum(weights * np.cos(phi)**n *
                                 np.cos(phi - theta)**n)
    radial = 2**n * math.factorial(n) / (2 * np.pi)
    return (var1 * var2)**(n / 2) * radial * arc

  return expectation


@pytest.mark.parametrize("degree", range(5))
def test_rectified_monomial_exact(degree):
  x = _inputs()
  with jax.enable_x64(True):
    k = _layer_kernels(lambda: stax.RectifiedMonomial(degree), x)
  nngp, _ = _reference(None, None, x, _rectified_expectation(degree))
  np.testing.assert_allclose(k.nngp, nngp, rtol=1e-10, atol=1e-12)
  if degree:
    dots, _ = _reference(None, None, x, _rectified_expectation(degree - 1))
    pre = W_STD**2 * x @ x.T / x.shape[1] + B_STD**2
    np.testing.assert_allclose(k.ntk, degree**2 * dots * pre, rtol=1e-10,
                               atol=1e-12)
  else:
    np.testing.assert_array_equal(k.ntk, 0)
  # Relu is the degree-1 case.
  if degree == 1:
    with jax.enable_x64(True):
      r = _layer_kernels(stax.Relu, x)
    np.testing.assert_allclose(k.nngp, r.nngp, rtol=1e-12)
    np.testing.assert_allclose(k.ntk, r.ntk, rtol=1e-12)


def test_hermite_is_correlation_power_on_unit_variance():
  x = np.random.RandomState(3).randn(4, 6)
  x = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
  _, _, kernel_fn = stax.serial(stax.Dense(1, 1.0), stax.Hermite(3))
  with pytest.warns(UserWarning, match="unit-variance"):
    k = kernel_fn(jnp.asarray(x, jnp.float32), None, ("nngp", "ntk"))
  rho = x @ x.T / x.shape[1]
  he3 = lambda t: (t**3 - 3 * t) / np.sqrt(6)
  d_he3 = lambda t: (3 * t**2 - 3) / np.sqrt(6)
  for i, j in [(0, 1), (1, 2), (2, 2)]:
    ref = _gh_expectation(he3, he3, 1.0, 1.0, rho[i, j])
    assert abs(float(k.nngp[i, j]) - ref) < 1e-5
    dref = _gh_expectation(d_he3, d_he3, 1.0, 1.0, rho[i, j])
    assert abs(float(k.ntk[i, j]) - rho[i, j] * dref) < 1e-4


def test_exp_normalized_formula():
  x = _inputs()
  _, _, kernel_fn = stax.serial(stax.Dense(1, W_STD, B_STD),
                                stax.ExpNormalized(1.5, -0.5))
  k = kernel_fn(jnp.asarray(x, jnp.float32), None, ("nngp", "ntk"))
  pre = W_STD**2 * x @ x.T / x.shape[1] + B_STD**2
  s = np.sqrt(np.outer(np.diag(pre), np.diag(pre)))
  e = np.exp(1.5 * (pre / s - 0.5))
  np.testing.assert_allclose(k.nngp, s * e, rtol=2e-6)
  np.testing.assert_allclose(k.ntk, pre * 1.5 * e, rtol=2e-6)
  with pytest.raises(NotImplementedError, match="ExpNormalized"):
    init_fn, apply_fn, _ = stax.ExpNormalized()
    apply_fn((), jnp.ones((2, 3)))


def test_exp_normalized_do_clip_is_what_is_always_done(recwarn):
  # The correlation is always clipped into [-1, 1], so do_clip=True works
  # (the same kernel, no warning).
  x = jnp.asarray(_inputs(), jnp.float32)
  kernels = [stax.serial(stax.Dense(1, W_STD, B_STD),
                         stax.ExpNormalized(1.5, -0.5, do_clip=c))[2]
             for c in (False, True)]
  k0, k1 = (kf(x, None, ("nngp", "ntk")) for kf in kernels)
  np.testing.assert_array_equal(k1.nngp, k0.nngp)
  np.testing.assert_array_equal(k1.ntk, k0.ntk)
  # Correlation 1 on the diagonal: var * exp(gamma (1 + shift)).
  xn = np.asarray(x, np.float64)
  var = W_STD**2 * np.sum(xn * xn, 1) / xn.shape[1] + B_STD**2
  np.testing.assert_allclose(np.diag(k1.nngp), var * np.exp(1.5 * 0.5),
                             rtol=2e-6)
  assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


# --- escape hatches ----------------------------------------------------------

def _relu_nngp(c, v1, v2):
  s = jnp.sqrt(v1 * v2)
  t = jnp.arccos(jnp.clip(c / s, -1, 1))
  return (s * jnp.sin(t) + (jnp.pi - t) * c) / (2 * jnp.pi)


def _relu_dot(c, v1, v2):
  return (jnp.pi - jnp.arccos(jnp.clip(c / jnp.sqrt(v1 * v2), -1, 1))) / (
      2 * jnp.pi)


def _erf_nngp(c, v1, v2):
  return 2 / jnp.pi * jnp.arcsin(2 * c / jnp.sqrt((1 + 2 * v1) *
                                                  (1 + 2 * v2)))


def _sin_nngp(c, v1, v2):
  return 0.5 * (jnp.exp(-(v1 + v2) / 2 + c) - jnp.exp(-(v1 + v2) / 2 - c))


def _deep(act):
  return stax.serial(stax.Dense(8, 1.5, 0.2), act, stax.Dense(8, 1.2, 0.1),
                     act, stax.Dense(1, 0.9, 0.1))


@pytest.mark.parametrize("builtin,custom", [
    (stax.Relu, lambda: stax.Elementwise(jax.nn.relu, _relu_nngp,
                                         _relu_dot)),
    (stax.Erf, lambda: stax.Elementwise(jax.scipy.special.erf, _erf_nngp)),
    (stax.Sin, lambda: stax.Elementwise(jnp.sin, _sin_nngp)),
], ids=["Relu", "Erf", "Sin"])
def test_elementwise_equals_builtin(builtin, custom):
  x1 = jnp.asarray(_inputs(), jnp.float32)
  x2 = x1[:3] * 0.5 + 0.3
  for xx in (x2, None):
    want = _deep(builtin())[2](x1, xx, ("nngp", "ntk"))
    got = _deep(custom())[2](x1, xx, ("nngp", "ntk"))
    np.testing.assert_allclose(got.nngp, want.nngp, rtol=1e-4, atol=1e-5)
    # Autodiff of arcsin/arccos at correlation 1 is 0/0-prone: compare the
    # NTK off the diagonal for x2=None.
    mask = np.ones(want.ntk.shape, bool) if xx is not None else \
        ~np.eye(len(x1), dtype=bool)
    np.testing.assert_allclose(np.asarray(got.ntk)[mask],
                               np.asarray(want.ntk)[mask], rtol=1e-3,
                               atol=1e-4)


@pytest.mark.parametrize("name,make,fn", [
    ("Erf", stax.Erf, jax.scipy.special.erf),
    ("Gelu", stax.Gelu, jax.nn.gelu),
    ("Sin", stax.Sin, jnp.sin),
])
def test_elementwise_numerical_matches_closed_form(name, make, fn):
  if name == "Gelu":
    fn = lambda x: jax.nn.gelu(x, approximate=False)
  # Unit-scale pre-activation variances (deg = 25 is ~1e-3 there; larger
  # variances need a larger deg, see docs/activations.md).
  x1 = jnp.asarray(0.6 * _inputs(), jnp.float32)
  x2 = x1[:3] * 0.5 + 0.3
  for xx in (None, x2):
    want = _deep(make())[2](x1, xx, ("nngp", "ntk"))
    got = _deep(stax.ElementwiseNumerical(fn, deg=25))[2](x1, xx,
                                                         ("nngp", "ntk"))
    # The NTK integrates fn' (for Erf a narrow Gaussian), which quadrature
    # resolves less well than fn itself.
    for a, b, tol in ((got.nngp, want.nngp, 1e-3), (got.ntk, want.ntk, 1e-2)):
      assert np.abs(np.asarray(a) - b).max() <= tol * np.abs(b).max()


def test_elementwise_numerical_with_df_and_apply_fn():
  init_fn, apply_fn, kernel_fn = stax.ElementwiseNumerical(jnp.sin, 25,
                                                           jnp.cos)
  x = jnp.linspace(-2, 2, 6).reshape(2, 3)
  np.testing.assert_allclose(apply_fn((), x), jnp.sin(x))
  a = _deep(stax.ElementwiseNumerical(jnp.sin, 25, jnp.cos))[2](
      x, None, "ntk")
  b = _deep(stax.Sin())[2](x, None, "ntk")
  np.testing.assert_allclose(a, b, rtol=1e-3)


# --- derivatives of kernels in their inputs at x = 0 -------------------------

GRAD_CASES = {
    "Relu": stax.Relu, "Erf": stax.Erf, "Gelu": stax.Gelu, "Sin": stax.Sin,
    "Rbf": stax.Rbf, "Exp": lambda: stax.Exp(1.0, 0.5),
    "Gaussian": stax.Gaussian, "Gabor": stax.Gabor,
    "ExpNormalized": stax.ExpNormalized,
    "Polynomial": lambda: stax.Polynomial([0.1, 1.0, 0.5]),
    "RectifiedMonomial2": lambda: stax.RectifiedMonomial(2),
    "Abs": stax.Abs, "LeakyRelu": lambda: stax.LeakyRelu(0.1),
    "Tanh": lambda: stax.Tanh(deg=12),
    "Numerical": lambda: stax.ElementwiseNumerical(jnp.tanh, deg=8),
}


_GRAD_FAST = {"Relu", "Erf", "Gelu", "Tanh", "Numerical", "Polynomial",
              "RectifiedMonomial2", "ExpNormalized"}


@pytest.mark.parametrize("name", [
    n if n in _GRAD_FAST else pytest.param(n, marks=pytest.mark.slow)
    for n in sorted(GRAD_CASES)])
def test_grad_at_zero_input_is_finite_and_matches_fd(name):
  act = GRAD_CASES[name]
  kernel_fn = stax.serial(stax.Dense(8, 1.2, 0.3), act(),
                          stax.Dense(8, 1.1, 0.2), act(),
                          stax.Dense(1))[2]
  with jax.enable_x64(True):
    rs = np.random.RandomState(0)
    x = jnp.asarray(rs.randn(3, 4))
    weights = jnp.asarray(rs.randn(3, 3))

    def f(row):  # x1 with its first row replaced; x2=None (diagonal too)
      k = kernel_fn(x.at[0].set(row), None, ("nngp", "ntk"))
      return jnp.sum(weights * (k.nngp + k.ntk))

    zero = jnp.zeros(4)
    g = jax.grad(f)(zero)
    assert np.all(np.isfinite(g)), g
    eps = 1e-5
    fd = np.array([(f(zero.at[i].set(eps)) - f(zero.at[i].set(-eps))) /
                   (2 * eps) for i in range(4)])
    np.testing.assert_allclose(g, fd, rtol=1e-4, atol=1e-6)
    # Forward mode too.
    _, t = jax.jvp(f, (zero,), (jnp.ones(4),))
    np.testing.assert_allclose(t, fd.sum(), rtol=1e-4, atol=1e-6)


# --- bad input ---------------------------------------------------------------

@pytest.mark.parametrize("make", [stax.Gelu, stax.Sin, stax.Tanh,
                                  lambda: stax.Monomial(2),
                                  lambda: stax.ElementwiseNumerical(jnp.tanh,
                                                                    5)])
def test_activation_after_activation_needs_affine(make):
  kernel_fn = stax.serial(stax.Dense(4), stax.Relu(), make())[2]
  with pytest.raises(ValueError, match="Gaussian pre-activations") as e:
    kernel_fn(jnp.ones((2, 3)), None, "nngp")
  assert "Dense" in str(e.value)
  with pytest.raises(ValueError, match="applied to the inputs"):
    make()[2](jnp.ones((2, 3)), None, "nngp")


@pytest.mark.parametrize("degree", [7, 6, -1, 2.5])
def test_monomial_degree_out_of_range(degree):
  with pytest.raises(ValueError, match=r"Monomial: degree must be .* 0\.\.5"):
    stax.Monomial(degree)
  with pytest.raises(NotImplementedError):  # as neural-tangents raised
    stax.Monomial(degree)


def test_bad_degrees_and_deg():
  with pytest.raises(ValueError, match="RectifiedMonomial"):
    stax.RectifiedMonomial(-1)
  with pytest.raises(ValueError, match="Hermite"):
    stax.Hermite(-2)
  with pytest.raises(ValueError, match="ElementwiseNumerical.*deg >= 1"):
    stax.ElementwiseNumerical(jnp.tanh, 0)
  with pytest.raises(ValueError, match="Tanh.*deg >= 1"):
    stax.Tanh(deg=0)


def test_non_callable_functions():
  with pytest.raises(TypeError, match="ElementwiseNumerical: fn must be a "
                     "callable"):
    stax.ElementwiseNumerical("tanh", 10)
  with pytest.raises(TypeError, match="Elementwise: nngp_fn must be a "
                     "callable"):
    stax.Elementwise(jnp.tanh, 3.0)
  with pytest.raises(ValueError, match="neither"):
    stax.Elementwise()
  with pytest.raises(TypeError, match="MaxPool: fn must be a callable"):
    stax.MaxPool((2,), fn=1)


def test_elementwise_without_nngp_fn_has_no_kernel():
  init_fn, apply_fn, kernel_fn = stax.serial(
      stax.Dense(3), stax.Elementwise(jnp.tanh))
  _, params = init_fn(jax.random.PRNGKey(0), (2, 3))
  assert apply_fn(params, jnp.ones((2, 3))).shape == (2, 3)
  with pytest.raises(NotImplementedError, match="no nngp_fn"):
    kernel_fn(jnp.ones((2, 3)), None, "nngp")


@pytest.mark.parametrize("name,make,fn", [
    ("Gelu", stax.Gelu, lambda x: jax.nn.gelu(x, approximate=False)),
    ("Sin", lambda: stax.Sin(2.0, 0.5, 0.1), lambda x: 2 * jnp.sin(
        0.5 * x + 0.1)),
    ("Rbf", stax.Rbf, lambda x: jnp.sqrt(2.) * jnp.sin(jnp.sqrt(2.) * x +
                                                        jnp.pi / 4)),
    ("Gabor", stax.Gabor, lambda x: jnp.exp(-x**2) * jnp.sin(x)),
    ("RectifiedMonomial", lambda: stax.RectifiedMonomial(3),
     lambda x: jnp.where(x >= 0, x**3, 0.0)),
    ("Hermite", lambda: stax.Hermite(2), lambda x: (x**2 - 1) / jnp.sqrt(2.)),
    ("Polynomial", lambda: stax.Polynomial([1., 2., 3.]),
     lambda x: 1 + 2 * x + 3 * x**2),
    ("Mish", stax.Mish, lambda x: x * jnp.tanh(jax.nn.softplus(x))),
    ("Swish", stax.Swish, jax.nn.silu),
])
def test_apply_fn(name, make, fn):
  _, apply_fn, _ = make()
  x = jnp.linspace(-3, 3, 12).reshape(3, 4)
  np.testing.assert_allclose(apply_fn((), x), fn(x), rtol=1e-5, atol=1e-6)
