"""Kernels as Dask arrays: threads, a LocalCluster, a worker killed mid-job."""
from __future__ import annotations

import os
import signal
import time

import jax
import numpy as np
import pytest

from widenets import stax

da = pytest.importorskip("dask.array")
from widenets.scale import kernel_array  # noqa: E402

_, _, KF = stax.serial(stax.Dense(64, W_std=1.5, b_std=0.05), stax.Relu(),
                       stax.Dense(1))
RNG = np.random.RandomState(0)
X = RNG.randn(10, 4, 3).astype(np.float32)
Y = RNG.randn(5, 4, 3).astype(np.float32)


def close(a, b):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize("x2", [None, Y], ids=["x2=None", "x2"])
def test_threaded_equals_direct(x2):
  a = kernel_array(KF, X, x2, "ntk", 3)
  assert isinstance(a, da.Array)
  assert a.chunks[:2] == ((3, 3, 3, 1), (3, 3, 3, 1) if x2 is None
                          else (3, 2))
  close(a.compute(scheduler="threads"), KF(X, x2, "ntk"))


def test_symmetric_chunks_computed_once():
  a = kernel_array(KF, X, None, "nngp", 3)
  graph = dict(a.__dask_graph__())
  blocks = [k for k in graph if isinstance(k, tuple) and
            str(k[0]).startswith("kernel-block")]
  assert len(blocks) == 4 * 5 // 2  # i <= j only


def test_namedtuple_and_kernel_outputs():
  out = kernel_array(KF, X, Y, ("nngp", "cov1"), 4)
  ref = KF(X, Y, ("nngp", "cov1"))
  close(out.nngp.compute(), ref.nngp)
  close(out.cov1.compute(), ref.cov1)
  k = kernel_array(KF, X, None, None, 4)
  close(k.ntk.compute(), KF(X, None, "ntk"))


def test_to_zarr(tmp_path):
  zarr = pytest.importorskip("zarr")
  kernel_array(KF, X, None, "ntk", 4).to_zarr(str(tmp_path / "k.zarr"))
  close(zarr.open_array(str(tmp_path / "k.zarr"), mode="r")[...],
        KF(X, None, "ntk"))


def test_bad_chunks():
  with pytest.raises(ValueError, match="chunks must be a positive integer"):
    kernel_array(KF, X, None, "ntk", -3)


def test_local_cluster_threads_in_process():
  distributed = pytest.importorskip("distributed")
  with distributed.LocalCluster(n_workers=2, threads_per_worker=1,
                                processes=False,
                                dashboard_address=None) as cluster:
    with distributed.Client(cluster) as client:
      a = kernel_array(KF, X, None, "ntk", 3)
      close(a.compute(scheduler=client), KF(X, None, "ntk"))


def _slow_kernel(x1, x2, get):
  # Host callback sleep: slow enough to kill a worker mid-job.
  out = KF(x1, x2, get)
  return jax.pure_callback(lambda v: (time.sleep(0.5), v)[1],
                           jax.ShapeDtypeStruct(out.shape, out.dtype), out)


@pytest.mark.slow
def test_local_cluster_survives_killed_worker():
  distributed = pytest.importorskip("distributed")
  with distributed.LocalCluster(n_workers=2, threads_per_worker=1,
                                processes=True, memory_limit="2GB",
                                dashboard_address=None) as cluster:
    with distributed.Client(cluster) as client:
      a = kernel_array(_slow_kernel, X, None, "ntk", 2)  # 15 blocks
      fut = client.compute(a)
      pids = client.run(os.getpid)
      deadline = time.time() + 60
      while time.time() < deadline:
        if sum(len(v) for v in client.has_what().values()) >= 3:
          break
        time.sleep(0.1)
      assert not fut.done()  # killed mid-job
      os.kill(next(iter(pids.values())), signal.SIGKILL)  # a worker dies
      result = fut.result(timeout=240)
  close(result, KF(X, None, "ntk"))
