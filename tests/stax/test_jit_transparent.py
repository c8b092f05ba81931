"""kernel_fn under jax.jit, jax.grad and jax.vmap gives the direct call's
numbers, keeps its fast paths, and raises overflow and bad-input errors
from inside a traced computation, naming the layer (issue 15)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from widenets import stax
from widenets.stax import chunking, overflow, sharing
from widenets.stax.overflow import KernelOverflowError

GET = ("nngp", "ntk")


def _net(act):
  return stax.serial(stax.Dense(64, W_std=1.4, b_std=0.1), act(),
                     stax.Dense(64, W_std=1.4, b_std=0.1), act(),
                     stax.Dense(1, W_std=1.4, b_std=0.1))[2]


def _x(n, seed, dtype):
  return np.random.RandomState(seed).randn(n, 5).astype(dtype)


@pytest.fixture
def small_blocks(monkeypatch, packed_small):
  """x1 vs x2 calls run in row blocks of 8 (`chunking`), x2=None calls
  packed (`packing`)."""
  monkeypatch.setattr(chunking, "BLOCK_BYTES", 0)
  monkeypatch.setattr(chunking, "MIN_ROWS", 8)


def _close(a, b, x64):
  tol = 1e-12 if x64 else 2e-6
  for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    assert u.dtype == v.dtype
    np.testing.assert_allclose(u, v, rtol=tol, atol=tol)


@pytest.mark.parametrize("x64", [False, True])
@pytest.mark.parametrize("act", [stax.Relu, stax.Erf], ids=["Relu", "Erf"])
@pytest.mark.parametrize("with_x2", [False, True])
def test_jit_equals_direct(small_blocks, x64, act, with_x2):
  with jax.enable_x64(x64):
    dtype = np.float64 if x64 else np.float32
    kernel_fn = _net(act)
    x1 = _x(21, 0, dtype)
    x2 = _x(9, 1, dtype) if with_x2 else None
    direct = kernel_fn(x1, x2, GET)
    jitted = jax.jit(kernel_fn, static_argnames="get")(x1, x2, GET)
    _close(jitted, direct, x64)


@pytest.mark.parametrize("x64", [False, True])
def test_grad_in_inputs_equals_under_jit(x64):
  with jax.enable_x64(x64):
    dtype = np.float64 if x64 else np.float32
    kernel_fn = _net(stax.Erf)
    x1, x2 = _x(6, 0, dtype), _x(4, 1, dtype)
    loss = lambda a: jnp.sum(kernel_fn(a, x2, "ntk") ** 2)
    g = jax.grad(loss)(x1)
    _close(jax.jit(jax.grad(loss))(x1), g, x64)
    eps = 1e-6 if x64 else 1e-2
    d = np.zeros_like(x1)
    d[2, 3] = eps
    fd = (loss(x1 + d) - loss(x1 - d)) / (2 * eps)
    np.testing.assert_allclose(g[2, 3], fd, rtol=1e-6 if x64 else 2e-2)


@pytest.mark.parametrize("x64", [False, True])
def test_vmap_over_inputs_equals_direct(x64):
  with jax.enable_x64(x64):
    dtype = np.float64 if x64 else np.float32
    kernel_fn = _net(stax.Relu)
    xs = np.stack([_x(7, s, dtype) for s in range(3)])
    got = jax.vmap(lambda a: kernel_fn(a, None, GET))(xs)
    for i in range(3):
      _close(jax.tree_util.tree_map(lambda v: v[i], got),
             kernel_fn(xs[i], None, GET), x64)


def _deep_relu():
  return stax.serial(*([stax.Dense(8, W_std=40.0), stax.Relu()] * 30),
                     stax.Dense(1))[2]


def test_overflow_direct_names_the_layer():
  x = _x(5, 0, np.float32)
  with pytest.raises(KernelOverflowError, match=r"ABRelu.*overflowed"):
    _deep_relu()(x, None, "ntk")


# Under a transformation the error comes from inside the computation: JAX's
# runtime error, whose message holds the direct call's.
TRACED_ERRORS = (jax.errors.JaxRuntimeError, ValueError, FloatingPointError)
OVERFLOW = r"ABRelu\(0, 1\): the kernel overflowed float32.*float64"


def _transforms():
  jit = lambda f, x: jax.jit(f)(x)
  grad = lambda f, x: jax.grad(lambda a: jnp.sum(f(a)))(x)
  vmap = lambda f, x: jax.vmap(f)(np.stack([x * 1e-6, x]))
  jit_vmap = lambda f, x: jax.jit(jax.vmap(f))(np.stack([x, x * 1e-6]))
  vmap_vmap = lambda f, x: jax.vmap(jax.vmap(f))(np.stack([np.stack([x, x])]
                                                          * 2))
  vmap_grad = lambda f, x: jax.vmap(jax.grad(lambda a: jnp.sum(f(a))))(
      np.stack([x * 1e-6, x]))
  return dict(jit=jit, grad=grad, vmap=vmap, jit_vmap=jit_vmap,
              vmap_vmap=vmap_vmap, vmap_grad=vmap_grad)


def _overflowing_relu():
  return stax.serial(*([stax.Dense(8, W_std=1e3), stax.Relu()] * 8),
                     stax.Dense(1))[2]


_SLOW = pytest.mark.slow  # nested transformations: more programs to compile


@pytest.mark.parametrize("transform,with_x2", [
    ("jit", False), ("jit", True), ("grad", False), ("vmap", True),
    pytest.param("jit_vmap", False, marks=_SLOW),
    pytest.param("vmap_vmap", False, marks=_SLOW),
    pytest.param("vmap_grad", False, marks=_SLOW)])
def test_overflow_under_transformations_names_the_layer(transform, with_x2):
  kernel_fn = _overflowing_relu()
  x = _x(5, 0, np.float32)
  x2 = _x(3, 1, np.float32) if with_x2 else None
  with pytest.raises(TRACED_ERRORS, match=OVERFLOW):
    out = _transforms()[transform](lambda a: kernel_fn(a, x2, "ntk"), x)
    jax.block_until_ready(out)


@pytest.mark.slow
@pytest.mark.parametrize("jit", [False, True])
def test_overflow_of_float32_inputs_under_x64_says_float32(jit):
  # With x64 on, a float32 kernel still overflows float32: the message
  # names the kernel's dtype (not JAX's default float) and says what to do.
  kernel_fn = _overflowing_relu()
  if jit:
    kernel_fn = jax.jit(kernel_fn, static_argnames="get")
  x = _x(5, 0, np.float32)
  with jax.enable_x64(True):
    with pytest.raises((KernelOverflowError,) + TRACED_ERRORS,
                       match=r"overflowed float32.*Pass float64 inputs"):
      jax.block_until_ready(kernel_fn(x, None, "ntk"))
    assert kernel_fn(x.astype(np.float64), None, "ntk").dtype == np.float64


def test_overflow_in_traced_hyperparameters_names_the_layer():
  kernel_fn = stax.serial(*([stax.Dense(8, W_std=1.0), stax.Relu()] * 8),
                          stax.Dense(1))[2]
  hyper = sharing.architecture(kernel_fn).hyper
  x = _x(5, 0, np.float32)

  def ntk(w):
    scaled = jax.tree_util.tree_map(lambda v: v * w, hyper)
    return sharing.with_hyperparameters(kernel_fn, scaled)(x, None, "ntk")

  # float32 scales: float64 ones (the default under x64) would make the
  # kernel float64, which does not overflow.
  np.testing.assert_allclose(jax.vmap(ntk)(jnp.ones(2, jnp.float32))[0],
                             ntk(1.0), rtol=2e-6)
  with pytest.raises(TRACED_ERRORS, match=OVERFLOW):
    jax.block_until_ready(jax.vmap(ntk)(jnp.array([1.0, 1e3], jnp.float32)))


@pytest.mark.parametrize("transform", ["jit", "vmap", "grad"])
def test_nan_inputs_under_transformations_name_the_argument(transform):
  kernel_fn = _net(stax.Erf)
  x = _x(6, 0, np.float32)
  x[2, 1] = np.nan
  with pytest.raises(TRACED_ERRORS, match=r"x1 of shape \(6, 5\) contains "
                                          r"NaN or infinite values"):
    out = _transforms()[transform](lambda a: kernel_fn(a, None, "ntk"), x)
    jax.block_until_ready(out)


@pytest.mark.parametrize("transform", ["jit", "vmap", "jit_vmap", "grad",
                                       "vmap_grad"])
def test_finite_traced_call_runs_no_host_callback(monkeypatch, transform):
  calls = []
  original = overflow._report_first
  monkeypatch.setattr(overflow, "_report_first",
                      lambda *a: calls.append(1) or original(*a))
  kernel_fn = _net(stax.Relu)
  x = _x(7, 0, np.float32)
  f = lambda a: kernel_fn(a, None, "ntk")
  got = _transforms()[transform](f, x)
  assert not calls
  if transform == "jit":
    np.testing.assert_allclose(got, f(x), rtol=2e-6, atol=1e-7)


def test_traced_call_has_no_per_layer_flags():
  # The compiled program of a traced call and of a direct call are the same:
  # only the outputs' finiteness, as one fused check.
  kernel_fn = _net(stax.Relu)
  x = _x(9, 0, np.float32)
  text = jax.jit(kernel_fn, static_argnames="get").lower(
      x, None, GET).as_text()
  assert text.count("stablehlo.case") + text.count("stablehlo.if") >= 1
