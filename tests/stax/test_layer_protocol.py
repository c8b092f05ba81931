"""The kernel_fn protocol: x2=None (packed) equals x2=x1, chaining kernels,
jit, gradients in the inputs, float64, the requirements algebra, and
hypothesis properties (symmetry, PSD) over random small architectures."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import widenets as nt
from widenets import stax
from widenets.stax import Requirements, layer

from .mc import inputs

GET = ("nngp", "ntk")


def _deep(act, depth, **dense):
  layers = []
  for _ in range(depth):
    layers += [stax.Dense(64, **dense), act()]
  return stax.serial(*layers, stax.Dense(1, **dense))


def _residual_net():
  block = stax.serial(
      stax.FanOut(2),
      stax.parallel(stax.serial(stax.Relu(), stax.Dense(8, W_std=1.3,
                                                        b_std=0.1)),
                    stax.Identity()),
      stax.FanInSum())
  return stax.serial(stax.Dense(8, b_std=0.1), block, block, stax.Erf(),
                     stax.Dense(1))


NETS = {
    # repeat (a scan) keeps the 20-layer compile cheap; erf10 is unrolled.
    "relu20": lambda: stax.serial(
        stax.Dense(64, W_std=1.4, b_std=0.1), stax.Relu(),
        stax.repeat(stax.serial(stax.Dense(64, W_std=1.4, b_std=0.1),
                                stax.Relu()), 19),
        stax.Dense(1, W_std=1.4, b_std=0.1)),
    "erf10": lambda: _deep(stax.Erf, 10, W_std=1.5, b_std=0.05),
    "abs8_nobias": lambda: _deep(stax.Abs, 8, W_std=1.0),
    "residual": _residual_net,
}


@pytest.fixture(scope="module")
def nets():
  return {name: make() for name, make in NETS.items()}


# --- x2=None -----------------------------------------------------------------

# n=37: several samples per packed block, and padding.
@pytest.mark.parametrize("name,n", [("relu20", 16), ("relu20", 37),
                                    ("erf10", 16), ("abs8_nobias", 37),
                                    ("residual", 37)])
def test_x2_none_equals_x2_x1(packed_small, nets, name, n):
  kernel_fn = nets[name][2]
  x = jax.random.normal(jax.random.PRNGKey(n), (n, 6))
  x = x.at[3].set(0.0).at[5].set(x[4])  # a zero input and a repeated one
  k_none = kernel_fn(x, None, ("nngp", "ntk", "cov1"))
  k_same = kernel_fn(x, x, ("nngp", "ntk", "cov1"))
  for a, b in zip(k_none, k_same):
    scale = float(jnp.max(jnp.abs(b)))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * scale)
  for m in k_none[:2]:
    np.testing.assert_array_equal(m, m.T)  # mirrored, so exactly symmetric


def test_x2_none_kernel_metadata():
  kernel_fn = stax.serial(stax.Dense(3), stax.Relu())[2]
  x1, x2 = inputs()
  k = kernel_fn(x1, None)
  assert k.cov2 is None and bool(k.x1_is_x2)
  assert not k.packed and k.nngp.shape == (6, 6)
  k12 = kernel_fn(x1, x2)
  assert k12.cov2.shape == (4,) and not bool(k12.x1_is_x2)
  assert k12.shape1 == (6, 3) and k12.shape2 == (4, 3)


# --- chaining, jit -------------------------------------------------------------

@pytest.mark.parametrize("x2_none", [True, False])
def test_chaining_equals_one_call(x2_none):
  x1, x2 = inputs()
  x2 = None if x2_none else x2
  a = stax.serial(stax.Dense(8, W_std=1.5, b_std=0.1), stax.Erf())
  b = stax.serial(stax.Dense(8, W_std=1.2, b_std=0.2), stax.Relu(),
                  stax.Dense(1))
  full = stax.serial(a, b)[2](x1, x2)
  k_mid = a[2](x1, x2)
  assert isinstance(k_mid, nt.Kernel)
  chained = b[2](k_mid)
  for name in ("nngp", "ntk", "cov1", "cov2"):
    u, v = getattr(chained, name), getattr(full, name)
    if v is None:
      assert u is None
    else:
      np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(b[2](k_mid, get="ntk"), full.ntk, rtol=1e-5,
                             atol=1e-7)


def test_jit_with_static_get():
  kernel_fn = _deep(stax.Erf, 2, W_std=1.5, b_std=0.05)[2]
  x1, x2 = inputs()
  jitted = jax.jit(kernel_fn, static_argnames="get")
  for get in ("ntk", ("nngp", "ntk")):
    for b in (x2, None):
      ref = kernel_fn(x1, b, get)
      out = jitted(x1, b, get=get)
      for u, v in zip(jax.tree_util.tree_leaves(out),
                      jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(u, v, rtol=1e-6)
  k = jax.jit(kernel_fn)(x1, x2)  # get=None: the whole Kernel
  assert isinstance(k, nt.Kernel)
  np.testing.assert_allclose(k.nngp, kernel_fn(x1, x2, "nngp"), rtol=1e-6)


def test_vmap_over_inputs():
  kernel_fn = stax.serial(stax.Dense(4, b_std=0.1), stax.Relu(),
                          stax.Dense(1))[2]
  xs = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 4))
  out = jax.vmap(lambda x: kernel_fn(x, None, "ntk"))(xs)
  for i in range(3):
    np.testing.assert_allclose(out[i], kernel_fn(xs[i], None, "ntk"),
                               rtol=1e-5, atol=1e-7)


# --- gradients in the inputs ---------------------------------------------------

@pytest.mark.parametrize("act", [stax.Relu, stax.Erf])
@pytest.mark.parametrize("b_std", [None, 0.1])
def test_grad_at_zero_input_is_finite(act, b_std):
  kernel_fn = stax.serial(stax.Dense(8, W_std=1.3, b_std=b_std), act(),
                          stax.Dense(8, W_std=1.3, b_std=b_std), act(),
                          stax.Dense(1))[2]
  _, x2 = inputs()
  x1 = jnp.zeros((3, 8)).at[1].set(x2[0])

  def loss(x, x2):
    k = kernel_fn(x, x2, ("nngp", "ntk"))
    return jnp.sum(k.nngp) + jnp.sum(k.ntk)

  for other in (None, x2):
    # A zero row among others, and an all-zero batch.
    for x in (x1, jnp.zeros((3, 8))):
      g = jax.grad(loss)(x, other)
      assert np.all(np.isfinite(g)), (g, other is None)


def test_grad_matches_finite_differences():
  kernel_fn = stax.serial(stax.Dense(8, W_std=1.3, b_std=0.2), stax.Erf(),
                          stax.Dense(1))[2]
  x1, x2 = inputs()
  f = lambda x: jnp.sum(kernel_fn(x, x2, "ntk") ** 2)
  g = jax.grad(f)(x1)
  d = jax.random.normal(jax.random.PRNGKey(5), x1.shape)
  eps = 1e-2
  fd = (f(x1 + eps * d) - f(x1 - eps * d)) / (2 * eps)
  np.testing.assert_allclose(jnp.sum(g * d), fd, rtol=2e-2)


# --- float64 -------------------------------------------------------------------

_X64_SCRIPT = r"""
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
from widenets import stax
x = np.asarray(json.loads(sys.stdin.read()))
out = {}
for name, net in [
    ("relu", stax.serial(*[stax.Dense(8, W_std=1.4, b_std=0.1), stax.Relu()] * 6,
                         stax.Dense(1))),
    ("erf", stax.serial(stax.Dense(8, W_std=1.5, b_std=0.05), stax.Erf(),
                        stax.Dense(8, W_std=1.5, b_std=0.05), stax.Erf(),
                        stax.Dense(1))),
]:
  k = net[2](x, None, ("nngp", "ntk"))
  assert k.nngp.dtype == np.float64, k.nngp.dtype
  out[name] = [np.asarray(k.nngp).tolist(), np.asarray(k.ntk).tolist()]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_float64_agrees_with_float32():
  x = np.random.RandomState(0).randn(7, 5)
  x[2] = 0.0
  x[4] = x[3]
  env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", _X64_SCRIPT],
                        input=json.dumps(x.tolist()), capture_output=True,
                        text=True, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  res = json.loads(proc.stdout.strip().splitlines()[-1])
  nets = {
      "relu": stax.serial(*[stax.Dense(8, W_std=1.4, b_std=0.1),
                            stax.Relu()] * 6, stax.Dense(1)),
      "erf": stax.serial(stax.Dense(8, W_std=1.5, b_std=0.05), stax.Erf(),
                         stax.Dense(8, W_std=1.5, b_std=0.05), stax.Erf(),
                         stax.Dense(1)),
  }
  for name, net in nets.items():
    k = net[2](jnp.asarray(x, jnp.float32), None, ("nngp", "ntk"))
    assert k.nngp.dtype == jnp.float32
    for a, b in zip(k, res[name]):
      np.testing.assert_allclose(a, np.asarray(b), rtol=1e-4, atol=1e-6)


