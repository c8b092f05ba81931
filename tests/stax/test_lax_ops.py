"""`stax.lax_ops`: the same values as their jax.numpy counterparts, and
kernel programs without nested ``jit`` calls or staged PRNG keys."""
import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import widenets as nt
from widenets.stax import lax_ops

_SPECIAL = np.array([0.0, -0.0, 1.0, -2.5, np.inf, -np.inf, np.nan, 1e-40,
                     -1e-40, 3e38], np.float32)


def _same(a, b):
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape and a.dtype == b.dtype
  np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_signbit_and_unit_sign_match_numpy(dtype):
  x = jnp.asarray(_SPECIAL.astype(dtype))
  _same(lax_ops.signbit(x), jnp.signbit(x))
  _same(lax_ops.unit_sign(x), jnp.copysign(jnp.ones((), x.dtype), x))


def test_select_matches_where():
  rs = np.random.RandomState(0)
  x = jnp.asarray(rs.randn(3, 4).astype(np.float32))
  y = jnp.asarray(rs.randn(1, 4).astype(np.float32))
  c = x > 0
  _same(lax_ops.select(c, x, y), jnp.where(c, x, y))
  _same(lax_ops.select(c, x, 1.0), jnp.where(c, x, 1.0))
  _same(lax_ops.select(c, jnp.pi / 2, x), jnp.where(c, jnp.pi / 2, x))
  _same(lax_ops.select(c, np.float32(0.5), np.float32(2)),
        jnp.where(c, np.float32(0.5), np.float32(2)))


def test_clip_matches_jnp():
  x = jnp.asarray(_SPECIAL)
  _same(lax_ops.clip(x, -1.0, 1.0), jnp.clip(x, -1.0, 1.0))


@pytest.mark.parametrize("shape,axis", [((5, 5, 3, 3), 0), ((5, 5, 3, 3), 2),
                                        ((2, 4, 6), 1), ((6, 4), 0)])
def test_diagonal_matches_jnp(shape, axis):
  x = jnp.asarray(np.random.RandomState(1).randn(*shape).astype(np.float32))
  expected = jnp.moveaxis(jnp.diagonal(x, axis1=axis, axis2=axis + 1), -1,
                          axis)
  _same(lax_ops.diagonal(x, axis), expected)


def _primitives(jaxpr, out):
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    out[eqn.params.get("name", name) if name in ("jit", "pjit") else
        name] += 1
    for value in eqn.params.values():
      for sub in (value if isinstance(value, (tuple, list)) else (value,)):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          _primitives(inner, out)
  return out


@pytest.mark.parametrize("act", [nt.stax.Relu, nt.stax.Erf])
@pytest.mark.parametrize("same", [True, False])
def test_kernel_program_is_flat(act, same):
  """A Dense + activation network traces without nested jit calls in its
  rules and without a PRNG key (output shapes come from abstract keys)."""
  _, _, kernel_fn = nt.stax.serial(nt.stax.Dense(8), act(), nt.stax.Dense(8),
                                   act(), nt.stax.Dense(1))
  x = np.random.RandomState(2).randn(6, 5).astype(np.float32)
  x2 = None if same else x[:4]
  jaxpr = jax.make_jaxpr(lambda a: kernel_fn(a, x2, ("nngp", "ntk")))(x)
  counts = _primitives(jaxpr.jaxpr, collections.Counter())
  assert not [n for n in counts if n.startswith("random")], counts
  nested = {n: c for n, c in counts.items()
            if n in ("_where", "clip", "diagonal", "signbit", "copysign")}
  # `packing` mirrors the packed blocks with one jnp.where and the inputs'
  # masking may add one: nothing per layer.
  assert sum(nested.values()) <= 2, nested
