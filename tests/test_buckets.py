"""`widenets.buckets`: padding sample counts to a few sizes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from widenets import stax
from widenets.buckets import bucket_size, bucketed, pad_rows


def _net():
  return stax.serial(stax.Dense(64, W_std=1.5, b_std=0.05), stax.Erf(),
                     stax.Dense(1, W_std=1.5, b_std=0.05))[2]


def _x(n, seed=0):
  return np.random.RandomState(seed).randn(n, 5).astype(np.float32)


@pytest.mark.parametrize("n,expected", [(0, 0), (1, 8), (8, 8), (9, 16),
                                        (256, 256), (257, 512), (700, 768)])
def test_bucket_size(n, expected):
  assert bucket_size(n) == expected


def test_bucket_size_rejects_negative():
  with pytest.raises(ValueError, match="bucket_size.*n=-1"):
    bucket_size(-1)


@pytest.mark.parametrize("asarray", [np.asarray, jnp.asarray])
def test_pad_rows_repeats_last_row(asarray):
  x = asarray(_x(3))
  p = pad_rows(x, 8)
  assert p.shape == (8, 5)
  assert type(p) is type(x) or isinstance(p, jax.Array)
  np.testing.assert_array_equal(np.asarray(p)[3:], np.repeat(_x(3)[-1:], 5, 0))
  np.testing.assert_array_equal(np.asarray(p)[:3], _x(3))


@pytest.mark.parametrize("x2_n", [None, 11])
@pytest.mark.parametrize("get", ["ntk", ("ntk", "nngp"), None])
def test_bucketed_equals_unpadded(x2_n, get):
  kernel_fn = _net()
  x1 = _x(13)
  x2 = None if x2_n is None else _x(x2_n, seed=1)
  want = kernel_fn(x1, x2, get)
  got = bucketed(kernel_fn)(x1, x2, get)
  if get is None:
    for f in ("nngp", "ntk", "cov1"):
      np.testing.assert_allclose(getattr(got, f), getattr(want, f),
                                 rtol=1e-6, atol=1e-6)
    assert got.shape1 == want.shape1 and got.shape2 == want.shape2
  elif isinstance(get, str):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  else:
    assert type(got)._fields == get
    for a, b in zip(got, want):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_bucketed_under_jit():
  kernel_fn = bucketed(_net())
  x = _x(13)
  got = jax.jit(kernel_fn, static_argnames="get")(x, None, "ntk")
  np.testing.assert_allclose(got, _net()(x, None, "ntk"), rtol=1e-6,
                             atol=1e-6)


def test_bucketed_calls_few_shapes():
  seen = []

  def kernel_fn(x1, x2=None, get=None):
    seen.append((x1.shape[0], None if x2 is None else x2.shape[0]))
    n2 = x1.shape[0] if x2 is None else x2.shape[0]
    return np.zeros((x1.shape[0], n2))

  fn = bucketed(kernel_fn)
  for n in range(9, 17):
    assert fn(_x(n), None, "nngp").shape == (n, n)
  assert set(seen) == {(16, None)}
