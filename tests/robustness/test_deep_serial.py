"""Deep `serial`: identical consecutive blocks compile as one loop."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from widenets import stax
from widenets.stax import runs, sharing
from widenets import KernelOverflowError

X = np.random.RandomState(0).randn(4, 5).astype(np.float32)


def _deep(depth, **dense_kwargs):
  layers = []
  for _ in range(depth):
    layers += [stax.Dense(64, **dense_kwargs), stax.Relu()]
  return stax.serial(*layers, stax.Dense(1))


def _n_equations(jaxpr) -> int:
  n = 0
  for eqn in jaxpr.eqns:
    n += 1
    for p in eqn.params.values():
      for sub in (p if isinstance(p, (tuple, list)) else (p,)):
        inner = getattr(sub, "jaxpr", None)
        if inner is not None:
          n += _n_equations(getattr(inner, "jaxpr", inner))
  return n


def _equations(kernel_fn):
  return _n_equations(jax.make_jaxpr(
      lambda x: kernel_fn(x, None, ("nngp", "ntk")))(X).jaxpr)


def test_program_size_does_not_grow_with_depth():
  small = _equations(_deep(4)[2])
  large = _equations(_deep(40)[2])
  assert large <= small * 1.2, (small, large)


def test_deep_serial_matches_unrolled(monkeypatch):
  *_, kernel_fn = _deep(12, W_std=1.3, b_std=0.1)
  k = kernel_fn(X, X[:2], ("nngp", "ntk"))
  n_looped = _equations(kernel_fn)
  monkeypatch.setattr(runs, "MIN_REPEATS", 10**9)  # no loops: the reference
  # ... with a program of its own (networks of one structure share one).
  monkeypatch.setattr(sharing, "record", lambda *args, **kwargs: None)
  *_, unrolled = _deep(12, W_std=1.3, b_std=0.1)
  ref = unrolled(X, X[:2], ("nngp", "ntk"))
  assert _equations(unrolled) > 1.5 * n_looped
  np.testing.assert_allclose(k.nngp, ref.nngp, rtol=1e-5)
  np.testing.assert_allclose(k.ntk, ref.ntk, rtol=1e-5)


def test_overflow_inside_a_run_is_still_reported():
  *_, kernel_fn = _deep(30, W_std=8.)
  with pytest.raises(KernelOverflowError, match="overflowed"):
    kernel_fn(X, None, "nngp")


def test_runs_only_join_equal_layers():
  same = [stax.Dense(8)[2] for _ in range(4)]
  assert runs.find_runs(same) == [(0, 1, 4)]
  mixed = [stax.Dense(8)[2], stax.Dense(8, W_std=2.)[2], stax.Dense(8)[2],
           stax.Dense(8)[2]]
  assert runs.find_runs(mixed) == [(i, 1, 1) for i in range(4)]
  lambdas = [stax.Elementwise(lambda x: jnp.sin(x), lambda c, v1, v2: c)[2],
             stax.Elementwise(lambda x: jnp.cos(x), lambda c, v1, v2: c)[2],
             stax.Elementwise(lambda x: jnp.sin(x), lambda c, v1, v2: c)[2]]
  assert not runs.same_layer(lambdas[0], lambdas[1])
  pair = [stax.Dense(8)[2], stax.Relu()[2]] * runs.MIN_REPEATS
  assert runs.find_runs(pair) == [(0, 2, runs.MIN_REPEATS)]
  # Too short a run for a loop to pay off.
  assert runs.find_runs(pair[:-2]) == [(i, 1, 1) for i in range(len(pair) - 2)]
  # Equal layers built separately, every family with parameters.
  for make in (lambda: stax.Conv(8, (3, 3), padding="SAME", W_std=1.4),
               lambda: stax.ConvTranspose(8, (3, 3), padding="SAME"),
               lambda: stax.Dense(8, W_std=1.4, b_std=0.1),
               lambda: stax.Erf(), lambda: stax.Gelu()):
    assert runs.same_layer(make()[2], make()[2]), make()[2]


def test_block_changing_structure_stays_unrolled():
  # AvgPool shrinks the image each time: its run cannot be a loop.
  layers = [stax.AvgPool((2, 2), strides=(2, 2))] * 3 + [stax.Flatten()]
  x = np.random.RandomState(2).randn(2, 8, 8, 3).astype(np.float32)
  k = stax.serial(*layers)[2](x, None, "nngp")
  pooled = x.mean((1, 2))
  np.testing.assert_allclose(k, pooled @ pooled.T / 3, rtol=1e-5, atol=1e-7)


# Every layer whose hyperparameters the shared program traces: a rule that
# derived a value from them when built (b**2, a slope) made each layer's
# closure hold a tracer of its own, so equal layers stopped comparing equal
# and deep networks of them compiled unrolled.
BLOCKS = {
    "Erf": lambda: [stax.Erf(0.9, 1.1, 0.1)],
    "ABRelu": lambda: [stax.ABRelu(-0.3, 1.2)],
    "LeakyRelu": lambda: [stax.LeakyRelu(0.1)],
    "Exp": lambda: [stax.Exp(0.5, 0.3)],
    "Gaussian": lambda: [stax.Gaussian(1.0, -0.5)],
    "Sin": lambda: [stax.Sin(1.0, 0.7, 0.2)],
    "Cos": lambda: [stax.Cos(1.0, 0.7, 0.2)],
    "Rbf": lambda: [stax.Rbf(0.5)],
    "Gelu": lambda: [stax.Gelu()],
    "ExpNormalized": lambda: [stax.ExpNormalized(1.0, -1.0)],
    "RectifiedMonomial": lambda: [stax.RectifiedMonomial(2)],
    "Hermite": lambda: [stax.LayerNorm(), stax.Hermite(2)],
}


def _deep_block(block, depth):
  layers = [stax.Dense(64, 1.0, 0.0)]
  for _ in range(depth):
    layers += block() + [stax.Dense(64, 1.1, 0.2)]
  return stax.serial(*layers)


@pytest.mark.filterwarnings("ignore:Hermite. the kernel assumes")
@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_hyperparameterized_layers_loop(name):
  small = _equations(_deep_block(BLOCKS[name], 3)[2])
  large = _equations(_deep_block(BLOCKS[name], 12)[2])
  assert large <= small * 1.2, (name, small, large)


@pytest.mark.parametrize("name", ["Erf", "ABRelu", "Cos", "Gaussian"])
def test_hyperparameterized_loop_matches_unrolled(name, monkeypatch):
  kernel_fn = _deep_block(BLOCKS[name], 6)[2]
  k = kernel_fn(X, X[:2], ("nngp", "ntk"))
  monkeypatch.setattr(runs, "MIN_REPEATS", 10**9)
  monkeypatch.setattr(sharing, "record", lambda *args, **kwargs: None)
  ref = _deep_block(BLOCKS[name], 6)[2](X, X[:2], ("nngp", "ntk"))
  np.testing.assert_allclose(k.nngp, ref.nngp, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(k.ntk, ref.ntk, rtol=1e-5, atol=1e-7)


def test_attention_blocks_loop():
  x = np.random.RandomState(1).randn(2, 5, 3).astype(np.float32)

  def net(depth):
    layers = [stax.Dense(8)]
    for _ in range(depth):
      layers += [stax.GlobalSelfAttention(8, 2, 2, 1, W_key_std=1.1,
                                          W_value_std=1.2, W_query_std=0.9,
                                          b_std=0.1),
                 stax.Relu(), stax.Dense(8, 1.2, 0.1)]
    return stax.serial(*layers, stax.GlobalAvgPool(), stax.Dense(1))[2]

  size = lambda kf: _n_equations(jax.make_jaxpr(
      lambda x: kf(x, None, "nngp"))(x).jaxpr)
  assert size(net(8)) <= size(net(3)) * 1.2


def _residual_net(depth, conv=False):
  def block():
    if conv:
      main = stax.serial(stax.Relu(), stax.Conv(8, (3, 3), padding="SAME",
                                                W_std=1.2, b_std=0.1))
    else:
      main = stax.serial(stax.Erf(), stax.Dense(64, 1.1, 0.1))
    return stax.serial(stax.FanOut(2), stax.parallel(main, stax.Identity()),
                       stax.FanInSum())
  first = (stax.Conv(8, (3, 3), padding="SAME") if conv
           else stax.Dense(64, 1.0, 0.0))
  tail = [stax.GlobalAvgPool()] if conv else []
  return stax.serial(first, *[block() for _ in range(depth)], *tail,
                     stax.Relu(), stax.Dense(1))[2]


@pytest.mark.parametrize("conv", [False, True])
def test_residual_blocks_loop(conv, monkeypatch):
  # Residual blocks hold their layers deep in nested closures (serial of
  # parallel of serial); they must still compare equal and loop.
  x = (np.random.RandomState(2).randn(3, 4, 4, 2).astype(np.float32) if conv
       else X)
  size = lambda kf: _n_equations(jax.make_jaxpr(
      lambda x: kf(x, None, ("nngp", "ntk")))(x).jaxpr)
  looped = _residual_net(9, conv)
  assert size(looped) <= size(_residual_net(5, conv)) * 1.2
  k = looped(x, x[:2], ("nngp", "ntk"))
  monkeypatch.setattr(runs, "MIN_REPEATS", 10**9)
  monkeypatch.setattr(sharing, "record", lambda *args, **kwargs: None)
  ref = _residual_net(9, conv)(x, x[:2], ("nngp", "ntk"))
  np.testing.assert_allclose(k.nngp, ref.nngp, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(k.ntk, ref.ntk, rtol=1e-5, atol=1e-7)