# --- requirements --------------------------------------------------------------

@layer
def _SpatialMixer():
  """A test layer that needs all spatial pairs (like a pooling layer)."""
  init_fn = lambda rng, input_shape: (input_shape, ())
  apply_fn = lambda params, x, **kw: x
  rule = lambda k, **kw: k
  return init_fn, apply_fn, rule, Requirements(diagonal_spatial_ok=False,
                                               blocker="_SpatialMixer()")


def test_diagonal_spatial_defaults():
  readout = stax.serial(stax.Dense(2), stax.Relu(), stax.Flatten(),
                        stax.Dense(1))
  no_readout = stax.serial(stax.Dense(2), stax.Relu())
  assert readout[2].reqs.default_diagonal_spatial
  assert not no_readout[2].reqs.default_diagonal_spatial
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 5))
  assert no_readout[2](x, None, "nngp").shape == (3, 3, 4, 4)
  mixed = stax.serial(stax.Dense(2), _SpatialMixer(), stax.Flatten())
  assert not mixed[2].reqs.default_diagonal_spatial
  assert mixed[2](x, None, "nngp").shape == (3, 3)
  # After the readout anything goes.
  after = stax.serial(stax.Dense(2), stax.Flatten(), _SpatialMixer())
  assert after[2].reqs.diagonal_spatial_ok


