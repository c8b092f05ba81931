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
  pair = [stax.Dense(8)[2], stax.Relu()[2]] * 3
  assert runs.find_runs(pair) == [(0, 2, 3)]
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
