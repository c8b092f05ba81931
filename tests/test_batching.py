"""batch(...) equals the unbatched kernel for every output type and layout."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import widenets as nt
from widenets import stax
from widenets.batching import batch, devices as bdevices

_, _, KF = stax.serial(stax.Dense(64, W_std=1.5, b_std=0.05), stax.Relu(),
                       stax.Dense(1))
RNG = np.random.RandomState(0)
X = RNG.randn(9, 4, 3).astype(np.float32)      # spatial axis: zipped pairs
Y = RNG.randn(5, 4, 3).astype(np.float32)
XF = RNG.randn(10, 4).astype(np.float32)       # flat inputs
YF = RNG.randn(6, 4).astype(np.float32)


def assert_same(ref, out, rtol=1e-5, atol=1e-6):
  assert type(ref) is type(out)
  ref_l, ref_t = jax.tree_util.tree_flatten(ref)
  out_l, out_t = jax.tree_util.tree_flatten(out)
  assert ref_t == out_t  # same structure and Kernel metadata (shapes)
  for a, b in zip(ref_l, out_l):
    assert np.shape(a) == np.shape(b)
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=rtol,
                               atol=atol)


@pytest.mark.parametrize("x2", [None, Y], ids=["x2=None", "x2"])
@pytest.mark.parametrize("get", [None, "ntk", ("nngp", "cov1", "cov2")],
                         ids=["Kernel", "array", "namedtuple"])
@pytest.mark.parametrize("batch_size", [0, 3, 4])  # one block/dividing/not
def test_analytic_equals_unbatched(x2, get, batch_size):
  bf = batch(KF, batch_size)
  assert_same(KF(X, x2, get), bf(X, x2, get))


def test_get_as_keyword_and_export():
  assert nt.batch is batch
  np.testing.assert_allclose(batch(KF, 4)(X, get="ntk"), KF(X, get="ntk"),
                             rtol=1e-5, atol=1e-6)


def test_batch_size_larger_than_data():
  bf = batch(KF, 50)
  assert_same(KF(X, Y), bf(X, Y))
  assert bf.last_run.computed == 1


@pytest.mark.parametrize("x2", [None, Y], ids=["x2=None", "x2"])
@pytest.mark.parametrize("kw", [dict(diagonal_batch=False),
                                dict(diagonal_spatial=True),
                                dict(diagonal_batch=False,
                                     diagonal_spatial=True)])
def test_layouts(x2, kw):
  get = ("ntk", "cov1", "cov2") if kw.get("diagonal_spatial") else None
  assert_same(KF(X, x2, get, **kw), batch(KF, 4)(X, x2, get, **kw))


def test_symmetric_blocks_computed_once():
  bf = batch(KF, 3)
  bf(X, None, "ntk")
  run = bf.last_run
  assert run.mirrored and run.grid.nb1 == 3
  assert run.computed == 6 and all(i <= j for i, j in run.computed_blocks)
  bf(X, Y, "ntk")
  assert bf.last_run.computed == 3 * 2 and not bf.last_run.mirrored


def test_mirrored_result_is_exactly_symmetric():
  k = np.asarray(batch(KF, 4)(X, None, "nngp"))
  np.testing.assert_array_equal(k, k.transpose(1, 0, 3, 2))


def test_pytree_output_and_probe():
  """Plain functions with tuple/dict outputs: mirror rule read off a probe."""

  def f(x1, x2, get):
    k = KF(x1, x2, get)
    return (k.nngp, {"a": k.ntk})

  bf = batch(f, 4)
  assert_same(f(X, None, ("nngp", "ntk")), bf(X, None, ("nngp", "ntk")))
  assert bf.last_run.mirrored


def test_unmirrorable_output_is_computed_directly():
  def f(x1, x2):
    x1 = jnp.asarray(x1)
    x2 = x1 if x2 is None else jnp.asarray(x2)
    return x1[:, None, :, 0] * 2 + x2[None, :, :, 1]  # not symmetric

  bf = batch(f, 4)
  assert_same(f(X, None), bf(X, None))
  assert not bf.last_run.mirrored and bf.last_run.computed == 9


def test_pytree_inputs():
  def f(x1, x2, get):
    return KF(x1[0] + x1[1], None if x2 is None else x2[0] + x2[1], get)

  pair = (XF, XF * 0.5)
  assert_same(f(pair, None, "ntk"), batch(f, 3)(pair, None, "ntk"))


@pytest.mark.parametrize("x2,trace_axes", [
    (None, (-1,)),
    pytest.param(YF, (-1,), marks=pytest.mark.slow),
    pytest.param(None, (), marks=pytest.mark.slow),
    pytest.param(YF, (), marks=pytest.mark.slow)])
def test_empirical(x2, trace_axes):
  init, apply, _ = stax.serial(stax.Dense(32), stax.Relu(), stax.Dense(3))
  _, params = init(jax.random.PRNGKey(0), XF.shape)
  ek = nt.empirical_kernel_fn(apply, trace_axes=trace_axes)
  get = ("nngp", "ntk")
  assert_same(ek(XF, x2, get, params), batch(ek, 4)(XF, x2, get, params),
              rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("x2", [None, pytest.param(YF, marks=pytest.mark.slow)],
                         ids=["x2=None", "x2"])
def test_monte_carlo(x2):
  init, apply, _ = stax.serial(stax.Dense(32), stax.Relu(), stax.Dense(1))
  mc = nt.monte_carlo_kernel_fn(init, apply, jax.random.PRNGKey(1), 2)
  get = ("nngp", "ntk")
  assert_same(mc(XF, x2, get), batch(mc, 5)(XF, x2, get), rtol=1e-4,
              atol=1e-5)


@pytest.mark.parametrize("cov2_none", [True, False])
def test_kernel_input(cov2_none):
  _, _, head = stax.serial(stax.Relu(), stax.Dense(1))
  k0 = KF(XF, None if cov2_none else YF)
  assert_same(head(k0), batch(head, 3)(k0))


def test_store_on_host():
  out = batch(KF, 4, store_on_device=False)(X, Y)
  assert isinstance(out.nngp, np.ndarray)
  assert_same(jax.tree_util.tree_map(np.asarray, KF(X, Y)),
              jax.tree_util.tree_map(np.asarray, out))


def test_auto_splits_a_kernel_that_does_not_fit(monkeypatch):
  x = RNG.randn(40, 5, 3).astype(np.float32)
  bf = batch(KF, "auto")
  bf(x, None, "nngp")
  assert bf.last_run.grid.b1 == 40  # plenty of memory: one block
  # A device with little free memory: the same kernel must be split.
  monkeypatch.setattr(bdevices, "free_memory", lambda device: 600_000)
  out = bf(x, None, "nngp")
  assert bf.last_run.grid.b1 < 40
  np.testing.assert_allclose(out, KF(x, None, "nngp"), rtol=1e-5, atol=1e-6)


def test_progress_callback():
  seen = []
  batch(KF, 3, progress=lambda done, total: seen.append((done, total)))(
      X, None, "ntk")
  assert seen == [(i, 6) for i in range(1, 7)]


def test_progress_bar(capsys):
  pytest.importorskip("tqdm")
  batch(KF, 3, progress=True)(X, None, "ntk")
  assert "6/6" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [-3, 1.5, "big", True])
def test_bad_batch_size(bad):
  with pytest.raises(ValueError, match="batch_size must be a non-negative"):
    batch(KF, bad)


def test_bad_device_count():
  with pytest.raises(ValueError, match="device_count"):
    batch(KF, 2, device_count=-5)
  with pytest.raises(ValueError, match="only 1 local devices|only"):
    batch(KF, 2, device_count=len(jax.local_devices()) + 1)


def test_feature_shape_mismatch():
  with pytest.raises(ValueError, match=r"same shape apart from the sample "
                     r"axis; got x1 \(9, 4, 3\) and x2 \(5, 4, 2\)"):
    batch(KF, 2)(X, Y[..., :2])


def test_auto_batch_size_rule():
  # bytes(b) = 1000 + 500 b^2: half of 1e9 bytes holds ~1000 x 1000 blocks.
  cost = lambda b: 1000 + 500 * b * b
  b = bdevices.auto_batch_size(cost, 10_000, 10**9)
  assert 900 <= b <= 1000 and b % 8 == 0
  assert bdevices.auto_batch_size(cost, 100, 10**9) == 100  # all fits
  # Room kept for a result on the device shrinks the blocks, never to zero.
  assert bdevices.auto_batch_size(cost, 10_000, 10**9,
                                  result_bytes_per_pair=8) < b
  assert bdevices.auto_batch_size(cost, 10_000, 10**9,
                                  result_bytes_per_pair=80) >= 64
