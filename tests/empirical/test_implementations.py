"""All NTK implementations agree with each other and with an explicit
`jax.jacobian` contraction, across trace/diagonal axes, vmap_axes, PyTrees,
kwargs and several architectures."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import widenets as nt
from widenets.empirical.structured_rules import StructureWarning

from .models import (MODELS, inputs, pytree, pytree_inputs, reduce_axes,
                     reference_ntk)

IMPLS = (1, 2, 3)
AXES = [((-1,), ()), ((), ()), ((), (-1,)), ((0,), ()), ((), (0,)),
        ((-1,), (0,))]


def _close(a, b, tol=2e-4):
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape
  np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1., np.abs(b).max()))


def _check_all(f, params, x1, x2, trace_axes, diagonal_axes, vmap_axes):
  ref = reference_ntk(f, params, x1, x2, trace_axes, diagonal_axes)
  for impl in IMPLS:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", StructureWarning)
      fn = jax.jit(nt.empirical_ntk_fn(f, trace_axes, diagonal_axes,
                                       vmap_axes, impl))
      _close(fn(x1, x2, params), ref)


def test_axes_sweep_fc():
  f, params, s1, s2 = MODELS["fc"]()
  x1, x2 = inputs(s1, 0), inputs(s2, 1)
  for i, (trace_axes, diagonal_axes) in enumerate(AXES):
    for same in (True, False):
      if not same and 0 in trace_axes + diagonal_axes or same and i in (1, 2):
        continue
      _check_all(f, params, x1, None if same else x2, trace_axes,
                 diagonal_axes, (0, None)[(i + same) % 2])


@pytest.mark.parametrize("model", ["cnn", "attention", "shared"])
def test_architectures(model):
  f, params, s1, s2 = MODELS[model]()
  x1, x2 = inputs(s1, 0), inputs(s2, 1)
  _check_all(f, params, x1, x2, (-1,), (), 0)
  if model == "cnn":
    _check_all(f, params, x1, None, (), (-1,), None)


def test_vmap_axes_not_leading_and_triple_with_kwargs():
  # Batch on axis 1 of the inputs and outputs; `pattern` batched on axis 0.
  k = jax.random.split(jax.random.PRNGKey(7), 3)
  params = (jax.random.normal(k[0], (3, 4)) / 2,)

  def f(p, x, pattern):
    h = jnp.tanh(jnp.einsum("dn,de->ne", x, p[0]))  # x: (3, N)
    return (h * pattern).T  # (4, N)

  x1 = jax.random.normal(k[1], (3, 5))
  x2 = jax.random.normal(k[2], (3, 2))
  pat1 = jnp.arange(20.).reshape(5, 4) / 20
  pat2 = jnp.ones((2, 4))
  ref = reference_ntk(lambda p, x, pattern: f(p, x, pattern), params, x1, x1,
                      (), (), pattern=pat1)
  kw_ref = reference_ntk(f, params, x1, None, (0,), (), pattern=pat1)
  for impl in IMPLS:
    fn = nt.empirical_ntk_fn(f, trace_axes=(), vmap_axes=(1, 1, {"pattern": 0}),
                             implementation=impl)
    _close(fn(x1, None, params, pattern=pat1), ref)
    # A pair (a, b) of kwargs goes a -> x1, b -> x2.
    got = fn(x1, x2, params, pattern=(pat1, pat2))
    assert got.shape == (4, 4, 5, 2)
    fn0 = nt.empirical_ntk_fn(f, trace_axes=(0,), vmap_axes=(1, 1, {"pattern": 0}),
                              implementation=impl)
    _close(fn0(x1, None, params, pattern=pat1), kw_ref)


def test_pytree_inputs_outputs_params():
  f, params, _, _ = pytree()
  x1, x2 = pytree_inputs(4), pytree_inputs(3)
  triple = ({"u": 0, "v": 0}, (0, {"c": 0}), {})
  for same, vmap_axes in ((True, None), (False, triple), (False, 0)):
    xx2 = None if same else x2
    ref = reference_ntk(f, params, x1, xx2, (-1,), ())
    for impl in IMPLS:
      got = jax.jit(nt.empirical_ntk_fn(f, vmap_axes=vmap_axes,
                                        implementation=impl))(x1, xx2, params)
      assert isinstance(got, tuple) and set(got[1]) == {"c"}
      _close(got[0], ref[0])
      _close(got[1]["c"], ref[1]["c"])


def test_kernel_fn_get_and_nngp():
  f, params, s1, s2 = MODELS["fc"]()
  x1, x2 = inputs(s1, 0), inputs(s2, 1)
  kfn = nt.empirical_kernel_fn(f, trace_axes=(), diagonal_axes=(-1,))
  both = kfn(x1, x2, None, params)
  assert type(both).__name__ == "EmpiricalKernel"
  assert both._fields == ("nngp", "ntk")
  fx1, fx2 = np.asarray(f(params, x1)), np.asarray(f(params, x2))
  _close(both.nngp, np.einsum("ik,jk->ijk", fx1, fx2))
  _close(both.ntk, reference_ntk(f, params, x1, x2, (), (-1,)))
  _close(kfn(x1, x2, "ntk", params), both.ntk)
  only = kfn(x1, x2, ("ntk",), params)
  assert only._fields == ("ntk",)
  _close(nt.empirical_nngp_fn(f)(x1, None, params),
         fx1 @ fx1.T / fx1.shape[-1])
  with pytest.raises(ValueError, match="get"):
    kfn(x1, x2, "cov1", params)


def test_rng_kwarg_split_like_neural_tangents():
  # Dropout-like: the same key for the same inputs, different otherwise.
  params = (jnp.ones((3, 6)),)

  def f(p, x, rng):
    keep = jax.random.bernoulli(rng, 0.5, (x.shape[0], 6))
    return jnp.where(keep, x @ p[0], 0.)

  x = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
  key = jax.random.PRNGKey(1)
  for impl in IMPLS:
    k_same = nt.empirical_ntk_fn(f, implementation=impl)(x, None, params,
                                                         rng=key)
    k_explicit = nt.empirical_ntk_fn(f, implementation=impl)(x, x, params,
                                                             rng=key)
    _close(k_same, k_explicit)
  nngp_diff = nt.empirical_nngp_fn(f)(x, x + 1e-3, params, rng=key)
  nngp_same = nt.empirical_nngp_fn(f)(x, x, params, rng=key)
  assert not np.allclose(nngp_diff, nngp_same, atol=1e-2)


def test_under_jit_and_stax_network():
  from widenets import stax
  init_fn, apply_fn, _ = stax.serial(stax.Dense(6, b_std=0.3), stax.Relu(),
                                     stax.Dense(2, W_std=2.))
  x1, x2 = inputs((4, 3), 0), inputs((2, 3), 1)
  _, params = init_fn(jax.random.PRNGKey(0), x1.shape)
  ref = reference_ntk(apply_fn, params, x1, x2, (-1,), ())
  for impl in IMPLS:
    fn = jax.jit(nt.empirical_ntk_fn(apply_fn, vmap_axes=0,
                                     implementation=impl))
    _close(fn(x1, x2, params), ref)


def test_structured_has_no_warning_on_common_models():
  for model in ("fc", "cnn", "attention"):
    f, params, s1, _ = MODELS[model]()
    with warnings.catch_warnings():
      warnings.simplefilter("error", StructureWarning)
      # Rules are chosen while tracing: abstract evaluation suffices.
      jax.eval_shape(nt.empirical_ntk_fn(f, vmap_axes=0, implementation=3),
                     inputs(s1, 0), None, params)


def test_structured_fallback_warns_naming_primitive():
  from widenets.empirical import structured_rules
  structured_rules._warned.discard("cumprod")
  params = (jnp.linspace(0.5, 1.5, 4),)

  def f(p, x):
    return x * jnp.cumprod(p[0])[None]

  x = inputs((3, 4), 0)
  with pytest.warns(StructureWarning, match="cumprod"):
    got = nt.empirical_ntk_fn(f, trace_axes=(), implementation=3)(x, None,
                                                                  params)
  _close(got, reference_ntk(f, params, x, None, (), ()))


def test_reduce_axes_reference_itself():
  # The reference's trace/diagonal bookkeeping on a hand-made kernel.
  t = np.arange(2 * 3 * 2 * 3, dtype=float).reshape(2, 3, 2, 3)
  np.testing.assert_allclose(reduce_axes(t, 2, (1,), ()),
                             np.einsum("ajbj->ab", t) / 3)
  np.testing.assert_allclose(reduce_axes(t, 2, (), (0,)),
                             np.einsum("ajak->ajk", t))


def test_non_array_kwargs_are_passed_through():
  params = (jnp.ones((3, 2)),)

  def f(p, x, mode="train", scale=1.0):
    assert isinstance(mode, str)
    return (x @ p[0]) * (2. if mode == "train" else 1.) * scale

  x = inputs((4, 3), 0)
  ref = reference_ntk(f, params, x, None, (-1,), (), mode="test", scale=0.5)
  for impl in IMPLS:
    for vmap_axes in (None, 0):
      got = nt.empirical_ntk_fn(f, vmap_axes=vmap_axes, implementation=impl)(
          x, None, params, mode="test", scale=0.5)
      _close(got, ref)


@pytest.mark.parametrize("model", ["fc", "cnn"])
@pytest.mark.parametrize("x2_none", [False, True])
@pytest.mark.parametrize("rows_per_chunk,max_chunks", [(8, 8), (8, 2)])
def test_ntk_vector_products_in_sample_chunks(monkeypatch, model, x2_none,
                                              rows_per_chunk, max_chunks):
  # (8, 8): unrolled chunks; (8, 2): more chunks than unrolled -> lax.map.
  # x2=None with blocks too big for the row budget leaves the symmetric form.
  from widenets.empirical import ntk_vp
  monkeypatch.setattr(ntk_vp, "_ROWS_PER_CHUNK", rows_per_chunk)
  monkeypatch.setattr(ntk_vp, "_MAX_CHUNKS", max_chunks)
  f, params, s1, s2 = MODELS[model]()
  x1 = inputs((5,) + tuple(s1[1:]), 0)
  x2 = None if x2_none else inputs(s2, 1)
  for trace_axes in ((-1,), ()):
    got = nt.empirical_ntk_fn(f, trace_axes, vmap_axes=0, implementation=2)(
        x1, x2, params)
    _close(got, reference_ntk(f, params, x1, x2, trace_axes, ()))


@pytest.mark.parametrize("model", ["fc", "cnn"])
@pytest.mark.parametrize("n", [4, 9])
@pytest.mark.parametrize("axes", [((-1,), ()), ((), ()), ((), (-1,))])
def test_ntk_vector_products_x2_none_uses_symmetry(model, n, axes):
  # x2=None runs only the sample-block pairs I <= J and mirrors the rest.
  f, params, s1, _ = MODELS[model]()
  x = inputs((n,) + tuple(s1[1:]), 3)
  trace_axes, diagonal_axes = axes
  got = nt.empirical_ntk_fn(f, trace_axes, diagonal_axes, vmap_axes=0,
                            implementation=2)(x, None, params)
  _close(got, reference_ntk(f, params, x, None, trace_axes, diagonal_axes))
  # Exactly symmetric: Theta[(i, a), (j, b)] == Theta[(j, b), (i, a)].
  perm = {2: (1, 0), 3: (1, 0, 2), 4: (1, 0, 3, 2)}[got.ndim]
  np.testing.assert_array_equal(np.asarray(got),
                                np.transpose(np.asarray(got), perm))
