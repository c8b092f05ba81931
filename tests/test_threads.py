"""Kernel functions traced and run concurrently from 8 threads give the
sequential results and errors: no trace-time state is shared between calls
(overflow flags, row offsets)."""
from __future__ import annotations

import concurrent.futures
import random

import numpy as np
import pytest

import widenets as nt
from widenets import stax
from widenets.stax import chunking

RNG = np.random.RandomState(0)
X1 = RNG.randn(24, 4).astype(np.float32)
X2 = RNG.randn(9, 4).astype(np.float32)
IMG = RNG.randn(10, 4, 4, 2).astype(np.float32)


def _overflowing(activation):
  # Dense(W_std=1e4) grows the variances 1e8x per layer: float32 overflows
  # within 5 layers, first flagged by an activation.
  body = [stax.Dense(8, W_std=1e4), activation]
  return stax.serial(*(body * 6), stax.Dense(1))


# name -> (network factory, call arguments). Factories are called afresh for
# the concurrent run, so that the threads also trace and compile concurrently.
CASES = {
    "relu_x2_none_packed": (
        lambda: stax.serial(stax.Dense(64, b_std=0.1), stax.Relu(),
                            stax.Dense(1)), (X1, None, ("nngp", "ntk"))),
    "erf_x2": (
        lambda: stax.serial(stax.Dense(32, W_std=1.5), stax.Erf(),
                            stax.Dense(1)), (X1, X2, ("nngp", "ntk"))),
    # Row blocks of x1 == x2: Dropout('train') reads the shifted diagonal.
    "dropout_rows_same": (
        lambda: stax.serial(stax.Dense(32), stax.Relu(),
                            stax.Dropout(0.7, mode="train"), stax.Dense(1)),
        (X1, X1, ("nngp", "ntk"))),
    "dropout_rows_other": (
        lambda: stax.serial(stax.Dense(32), stax.Relu(),
                            stax.Dropout(0.7, mode="train"), stax.Dense(1)),
        (X1, X1[:11], ("nngp", "ntk"))),
    "conv_pool": (
        lambda: stax.serial(stax.Conv(8, (3, 3), padding="SAME"),
                            stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1)),
        (IMG, None, "ntk")),
    "repeat_gelu": (
        lambda: stax.serial(stax.Dense(16),
                            stax.repeat(stax.serial(stax.Gelu(),
                                                    stax.Dense(16)), 4),
                            stax.Dense(1)), (X1, X2, "nngp")),
    "overflow_relu": (lambda: _overflowing(stax.Relu()), (X1, None, "ntk")),
    "overflow_rows_abs": (lambda: _overflowing(stax.Abs()),
                          (X1, X2, "ntk")),
    "overflow_repeat": (
        lambda: stax.serial(stax.Dense(8, W_std=1e4), stax.Gelu(),
                            stax.repeat(stax.serial(stax.Dense(8, W_std=1e4),
                                                    stax.LeakyRelu(0.1)), 6),
                            stax.Dense(1)), (X2, None, "nngp")),
}


def _run(kernel_fn, args):
  """The call's arrays, or the (type, message) of the error it raised."""
  try:
    out = kernel_fn(*args)
  except Exception as e:  # noqa: BLE001 -- compared with the sequential run
    return (type(e), str(e))
  return [np.asarray(a) for a in (out if isinstance(out, tuple) else (out,))]


@pytest.fixture
def small_row_blocks(monkeypatch, packed_small):
  # x1 x2 calls run in row blocks of 5 (see `chunking.choose_rows`), x2=None
  # calls packed.
  monkeypatch.setattr(chunking, "BLOCK_BYTES", 0)
  monkeypatch.setattr(chunking, "MIN_ROWS", 5)


def test_concurrent_calls_match_sequential(small_row_blocks):
  expected = {name: _run(make()[2], args)
              for name, (make, args) in CASES.items()}
  # The cases cover results and overflow errors naming different layers.
  errors = {n: e for n, e in expected.items() if isinstance(e, tuple)}
  assert set(errors) == {"overflow_relu", "overflow_rows_abs",
                         "overflow_repeat"}
  assert all(e[0] is nt.KernelOverflowError for e in errors.values())
  assert errors["overflow_relu"][1].startswith("ABRelu(0, 1):")
  assert errors["overflow_rows_abs"][1].startswith("ABRelu(-1, 1):")
  assert errors["overflow_repeat"][1].startswith("ABRelu(0.1, 1):")

  # Fresh kernel functions (nothing compiled yet), each called 3 times, in a
  # shuffled order, from 8 threads.
  fresh = {name: make()[2] for name, (make, _) in CASES.items()}
  jobs = [name for name in CASES for _ in range(3)]
  random.Random(0).shuffle(jobs)
  with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
    futures = [(name, pool.submit(_run, fresh[name], CASES[name][1]))
               for name in jobs]
    got = [(name, f.result()) for name, f in futures]

  assert len(got) == 3 * len(CASES)
  for name, result in got:
    want = expected[name]
    if isinstance(want, tuple):
      assert result == want, name
    else:
      assert not isinstance(result, tuple), (name, result)
      assert len(result) == len(want)
      for a, b in zip(result, want):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=name)