def test_diagonal_spatial_true_on_a_net_that_cannot():
  net = stax.serial(stax.Dense(2), stax.Relu(), _SpatialMixer(),
                    stax.Flatten(), stax.Dense(1))
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 5))
  with pytest.raises(ValueError, match=r"diagonal_spatial=True.*_SpatialMixer"):
    net[2](x, None, "nngp", diagonal_spatial=True)
  # Feeding it a diagonal kernel directly names the layer too.
  k = stax.Dense(2)[2](x, None, diagonal_spatial=True)
  with pytest.raises(ValueError, match=r"_SpatialMixer.*diagonal_spatial"):
    _SpatialMixer()[2](k)


def test_diagonal_spatial_user_override_matches():
  net = stax.serial(stax.Dense(3, b_std=0.1), stax.Erf(), stax.Dense(3))
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 5))
  full = net[2](x, None, "nngp")
  diag = net[2](x, None, "nngp", diagonal_spatial=True)
  np.testing.assert_allclose(diag, jnp.einsum("ijxx->ijx", full), rtol=1e-5,
                             atol=1e-7)


def test_diagonal_batch_false_gives_full_cov1():
  net = stax.serial(stax.Dense(3, b_std=0.1), stax.Relu(), stax.Dense(3))
  x1, x2 = inputs()
  k = net[2](x1, x2, diagonal_batch=False)
  assert k.cov1.shape == (6, 6) and k.cov2.shape == (4, 4)
  k_self = net[2](x1, None)
  np.testing.assert_allclose(k.cov1, k_self.nngp, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.diag(k.cov1), net[2](x1, x2).cov1, rtol=1e-5)


