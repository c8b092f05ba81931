"""batch(...) inside jax.jit / jax.grad, and batched functions batched again:
the blocks are traced into the enclosing computation, same values."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import widenets as nt
from widenets import stax
from widenets.batching import batch

from .test_batching import KF, XF, YF, assert_same


@pytest.mark.parametrize("x2", [None, YF], ids=["x2=None", "x2"])
@pytest.mark.parametrize("get", [None, "ntk"], ids=["Kernel", "array"])
def test_jit_of_batch_equals_unbatched(x2, get):
  bf = batch(KF, 4)
  out = jax.jit(lambda a, b: bf(a, b, get))(XF, x2)
  assert_same(KF(XF, x2, get), out)
  assert bf.last_run.grid.b1 == 4
  if get is None:  # a Kernel states its layout: lower blocks are mirrored
    assert bf.last_run.mirrored == (x2 is None)


def test_jit_of_batch_with_unknown_layout_computes_both_halves():
  def f(x1, x2):
    k = KF(x1, x2, ("nngp", "ntk"))
    return {"a": k.nngp, "b": k.ntk}

  bf = batch(f, 4)
  assert_same(f(XF, None), jax.jit(bf)(XF, None))
  assert not bf.last_run.mirrored and bf.last_run.computed == 9


def test_grad_through_batch():
  bf = batch(KF, 3)
  g = jax.grad(lambda a: jnp.sum(bf(a, YF, "ntk")))(XF)
  ref = jax.grad(lambda a: jnp.sum(KF(a, YF, "ntk")))(XF)
  np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("x2", [None, YF], ids=["x2=None", "x2"])
def test_batch_of_batch(x2):
  serial_only = lambda f: batch(f, 3, device_count=0)
  parallel_only = lambda f: batch(f, 0)
  for composed in (parallel_only(serial_only(KF)),
                   serial_only(parallel_only(KF))):
    assert_same(KF(XF, x2), composed(XF, x2))


def test_jit_of_batched_empirical_kernel_of_pytree_inputs():
  init, apply, _ = stax.parallel(stax.Dense(3), stax.Dense(2))
  x1 = (XF[:, :2], XF[:, 2:])
  x2 = (YF[:, :2], YF[:, 2:])
  _, params = init(jax.random.PRNGKey(0), ((-1, 2), (-1, 2)))
  kernel_fn = jax.jit(nt.empirical_nngp_fn(apply))
  for b in (None, x2):
    ref = kernel_fn(x1, b, params)
    out = jax.jit(batch(kernel_fn, 3))(x1, b, params)
    assert len(out) == 2
    for r, o in zip(ref, out):
      np.testing.assert_allclose(o, r, rtol=1e-5, atol=1e-6)


def test_store_under_jit_is_refused(tmp_path):
  bf = batch(KF, 3, store=tmp_path / "store")
  with pytest.raises(ValueError, match="store=.*traced"):
    jax.jit(lambda a: bf(a, None, "ntk"))(XF)


def test_diagonal_axis_beside_an_output_axis_of_another_size():
  """Empirical NTK of (N, 4, 3) outputs, diagonal over the 4: pair leaves
  of shape (b, b, 4, 3), whose zipped-pairs mirror would change the shape."""
  init, apply, _ = stax.serial(stax.Dense(5), stax.Relu(), stax.Dense(3))
  x = jnp.asarray(np.random.RandomState(1).randn(7, 4, 4), jnp.float32)
  _, params = init(jax.random.PRNGKey(0), x.shape)
  kernel_fn = nt.empirical_ntk_fn(apply, trace_axes=(), diagonal_axes=(1,))
  ref = kernel_fn(x, None, params)
  assert ref.shape == (7, 7, 4, 3, 3)
  out = batch(kernel_fn, 3)(x, None, params)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_vmap_of_batch():
  xs = np.stack([XF[:5], XF[5:]])
  out = jax.vmap(lambda x: batch(KF, 2)(x, None, "ntk"))(xs)
  ref = jax.vmap(lambda x: KF(x, None, "ntk"))(xs)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
