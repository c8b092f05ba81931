"""Row-chunked kernels (`widenets.stax.chunking`): computing a network on
blocks of x1's rows inside one compiled loop gives the one-piece kernels."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from widenets import stax
from widenets.stax import chunking
from widenets.stax import KernelOverflowError

ALL = ("nngp", "ntk", "cov1", "cov2")


@pytest.fixture
def rows(monkeypatch):
  """``rows(r)``: later kernel_fn calls use blocks of r rows (None: none)."""
  def set_rows(r):
    if r is None:
      monkeypatch.setattr(chunking, "MIN_ROWS", 10**9)
    else:
      monkeypatch.setattr(chunking, "BLOCK_BYTES", 0)
      monkeypatch.setattr(chunking, "MIN_ROWS", r)
  return set_rows


def _conv_net(readout: bool):
  layers = [stax.Conv(8, (3, 3), padding="SAME", W_std=1.3, b_std=0.1),
            stax.Relu(), stax.AvgPool((2, 2)),
            stax.Conv(8, (3, 3), padding="SAME", W_std=1.3), stax.Erf()]
  if readout:
    layers += [stax.GlobalAvgPool(), stax.Dense(1)]
  return stax.serial(*layers)


def _residual():
  block = stax.serial(stax.FanOut(2),
                      stax.parallel(stax.serial(stax.Relu(), stax.Dense(16)),
                                    stax.Identity()),
                      stax.FanInSum())
  return stax.serial(stax.Dense(16, b_std=0.1), block, stax.LayerNorm(),
                     stax.Dense(1))


NETS = {
    "erf_relu": (lambda: stax.serial(
        stax.Dense(64, W_std=1.5, b_std=0.05), stax.Erf(),
        stax.Dense(64, W_std=1.5, b_std=0.05), stax.Relu(), stax.Dense(1)),
                 (5,)),
    "sign_abrelu": (lambda: stax.serial(
        stax.Dense(32, b_std=0.2), stax.Sign(), stax.Dense(32),
        stax.ABRelu(-0.3, 1.2), stax.Dense(1, parameterization="standard")),
                    (4,)),
    # Dropout('train') reads the batch diagonal, which a block sees shifted.
    "dropout": (lambda: stax.serial(stax.Dense(32), stax.Relu(),
                                    stax.Dropout(0.7, mode="train"),
                                    stax.Dense(1)), (4,)),
    "residual_layernorm": (_residual, (6,)),
    "conv_readout": (lambda: _conv_net(True), (4, 4, 2)),
    "conv_spatial": (lambda: _conv_net(False), (4, 4, 2)),
}


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("same", [False, True])
def test_chunked_equals_one_piece(rows, name, same):
  make, shape = NETS[name]
  kernel_fn = make()[2]
  rng = np.random.RandomState(0)
  x1 = rng.randn(23, *shape).astype(np.float32)
  x2 = x1.copy() if same else rng.randn(17, *shape).astype(np.float32)
  rows(None)
  ref = kernel_fn(x1, x2, ALL)
  rows(5)  # 5 blocks: offsets 0, 5, 10, 15 and an overlapping 18
  out = kernel_fn(x1, x2, ALL)
  for field, a, b in zip(ALL, ref, out):
    assert a.shape == b.shape, field
    scale = float(jnp.max(jnp.abs(a)))
    np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-6 * scale,
                               err_msg=field)


def test_x2_equal_x1_keeps_exact_zero_angle(rows):
  # Relu's arc-cosine kernel amplifies a round-off angle to sqrt(eps) on the
  # diagonal; blocks must see exactly zero angle there, like x2=None.
  kernel_fn = stax.serial(stax.Dense(64), stax.Relu(), stax.Dense(64),
                          stax.Relu(), stax.Dense(1))[2]
  x = np.random.RandomState(1).randn(40, 7).astype(np.float32)
  rows(8)
  chunked = kernel_fn(x, x.copy(), ("nngp", "ntk"))
  none = kernel_fn(x, None, ("nngp", "ntk"))
  for a, b in zip(none, chunked):
    np.testing.assert_allclose(np.diag(b), np.diag(a), rtol=2e-6)
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_kernel_metadata_is_whole_batch(rows):
  kernel_fn = NETS["conv_spatial"][0]()[2]
  x1 = np.ones((12, 4, 4, 2), np.float32)
  x2 = np.zeros((9, 4, 4, 2), np.float32) + 0.5
  rows(4)
  k = kernel_fn(x1, x2)
  assert k.nngp.shape == (12, 9, 3, 3, 3, 3)  # AvgPool strides 1
  assert k.cov1.shape == (12, 3, 3, 3, 3) and k.cov2.shape[0] == 9
  assert k.shape1[0] == 12 and k.shape2[0] == 9
  assert not bool(k.x1_is_x2)


def test_nan_in_a_later_block_names_x1(rows):
  kernel_fn = NETS["erf_relu"][0]()[2]
  x1 = np.random.RandomState(2).randn(30, 5).astype(np.float32)
  x1[27, 3] = np.nan
  rows(6)
  with pytest.raises(ValueError, match=r"x1 of shape \(30, 5\).*NaN"):
    kernel_fn(x1, x1[:10], "nngp")


def test_overflow_in_a_block_names_the_layer(rows):
  kernel_fn = stax.serial(*([stax.Dense(8, W_std=40.0), stax.Relu()] * 30),
                          stax.Dense(1))[2]
  x = np.random.RandomState(3).randn(20, 4).astype(np.float32)
  rows(4)
  with pytest.raises(KernelOverflowError, match="overflowed"):
    kernel_fn(x, x[:7], "ntk")


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n1=st.integers(2, 40), n2=st.integers(1, 12), r=st.integers(1, 20))
def test_any_block_size(rows, n1, n2, r):
  kernel_fn = NETS["erf_relu"][0]()[2]
  rng = np.random.RandomState(n1 * 100 + n2)
  x1 = rng.randn(n1, 5).astype(np.float32)
  x2 = rng.randn(n2, 5).astype(np.float32)
  rows(None)
  ref = kernel_fn(x1, x2, ("nngp", "ntk"))
  rows(r)
  out = kernel_fn(x1, x2, ("nngp", "ntk"))
  for a, b in zip(ref, out):
    np.testing.assert_allclose(b, a, rtol=2e-5, atol=1e-6)


def test_choose_rows():
  # 2000 x 2000 float32 dense kernel: 15 blocks of 134 rows (~1 MB).
  assert chunking.choose_rows(2000, 2000, 4) == 134
  assert chunking.choose_rows(100, 2000, 4) is None  # fewer than 2 blocks
  # Huge rows (conv with full spatial covariances): never below MIN_ROWS.
  assert chunking.choose_rows(10_000, 10**7, 4) >= chunking.MIN_ROWS
  for n1 in (128, 129, 1000, 4097):
    r = chunking.choose_rows(n1, 10**6, 4)
    assert r >= chunking.MIN_ROWS
    n_blocks = -(-n1 // r)
    assert n_blocks >= 2 and n1 - (n_blocks - 1) * r > 0
    assert n_blocks * r - n1 < n_blocks  # overlap of the last block


def test_small_problems_run_unblocked():
  whole = chunking.WHOLE_BLOCKS * chunking.BLOCK_BYTES
  # 1000 x 1000 float32 (4 MB <= 4 MiB): one piece; in float64, or with
  # one row of 4 KiB more than 4 MiB: blocks.
  assert chunking.choose_rows(1000, 1000, 4) is None
  assert chunking.choose_rows(1000, 1000, 8) == 143
  assert chunking.choose_rows(whole // 4096, 1024, 4) is None
  assert chunking.choose_rows(whole // 4096 + 1, 1024, 4) == 257


def test_blocked_and_unblocked_agree_at_the_threshold(monkeypatch):
  kernel_fn = NETS["erf_relu"][0]()[2]
  x = np.random.RandomState(7).randn(17, 5).astype(np.float32)
  x2 = np.random.RandomState(8).randn(8, 5).astype(np.float32)
  # Blocks of 4 rows of 8 float32 entries; up to 4 blocks (16 rows) whole.
  monkeypatch.setattr(chunking, "BLOCK_BYTES", 4 * 8 * 4)
  monkeypatch.setattr(chunking, "MIN_ROWS", 4)
  assert chunking.choose_rows(16, 8, 4) is None
  assert chunking.choose_rows(17, 8, 4) == 5
  seen = []
  real = chunking.map_rows
  monkeypatch.setattr(chunking, "map_rows",
                      lambda *a: seen.append(a[2]) or real(*a))
  at, above = (kernel_fn(x[:n], x2, ALL) for n in (16, 17))
  assert seen == [5]
  monkeypatch.setattr(chunking, "WHOLE_BLOCKS", 0)  # blocks below it too
  at_blocked = kernel_fn(x[:16], x2, ALL)
  monkeypatch.setattr(chunking, "MIN_ROWS", 10**9)  # no blocks at all
  above_whole = kernel_fn(x, x2, ALL)
  assert seen == [5, 4]
  for got, want in ((at_blocked, at), (above, above_whole)):
    for a, b in zip(got, want):
      np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


def test_chunked_under_outer_jit_and_grad(rows):
  kernel_fn = NETS["erf_relu"][0]()[2]
  x1 = np.random.RandomState(4).randn(12, 5).astype(np.float32)
  x2 = np.random.RandomState(5).randn(6, 5).astype(np.float32)
  rows(3)
  eager = kernel_fn(x1, x2, "ntk")
  jitted = jax.jit(lambda a, b: kernel_fn(a, b, "ntk"))(x1, x2)
  # float32 round-off relative to the kernel's scale: under an outer jit
  # the hyperparameters are constants XLA may fold, in a direct call
  # traced arguments (`sharing`), so near-zero entries differ in last bits.
  np.testing.assert_allclose(jitted, eager, rtol=1e-6,
                             atol=1e-6 * np.abs(eager).max())
  g = jax.grad(lambda a: kernel_fn(a, x2, "ntk").sum())(x1)
  assert g.shape == x1.shape and bool(jnp.all(jnp.isfinite(g)))
