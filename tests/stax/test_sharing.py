"""`stax.sharing`: one compiled program per architecture (issue 15)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.compiles import count_compiles
from widenets import stax
from widenets.stax import sharing


def _net(W_std, b_std=0.05, a=1.0):
  return stax.serial(stax.Dense(64, W_std=W_std, b_std=b_std),
                     stax.Erf(a=a),
                     stax.Dense(1, W_std=W_std, b_std=b_std))


def _x(n=7, seed=0, dtype=np.float32):
  return np.random.RandomState(seed).randn(n, 3).astype(dtype)


def _reference(W_std, x1, x2, get, b_std=0.05, a=1.0):
  """The kernel of `_net` computed by this network's own program."""
  kernel_fn = _net(W_std, b_std, a)[2]
  kernel_fn.architecture = None
  return kernel_fn(x1, x2, get)


@pytest.mark.parametrize("jit", [False, True])
def test_sweep_compiles_one_program(jit):
  x = _x()
  values = np.linspace(0.5, 2.5, 6)
  call = lambda k: (jax.jit(k, static_argnames="get") if jit else k)(
      x, None, "ntk")
  call(_net(0.1)[2])  # compiles
  with count_compiles() as compiles:
    out = [call(_net(float(w))[2]) for w in values]
  # A user's own jax.jit of each network compiles its (small) outer
  # program; the kernel computation inside is the one shared program.
  assert len(compiles) == (len(values) if jit else 0)
  for w, k in zip(values, out):
    np.testing.assert_allclose(k, _reference(float(w), x, None, "ntk"),
                               rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("x64", [False, True])
@pytest.mark.parametrize("x2_seed", [None, 1])
def test_shared_equals_direct(x64, x2_seed):
  with jax.enable_x64(x64):
    dtype = np.float64 if x64 else np.float32
    x1 = _x(dtype=dtype)
    x2 = None if x2_seed is None else _x(5, x2_seed, dtype)
    got = _net(1.3, 0.2, a=0.7)[2](x1, x2, ("nngp", "ntk"))
    want = _reference(1.3, x1, x2, ("nngp", "ntk"), 0.2, 0.7)
    tol = 1e-12 if x64 else 2e-6
    for g, w in zip(got, want):
      assert g.dtype == w.dtype
      np.testing.assert_allclose(g, w, rtol=tol, atol=tol)


def test_structure_keeps_non_hyperparameters_apart():
  x = _x()
  with_bias = _net(1.0, 0.3)[2](x, None, "nngp")
  no_bias = _net(1.0, None)[2](x, None, "nngp")
  np.testing.assert_allclose(no_bias, _reference(1.0, x, None, "nngp", None),
                             rtol=2e-6)
  assert not np.allclose(with_bias, no_bias)


def test_vmap_over_hyperparameters():
  x = _x()
  kernel_fn = _net(1.0)[2]
  hyper = sharing.architecture(kernel_fn).hyper
  values = jnp.linspace(0.5, 2.0, 4)

  def ntk(w):
    h = tuple(dict(p, W_std=w) if "W_std" in p else p for p in hyper)
    return sharing.with_hyperparameters(kernel_fn, h)(x, None, "ntk")

  got = jax.vmap(ntk)(values)
  for w, k in zip(values, got):
    np.testing.assert_allclose(k, _reference(float(w), x, None, "ntk"),
                               rtol=2e-6, atol=1e-7)


def test_grad_in_a_hyperparameter():
  x = _x()
  f = lambda w: jnp.sum(sharing.with_hyperparameters(
      _net(1.0)[2], ({"W_std": w, "b_std": 0.05}, {"a": 1.0, "b": 1.0,
                                                   "c": 0.0},
                     {"W_std": w, "b_std": 0.05}))(x, None, "ntk"))
  g = jax.grad(f)(1.2)
  eps = 1e-3
  fd = (f(1.2 + eps) - f(1.2 - eps)) / (2 * eps)
  np.testing.assert_allclose(g, fd, rtol=1e-2)


def test_undeclared_argument_is_structure():
  # Polynomial's coefficients are not declared: networks differing in them
  # are different structures (own programs), never the first one's numbers.
  x = _x()
  k1 = stax.serial(stax.Dense(8, 1.5), stax.Polynomial([0.1, 1.0, 0.5]),
                   stax.Dense(1))[2]
  k2 = stax.serial(stax.Dense(8, 1.5), stax.Polynomial([0.1, 2.0, 0.5]),
                   stax.Dense(1))[2]
  assert (sharing.architecture(k1) is None or
          sharing.architecture(k1).structure !=
          sharing.architecture(k2).structure)
  assert not np.allclose(k1(x, None, "ntk"), k2(x, None, "ntk"))


def test_errors_name_the_layer_by_its_values():
  kernel_fn = stax.serial(stax.Dense(8, W_std=1.5), stax.Erf(a=2.0),
                          stax.Erf(a=3.0))[2]
  with pytest.raises(ValueError, match=r"Erf\(3\.0.*Gaussian"):
    kernel_fn(_x(), None, "nngp")


def test_with_hyperparameters_needs_an_architecture():
  kernel_fn = stax.serial(stax.Dense(8), stax.Polynomial([0.0, 1.0]))[2]
  with pytest.raises(ValueError, match="no recorded architecture"):
    sharing.with_hyperparameters(kernel_fn, ())


# One network per family, as a function of one swept value ``v`` (every
# declared hyperparameter moves with it, none ever equal to another: which
# values coincide is part of the program's key).
def _image(n=3, seed=0):
  return np.random.RandomState(seed).randn(n, 4, 4, 2).astype(np.float32)


def _tokens(n=3, seed=0):
  return np.random.RandomState(seed).randn(n, 3, 4).astype(np.float32)


def _conv_net(conv):
  return lambda v: stax.serial(
      conv(4, (2, 2), padding="SAME", W_std=v, b_std=0.3 * v), stax.Relu(),
      stax.Flatten(), stax.Dense(1, W_std=1.7))


def _act_net(act):
  return lambda v: stax.serial(stax.Dense(16, W_std=1.7, b_std=0.2),
                               act(v), stax.Dense(1, W_std=1.9))


SWEEPS = {
    "Conv": (_conv_net(stax.Conv), _image),
    "ConvTranspose": (_conv_net(stax.ConvTranspose), _image),
    "ConvLocal": (_conv_net(stax.ConvLocal), _image),
    "Sin": (_act_net(lambda v: stax.Sin(a=v, b=0.7 * v, c=0.3 * v)), _x),
    "Cos": (_act_net(lambda v: stax.Cos(a=v, b=0.7 * v, c=0.3 * v)), _x),
    "Rbf": (_act_net(lambda v: stax.Rbf(gamma=0.4 * v)), _x),
    "Exp": (_act_net(lambda v: stax.Exp(a=v, b=0.3 * v)), _x),
    "Gaussian": (_act_net(lambda v: stax.Gaussian(a=v, b=-0.6 * v)), _x),
    "ExpNormalized": (_act_net(lambda v: stax.ExpNormalized(
        gamma=v, shift=-0.6 * v)), _x),
    "LayerNorm": (_act_net(lambda v: stax.serial(
        stax.LayerNorm(eps=0.1 * v), stax.Relu())), _x),
    "GlobalSelfAttention": (lambda v: stax.serial(
        stax.Dense(8, W_std=1.7), stax.GlobalSelfAttention(
            8, 8, 8, 2, W_key_std=v, W_value_std=0.9 * v,
            W_query_std=0.8 * v, W_out_std=0.6 * v, b_std=0.3 * v,
            pos_emb_type="SUM", W_pos_emb_std=0.2 * v),
        stax.GlobalAvgPool(), stax.Dense(1, W_std=1.9)), _tokens),
}


@pytest.mark.parametrize("family", list(SWEEPS))
def test_sweep_of_declared_hyperparameters_compiles_once(family):
  make, inputs = SWEEPS[family]
  x1, x2 = inputs(), inputs(2, 1)
  values = np.linspace(0.55, 1.45, 20)
  make(0.52)[2](x1, x2, "ntk")  # compiles
  with count_compiles() as compiles:
    out = [make(float(v))[2](x1, x2, "ntk") for v in values]
  assert not compiles
  for i in (0, len(values) - 1):
    reference = make(float(values[i]))[2]
    reference.architecture = None  # its own program
    np.testing.assert_allclose(out[i], reference(x1, x2, "ntk"), rtol=2e-5,
                               atol=1e-6)
  assert not np.allclose(out[0], out[-1])
