"""The packed x2=None layout (`packing.block_layout`, `pack`, `unpack`):
block geometry, and kernels equal to x2 = x1 with and without padding."""
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from widenets import stax
from widenets.stax import packing


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 20_000))
def test_block_layout_covers_n_with_less_than_one_block_of_padding(n):
  n_blocks, b = packing.block_layout(n)
  assert n_blocks * b >= n
  assert n_blocks * b - n < b
  assert n_blocks >= min(n, packing.MAX_BLOCKS // 2)


def test_block_layout_prefers_exact_split_with_aligned_blocks():
  assert packing.block_layout(2000) == (25, 80)  # 80 = 10 x 8, no padding
  assert packing.block_layout(4096) == (32, 128)
  n_blocks, b = packing.block_layout(997)  # prime: padded
  assert n_blocks * b > 997


@pytest.mark.parametrize("n", [200, 203])  # exact split (25 x 8), padded
def test_packed_kernel_equals_x2_equal_x1(packed_small, n):
  rs = np.random.RandomState(n)
  x = rs.randn(n, 5).astype(np.float32)
  _, _, kernel_fn = stax.serial(stax.Dense(64, W_std=1.4, b_std=0.1),
                                stax.Relu(), stax.Dense(64, W_std=1.5),
                                stax.Erf(), stax.Dense(1))
  packed = kernel_fn(x, None, ("nngp", "ntk"))
  full = kernel_fn(x, x, ("nngp", "ntk"))
  for a, b in ((packed.nngp, full.nngp), (packed.ntk, full.ntk)):
    a = np.asarray(a)
    assert a.shape == (n, n)
    np.testing.assert_array_equal(a, a.T)  # mirrored, exactly symmetric
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


def test_packed_dropout_train_inflates_only_the_diagonal(packed_small):
  # Dropout's same-input mask on the packed layout (blocks of block pairs).
  x = np.random.RandomState(0).randn(200, 5).astype(np.float32)
  base = stax.serial(stax.Dense(4, b_std=0.1), stax.Relu())
  rate = 0.6
  k0 = base[2](x, None, "nngp")
  k = stax.serial(base, stax.Dropout(rate))[2](x, None, "nngp")
  eye = np.eye(200, dtype=bool)
  np.testing.assert_allclose(np.diag(k), np.diag(k0) / rate, rtol=1e-6)
  np.testing.assert_allclose(k[~eye], k0[~eye], rtol=1e-6)


def test_grad_of_a_packed_kernel_does_not_fold_the_unpack_transpose():
  # With a constant cotangent (grad of sum(kernel)) XLA would otherwise
  # constant-fold the unpack gather's transpose into a literal of the packed
  # blocks' size, taking seconds to minutes to compile at N >= 1000.
  import jax
  import jax.numpy as jnp
  _, _, kernel_fn = stax.serial(stax.Dense(64), stax.Relu(), stax.Dense(1))
  x = jnp.asarray(np.random.RandomState(0).randn(300, 8), jnp.float32)
  grad = jax.jit(jax.grad(lambda x: jnp.sum(kernel_fn(x, None, "nngp"))))
  hlo = grad.lower(x).compile().as_text()
  # A folded transpose shows up as a float literal of the packed blocks'
  # size ((465, 10, 10) here); the program's own literals are small.
  sizes = [math.prod(int(d) for d in dims.split(",") if d)
           for dims in re.findall(r"= f(?:16|32|64)\[([0-9,]*)\]\S* constant\(",
                                  hlo)]
  assert max(sizes, default=0) < 10_000, sorted(sizes)[-3:]
  unpacked = jax.grad(lambda x: jnp.sum(kernel_fn(x, x, "nngp")))(x)
  np.testing.assert_allclose(grad(x), unpacked, rtol=2e-3, atol=1e-3)


def test_small_x2_none_runs_whole_and_large_packed():
  # One (N, N) float32 NNGP of at most MIN_PACKED_BYTES runs on the whole
  # grid; spatial covariances count (a pair of 4 x 4 images has 256).
  limit = packing.MIN_PACKED_BYTES
  n = math.isqrt(limit // 4)
  assert not packing.worth_packing(n, 1, 4)
  assert packing.worth_packing(n + 1, 1, 4)
  assert packing.worth_packing(math.isqrt(limit // 8) + 1, 1, 8)  # float64
  assert not packing.worth_packing(math.isqrt(limit // 8), 1, 8)
  assert packing.worth_packing(math.isqrt(limit // (4 * 256)) + 1, 256, 4)
  assert not packing.worth_packing(1, 10**9, 4)  # one sample: nothing to pair


@pytest.mark.parametrize("n", [7, 40])
def test_whole_and_packed_x2_none_agree(monkeypatch, n):
  # Every angle- and quadrature-based rule on both layouts of one call.
  x = np.random.RandomState(n).randn(n, 5).astype(np.float32)
  x[3] = 0.0
  x[5] = x[4]
  kernel_fn = stax.serial(
      stax.Dense(64, W_std=1.4, b_std=0.1), stax.Relu(),
      stax.Dense(64, W_std=1.5, b_std=0.1), stax.Erf(),
      stax.Dense(64, W_std=1.2), stax.Gelu(),
      stax.Dense(64, W_std=1.3, b_std=0.2), stax.Sin(),
      stax.Dense(64), stax.LeakyRelu(0.1), stax.Dense(1))[2]
  whole = kernel_fn(x, None, ("nngp", "ntk"))
  monkeypatch.setattr(packing, "MIN_PACKED_BYTES", 0)
  packed = kernel_fn(x, None, ("nngp", "ntk"))
  for a, b in zip(whole, packed):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_array_equal(a, a.T)
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


def test_whole_grid_mirror_swaps_spatial_pairs(monkeypatch):
  # A small x2=None conv kernel with full spatial covariances runs on the
  # whole grid; the mirrored lower triangle is K[j, i] with spatial pairs
  # swapped, as the packed layout's.
  x = np.random.RandomState(0).randn(3, 3, 2, 2).astype(np.float32)
  kernel_fn = stax.serial(stax.Conv(8, (2, 2), padding="SAME"), stax.Relu(),
                          stax.Conv(8, (2, 2), padding="SAME"))[2]
  assert not packing.worth_packing(3, (3 * 2) ** 2, 4)
  whole = np.asarray(kernel_fn(x, None, "nngp"))
  full = np.asarray(kernel_fn(x, x, "nngp"))
  monkeypatch.setattr(packing, "MIN_PACKED_BYTES", 0)
  packed = np.asarray(kernel_fn(x, None, "nngp"))
  assert whole.shape == (3, 3, 3, 3, 2, 2)
  np.testing.assert_array_equal(whole, whole.transpose(1, 0, 3, 2, 5, 4))
  np.testing.assert_allclose(whole, packed, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(whole, full, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("n_blocks, b", [(1, 3), (4, 3), (7, 5)])
def test_pair_variances_read_the_diagonal_blocks(n_blocks, b):
  # The one-gather fast path of `covariance.nngp_variances`: the same
  # entries as the general path (the diagonal blocks' diagonals).
  import jax
  rs = np.random.RandomState(n_blocks)
  m = rs.randn(n_blocks * b, n_blocks * b).astype(np.float32)
  bi, bj = np.triu_indices(n_blocks)
  blocks = lambda i: slice(i * b, (i + 1) * b)
  packed = np.stack([m[blocks(i), blocks(j)] for i, j in zip(bi, bj)])
  var1, var2 = jax.jit(packing.pair_variances)(packed)
  d = np.diagonal(m).reshape(n_blocks, b)
  assert var1.shape == (len(bi), b, 1) and var2.shape == (len(bi), 1, b)
  np.testing.assert_array_equal(var1[:, :, 0], d[bi])
  np.testing.assert_array_equal(var2[:, 0, :], d[bj])
