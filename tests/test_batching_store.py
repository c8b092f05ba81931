"""Disk stores: resumable after SIGKILL, refuse mismatches, read back."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from widenets import stax
from widenets.batching import StoreMismatchError, batch, open_store

zarr = pytest.importorskip("zarr")

_, _, KF = stax.serial(stax.Dense(64, W_std=1.5, b_std=0.05), stax.Relu(),
                       stax.Dense(1))
RNG = np.random.RandomState(0)
X = RNG.randn(9, 4, 3).astype(np.float32)
Y = RNG.randn(5, 4, 3).astype(np.float32)


def same(a, b):
  la, ta = jax.tree_util.tree_flatten(a)
  lb, tb = jax.tree_util.tree_flatten(b)
  assert ta == tb
  for u, v in zip(la, lb):
    np.testing.assert_allclose(np.asarray(v), np.asarray(u), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("x2", [None, Y], ids=["x2=None", "x2"])
@pytest.mark.parametrize("kw", [{}, dict(diagonal_batch=False)])
def test_store_roundtrip_and_resume(tmp_path, x2, kw):
  path = tmp_path / "k.zarr"
  bf = batch(KF, 4, store=path)
  ref = KF(X, x2, **kw)
  same(ref, bf(X, x2, **kw))
  assert bf.last_run.computed > 0 and bf.last_run.skipped == 0
  same(ref, bf(X, x2, **kw))  # everything is in the store already
  assert bf.last_run.computed == 0
  same(ref, open_store(path))


def test_open_store_lazy(tmp_path):
  pytest.importorskip("dask")
  import dask.array as da
  batch(KF, 4, store=tmp_path / "k")(X, None, ("nngp", "ntk"))
  k = open_store(tmp_path / "k", lazy=True)
  assert isinstance(k.ntk, da.Array)
  np.testing.assert_allclose(k.ntk.compute(), KF(X, None, "ntk"), rtol=1e-5,
                             atol=1e-6)


def test_mismatched_store_is_refused(tmp_path):
  path = tmp_path / "k"
  batch(KF, 4, store=path)(X, None, "ntk")
  with pytest.raises(StoreMismatchError, match="different inputs"):
    batch(KF, 4, store=path)(X + 1, None, "ntk")
  with pytest.raises(StoreMismatchError, match="different inputs"):
    batch(KF, 4, store=path)(X, Y, "ntk")
  _, _, other = stax.serial(stax.Dense(64, W_std=2.0), stax.Relu(),
                            stax.Dense(1))
  with pytest.raises(StoreMismatchError, match="different (network|computation)"):
    batch(other, 4, store=path)(X, None, "ntk")
  with pytest.raises(StoreMismatchError, match="different (network|computation)"):
    batch(KF, 4, store=path)(X, None, "nngp")
  with pytest.raises(StoreMismatchError, match="batch_size=4"):
    batch(KF, 3, store=path)(X, None, "ntk")
  def scaled(scale):  # closes over an array, like a Monte Carlo key
    def kernel_fn(x1, x2, get):
      return KF(x1 * scale, None if x2 is None else x2 * scale, get)
    return kernel_fn

  batch(scaled(np.ones((1, 1, 1), np.float32)), 4, store=tmp_path / "c")(X, None, "ntk")
  with pytest.raises(StoreMismatchError, match="different inputs"):
    batch(scaled(2 * np.ones((1, 1, 1), np.float32)), 4, store=tmp_path / "c")(
        X, None, "ntk")
  bf = batch(KF, "auto", store=path)  # 'auto' reuses the store's blocks
  bf(X, None, "ntk")
  assert bf.last_run.grid.b1 == 4 and bf.last_run.computed == 0


def test_store_path_errors(tmp_path):
  f = tmp_path / "file.txt"
  f.write_text("x")
  with pytest.raises(ValueError, match="is a file"):
    batch(KF, 4, store=f)
  d = tmp_path / "dir"
  d.mkdir()
  (d / "other").write_text("x")
  with pytest.raises(ValueError, match="not a widenets store"):
    batch(KF, 4, store=d)
  with pytest.raises(ValueError, match="not a widenets kernel store"):
    open_store(tmp_path / "missing")


_JOB = textwrap.dedent("""
    import sys, time
    import numpy as np
    from widenets import stax
    from widenets.batching import batch
    _, _, kf = stax.serial(stax.Dense(64, W_std=1.5, b_std=0.05), stax.Relu(),
                           stax.Dense(1))
    x = np.random.RandomState(0).randn(12, 4, 3).astype(np.float32)
    # A slow job: each finished block waits, so the parent can kill it halfway.
    batch(kf, 3, store=sys.argv[1],
          progress=lambda done, total: time.sleep(0.4))(x, None, ("nngp", "ntk"))
    """)


def test_sigkill_halfway_then_resume(tmp_path):
  path = str(tmp_path / "k.zarr")
  script = tmp_path / "job.py"
  script.write_text(_JOB)
  root = os.path.dirname(os.path.dirname(os.path.abspath(
      __import__("widenets").__file__)))  # this checkout's widenets
  proc = subprocess.Popen([sys.executable, str(script), path],
                          env=dict(os.environ, PYTHONPATH=root))
  try:
    deadline = time.time() + 90
    done = 0
    while time.time() < deadline and proc.poll() is None:
      try:
        done = int((np.asarray(zarr.open_group(path, mode="r")["blocks"][
            ..., 0]) != 0).sum())
      except Exception:  # store not created yet
        done = 0
      if done >= 5:  # 10 upper blocks of 16: kill after a few
        break
      time.sleep(0.05)
    assert proc.poll() is None, "job finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
  finally:
    if proc.poll() is None:
      proc.kill()
  flags = np.asarray(zarr.open_group(path, mode="r")["blocks"][..., 0]) != 0
  finished = {(i, j) for i in range(4) for j in range(i, 4) if flags[i, j]}
  assert 0 < len(finished) < 10

  x = np.random.RandomState(0).randn(12, 4, 3).astype(np.float32)
  with pytest.raises(ValueError, match="not finished"):
    open_store(path)
  bf = batch(KF, 3, store=path)
  resumed = bf(x, None, ("nngp", "ntk"))
  recomputed = set(bf.last_run.computed_blocks)
  assert not recomputed & finished  # no finished block computed again
  assert recomputed | finished == {(i, j) for i in range(4)
                                   for j in range(i, 4)}
  fresh = batch(KF, 3)(x, None, ("nngp", "ntk"))
  for a, b in zip(fresh, resumed):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  same(fresh, open_store(path))