def test_ntk_not_computed_unless_asked():
  net = stax.serial(stax.Dense(3), stax.Relu(), stax.Dense(1))
  x1, _ = inputs()
  k = net[2](x1, None, ("nngp", "cov1"))
  assert k.nngp.shape == (6, 6)
  jaxpr = str(jax.make_jaxpr(lambda x: net[2](x, None, "nngp"))(x1))
  jaxpr_ntk = str(jax.make_jaxpr(lambda x: net[2](x, None, "ntk"))(x1))
  assert len(jaxpr) < len(jaxpr_ntk)


# --- hypothesis ----------------------------------------------------------------

_ACTS = {"relu": stax.Relu, "erf": stax.Erf,
         "leaky": lambda: stax.LeakyRelu(0.2)}

architectures = st.lists(
    st.tuples(st.sampled_from(sorted(_ACTS)),
              st.floats(0.5, 3.0),
              st.one_of(st.none(), st.floats(0.0, 1.0))),
    min_size=1, max_size=4)


@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(arch=architectures, seed=st.integers(0, 2**16),
       scale=st.floats(0.1, 3.0), parameterization=st.sampled_from(
           ["ntk", "standard"]))
def test_symmetric_psd_and_x2_none(arch, seed, scale, parameterization):
  layers = []
  for act, W_std, b_std in arch:
    layers += [stax.Dense(32, W_std=W_std, b_std=b_std,
                          parameterization=parameterization), _ACTS[act]()]
  layers.append(stax.Dense(1, W_std=arch[-1][1], b_std=arch[-1][2],
                           parameterization=parameterization))
  kernel_fn = stax.serial(*layers)[2]
  x = scale * jax.random.normal(jax.random.PRNGKey(seed), (7, 3))
  k = kernel_fn(x, None, ("nngp", "ntk"))
  k_same = kernel_fn(x, x, ("nngp", "ntk"))
  for m, m_same in zip(k, k_same):
    m = np.asarray(m, np.float64)
    assert np.all(np.isfinite(m))
    np.testing.assert_array_equal(m, m.T)
    scale_m = np.abs(m).max()
    eig = np.linalg.eigvalsh(m)
    assert eig.min() >= -1e-5 * scale_m, (eig, scale_m)
    np.testing.assert_allclose(m, m_same, rtol=1e-4, atol=1e-5 * scale_m)
  # x1 vs x2 kernels are the off-diagonal block of the joint kernel.
  x2 = x[:3] * 0.5 + 0.1
  k12 = kernel_fn(x, x2, "nngp")
  k_joint = kernel_fn(jnp.concatenate([x, x2]), None, "nngp")
  np.testing.assert_allclose(k12, k_joint[:7, 7:], rtol=1e-4,
                             atol=1e-5 * float(jnp.max(jnp.abs(k_joint))))


@pytest.mark.parametrize("jit", [False, True])
def test_small_x2_none_is_exactly_symmetric(jit):
  # Found by the test above: with the mirror fused into the kernel's last
  # layer, XLA computed K[4, 6] at two loop positions and the two copies
  # differed by an ulp (NTK, standard parameterization).
  layers = []
  for act, W_std, b_std in [("leaky", 2.0, None), ("erf", 1.0, None),
                            ("erf", 1.5, 0.0)]:
    layers += [stax.Dense(32, W_std=W_std, b_std=b_std,
                          parameterization="standard"), _ACTS[act]()]
  layers.append(stax.Dense(1, W_std=1.5, b_std=0.0,
                           parameterization="standard"))
  kernel_fn = stax.serial(*layers)[2]
  if jit:
    kernel_fn = jax.jit(kernel_fn, static_argnames="get")
  x = jax.random.normal(jax.random.PRNGKey(0), (7, 3))
  for m in kernel_fn(x, None, get=("nngp", "ntk")):
    np.testing.assert_array_equal(np.asarray(m), np.asarray(m).T)
