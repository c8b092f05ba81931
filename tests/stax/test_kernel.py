"""`Kernel`: pytree behaviour, replace/slice/transpose, scalar arithmetic and
the `get` protocol."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import widenets as nt
from widenets import stax
from widenets.kernel import GET_FIELDS, get_from


def _kernel(n1=3, n2=4, spatial=(), diagonal_batch=True, seed=0):
  """A Kernel with distinct random entries, laid out as the library does."""
  rng = np.random.RandomState(seed)
  zipped = tuple(s for x in spatial for s in (x, x))
  cb = (n1,) if diagonal_batch else (n1, n1)
  cb2 = (n2,) if diagonal_batch else (n2, n2)
  arr = lambda *s: jnp.asarray(rng.randn(*s), jnp.float32)
  return nt.Kernel(
      nngp=arr(n1, n2, *zipped), ntk=arr(n1, n2, *zipped),
      cov1=arr(*cb, *zipped), cov2=arr(*cb2, *zipped),
      x1_is_x2=jnp.asarray(False), is_gaussian=True, is_reversed=False,
      is_input=False, diagonal_batch=diagonal_batch, diagonal_spatial=False,
      shape1=(n1,) + tuple(spatial) + (7,), shape2=(n2,) + tuple(spatial) + (7,),
      batch_axis=0, channel_axis=-1, mask1=None, mask2=None)


def test_fields_match_neural_tangents():
  names = [f.name for f in dataclasses.fields(nt.Kernel)]
  expected = ["nngp", "ntk", "cov1", "cov2", "x1_is_x2", "is_gaussian",
              "is_reversed", "is_input", "diagonal_batch", "diagonal_spatial",
              "shape1", "shape2", "batch_axis", "channel_axis", "mask1",
              "mask2"]
  assert names[:len(expected)] == expected
  assert "packed" not in GET_FIELDS
  assert set(expected) <= set(GET_FIELDS)


def test_pytree_round_trip_under_jit():
  k = _kernel()
  leaves, treedef = jax.tree_util.tree_flatten(k)
  back = jax.tree_util.tree_unflatten(treedef, leaves)
  assert back == k or all(
      np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(back),
                                           leaves))
  # Static metadata is aux data, arrays are leaves.
  assert all(hasattr(l, "shape") for l in leaves)
  assert len(leaves) == 5  # nngp, ntk, cov1, cov2, x1_is_x2 (masks None)

  @jax.jit
  def double(kk):
    assert kk.shape1 == (3, 7)  # static under jit
    return kk.replace(nngp=2 * kk.nngp)

  out = double(k)
  assert isinstance(out, nt.Kernel)
  np.testing.assert_array_equal(out.nngp, 2 * k.nngp)
  np.testing.assert_array_equal(out.cov1, k.cov1)
  assert out.shape1 == k.shape1 and out.is_gaussian and not out.is_input
  # tree_map over the arrays keeps the metadata.
  neg = jax.tree_util.tree_map(lambda x: x if x.dtype == bool else -x, k)
  np.testing.assert_array_equal(neg.ntk, -k.ntk)
  assert neg.diagonal_batch == k.diagonal_batch


def test_kernel_fn_output_passes_through_jit():
  _, _, kernel_fn = stax.serial(stax.Dense(3), stax.Relu(), stax.Dense(2))
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 5))
  k = kernel_fn(x, None)
  k2 = jax.jit(lambda kk: kk)(k)
  np.testing.assert_array_equal(k2.nngp, k.nngp)
  np.testing.assert_array_equal(k2.ntk, k.ntk)
  assert k2.shape1 == k.shape1 == (4, 2)


def test_replace_is_functional():
  k = _kernel()
  k2 = k.replace(nngp=jnp.zeros((3, 4)), is_gaussian=False)
  assert not k2.is_gaussian and k.is_gaussian
  assert np.all(k2.nngp == 0) and not np.all(k.nngp == 0)
  with pytest.raises(dataclasses.FrozenInstanceError):
    k.nngp = None


@pytest.mark.parametrize("diagonal_batch", [True, False])
def test_slice(diagonal_batch):
  k = _kernel(5, 6, spatial=(2,), diagonal_batch=diagonal_batch)
  s1, s2 = slice(1, 4), slice(0, 6, 2)
  ks = k.slice(s1, s2)
  np.testing.assert_array_equal(ks.nngp, k.nngp[s1, s2])
  np.testing.assert_array_equal(ks.ntk, k.ntk[s1, s2])
  if diagonal_batch:
    np.testing.assert_array_equal(ks.cov1, k.cov1[s1])
    np.testing.assert_array_equal(ks.cov2, k.cov2[s2])
  else:
    np.testing.assert_array_equal(ks.cov1, k.cov1[s1, s1])
    np.testing.assert_array_equal(ks.cov2, k.cov2[s2, s2])
  assert ks.shape1 == (3, 2, 7) and ks.shape2 == (3, 2, 7)


def test_slice_of_real_kernel_equals_kernel_of_slices():
  _, _, kernel_fn = stax.serial(stax.Dense(3, b_std=0.3), stax.Erf(),
                                stax.Dense(2))
  x1 = jax.random.normal(jax.random.PRNGKey(0), (6, 4))
  x2 = jax.random.normal(jax.random.PRNGKey(1), (5, 4))
  k = kernel_fn(x1, x2).slice(slice(1, 3), slice(2, 5))
  ref = kernel_fn(x1[1:3], x2[2:5])
  np.testing.assert_allclose(k.nngp, ref.nngp, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(k.ntk, ref.ntk, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(k.cov1, ref.cov1, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(k.cov2, ref.cov2, rtol=1e-5, atol=1e-7)


def test_transpose_spatial_axes():
  k = _kernel(2, 3, spatial=(2, 4))
  kt = k.transpose((1, 0))
  assert kt.nngp.shape == (2, 3, 4, 4, 2, 2)
  np.testing.assert_array_equal(kt.nngp,
                                jnp.transpose(k.nngp, (0, 1, 4, 5, 2, 3)))
  np.testing.assert_array_equal(kt.cov1,
                                jnp.transpose(k.cov1, (0, 3, 4, 1, 2)))
  # Round trip, and the identity permutation changes nothing.
  np.testing.assert_array_equal(kt.transpose((1, 0)).nngp, k.nngp)
  np.testing.assert_array_equal(k.transpose((0, 1)).ntk, k.ntk)


def test_transpose_default_is_identity_as_in_neural_tangents():
  k = _kernel(2, 3, spatial=(2, 4))
  np.testing.assert_array_equal(k.transpose().nngp, k.nngp)


def test_scalar_arithmetic():
  k = _kernel()
  for k2 in (3.0 * k, k * 3.0):
    np.testing.assert_allclose(k2.nngp, 9 * k.nngp, rtol=1e-6)
    np.testing.assert_allclose(k2.ntk, 9 * k.ntk, rtol=1e-6)
    np.testing.assert_allclose(k2.cov1, 9 * k.cov1, rtol=1e-6)
    np.testing.assert_allclose(k2.cov2, 9 * k.cov2, rtol=1e-6)
  k3 = k / 2.0
  np.testing.assert_allclose(k3.nngp, k.nngp / 4, rtol=1e-6)
  k4 = k + 2.0
  np.testing.assert_allclose(k4.nngp, k.nngp + 4, rtol=1e-6)
  np.testing.assert_allclose(k4.cov1, k.cov1 + 4, rtol=1e-6)
  np.testing.assert_array_equal(k4.ntk, k.ntk)  # a constant has no NTK
  np.testing.assert_allclose((k - 2.0).nngp, k4.nngp)
  np.testing.assert_array_equal((-k).nngp, k.nngp)
  np.testing.assert_array_equal((+k).nngp, k.nngp)
  # cov2=None stays None.
  k5 = 2.0 * k.replace(cov2=None) + 1.0
  assert k5.cov2 is None


def test_scalar_multiple_matches_scaled_network():
  # `2 * k` is the kernel of `2 f(x)`: a linear readout with W_std = 2.
  _, _, kf = stax.Dense(1, W_std=1.3, b_std=0.2)
  _, _, kf2 = stax.serial(stax.Dense(1, W_std=1.3, b_std=0.2),
                          stax.Dense(1, W_std=2.0))
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
  np.testing.assert_allclose((2.0 * kf(x, None)).nngp, kf2(x, None, "nngp"),
                             rtol=1e-6)


# --- get --------------------------------------------------------------------

@pytest.fixture(scope="module")
def net_and_x():
  _, _, kernel_fn = stax.serial(stax.Dense(3, b_std=0.1), stax.Relu(),
                                stax.Dense(2))
  x1 = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
  x2 = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
  return kernel_fn, x1, x2


def test_get_string_tuple_none(net_and_x):
  kernel_fn, x1, x2 = net_and_x
  k = kernel_fn(x1, x2)
  assert isinstance(k, nt.Kernel)
  assert k.nngp.shape == k.ntk.shape == (4, 5)
  nngp = kernel_fn(x1, x2, "nngp")
  np.testing.assert_allclose(nngp, k.nngp, rtol=1e-6)
  out = kernel_fn(x1, x2, ("ntk", "nngp"))
  assert type(out).__name__ == "AnalyticKernel"
  assert out._fields == ("ntk", "nngp")
  np.testing.assert_allclose(out[0], k.ntk, rtol=1e-6)
  np.testing.assert_allclose(out.nngp, k.nngp, rtol=1e-6)
  ntk, = kernel_fn(x1, x2, ("ntk",))
  np.testing.assert_allclose(ntk, k.ntk, rtol=1e-6)
  # list is accepted like a tuple; metadata fields are reachable too.
  assert kernel_fn(x1, x2, ["nngp", "cov1"])._fields == ("nngp", "cov1")
  assert kernel_fn(x1, x2, "shape1") == (4, 2)
  assert kernel_fn(x1, x2, "is_gaussian") is True
  cov1, cov2 = kernel_fn(x1, x2, ("cov1", "cov2"))
  assert cov1.shape == (4,) and cov2.shape == (5,)


def test_get_as_keyword_and_on_kernel_input(net_and_x):
  kernel_fn, x1, x2 = net_and_x
  np.testing.assert_allclose(kernel_fn(x1, x2, get="ntk"),
                             kernel_fn(x1, x2, "ntk"))
  _, _, dense = stax.Dense(1)
  k_in = stax.Identity()[2](x1, x2)
  assert isinstance(k_in, nt.Kernel) and k_in.is_input
  np.testing.assert_allclose(dense(k_in, get="nngp"),
                             dense(x1, x2, "nngp"), rtol=1e-6)


@pytest.mark.parametrize("bad", ["ntkk", ("nngp", "bogus"), "packed"])
def test_unknown_get_raises(net_and_x, bad):
  kernel_fn, x1, x2 = net_and_x
  with pytest.raises(ValueError, match="Unknown `get`"):
    kernel_fn(x1, x2, bad)


def test_get_of_wrong_type_raises(net_and_x):
  kernel_fn, x1, x2 = net_and_x
  with pytest.raises(TypeError, match="get"):
    kernel_fn(x1, x2, 3)


def test_get_from_dict_and_namedtuple_order():
  d = {"nngp": 1, "ntk": 2, "cov1": 3}
  assert get_from(d, "ntk") == 2
  out = get_from(d, ("cov1", "nngp"))
  assert tuple(out) == (3, 1) and out._fields == ("cov1", "nngp")
  assert get_from(d, None) is d


@pytest.mark.parametrize("traced", [False, True])
def test_same_inputs_within_tolerance_nan_and_empty(traced):
  # NumPy inputs are compared on the host, traced ones in the program (a
  # max-reduction of |x1 - x2|): the same answers, NaN never "the same".
  from widenets.kernel import SAME_INPUTS_TOL, same_inputs
  rs = np.random.RandomState(0)
  x = rs.randn(7, 5).astype(np.float32)
  nan = x.copy()
  nan[2, 3] = np.nan
  near = np.zeros((3, 2), np.float32)
  tiny = np.full((3, 2), SAME_INPUTS_TOL / 2, np.float32)
  far = x.copy()
  far[6, 4] += 1e-3
  cases = [((x, x), True), ((near, tiny), True), ((near, 4 * tiny), False),
           ((x, far), False),
           ((nan, nan), False), ((x, nan), False),
           ((x[:0], x[:0]), True), (((x, x[:, :2]), (x, x[:, :2])), True),
           (((x, x[:, :2]), (x, far[:, :2])), True),
           (((x, x[:, :2]), (far, x[:, :2])), False)]
  big = rs.randn(300, 300).astype(np.float32)
  big_nan = big.copy()
  big_nan[150, 150] = np.nan  # large: XLA's max-reduction would skip it
  cases += [((big, big), True), ((big, big_nan), False),
            ((big_nan, big_nan), False)]
  for (a, b), expected in cases:
    got = (jax.jit(same_inputs)(a, b) if traced else same_inputs(a, b))
    assert bool(got) is expected, (a, b)
