"""Stores of the large-n solvers: Nystrom's K_NM on disk, resumable variance
solves, DaskCG over a BlockCG store, one randomized-Nystrom preconditioner."""
import json
import os
import signal
import textwrap

import numpy as np
import pytest

import widenets as nt
from widenets.batching import StoreMismatchError
from widenets.predict import BlockCG, Nystrom

from .test_large import KF, N, REG, ROOT, XT, X, Y, _check, _net, _reference
from .test_large import _run_job

pytest.importorskip("zarr")


def _nystrom(**kw):
  kw = {"m": 40, "block_size": 32, "dtype": "float64", **kw}
  return Nystrom(**kw)


# ---- Nystrom: K_NM in a store, recomputed, float32 --------------------------


def test_nystrom_store_equals_memory_and_resumes(tmp_path):
  import zarr
  path = str(tmp_path / "knm")
  mem = nt.predict.gp_inference(KF, X, Y, XT, "nngp", REG, compute_cov=True,
                                solver=_nystrom())
  solver = _nystrom(store=path)
  out = nt.predict.gp_inference(KF, X, Y, XT, "nngp", REG, compute_cov=True,
                                solver=solver)
  assert solver.info["knm"] == "store"
  assert solver.info["knm_blocks"] == {"computed": 3, "skipped": 0}
  np.testing.assert_allclose(out.mean, mem.mean, rtol=1e-9, atol=1e-9)
  np.testing.assert_allclose(out.covariance, mem.covariance, atol=1e-9)
  # Forget one row block: a rerun computes that block only, and the CG
  # resumes from its final checkpoint (no iteration).
  zarr.open_group(path, mode="r+")["done"][1] = 0
  again = nt.predict.gp_inference(KF, X, Y, XT, "nngp", REG, solver=solver)
  assert solver.info["knm_blocks"] == {"computed": 1, "skipped": 2}
  cg = solver.info["cg"]["nngp"]
  assert cg.resumed_from == cg.iterations > 0
  np.testing.assert_allclose(again, mem.mean, rtol=1e-9, atol=1e-9)


def test_nystrom_store_refuses_other_centres_data_network(tmp_path):
  path = str(tmp_path / "knm")
  nt.predict.gp_inference(KF, X, Y, XT, "nngp", REG,
                          solver=_nystrom(store=path))
  with pytest.raises(StoreMismatchError, match="another centres"):
    nt.predict.gp_inference(KF, X, Y, XT, "nngp", REG,
                            solver=_nystrom(store=path, seed=1))
  with pytest.raises(StoreMismatchError, match="another m"):
    nt.predict.gp_inference(KF, X, Y, XT, "nngp", REG,
                            solver=_nystrom(store=path, m=41))
  with pytest.raises(StoreMismatchError, match="other training inputs"):
    nt.predict.gp_inference(KF, X * 2, Y, XT, "nngp", REG,
                            solver=_nystrom(store=path))
  with pytest.raises(StoreMismatchError, match="another network"):
    nt.predict.gp_inference(_net(3), X, Y, XT, "nngp", REG,
                            solver=_nystrom(store=path))
  # A BlockCG store is not a Nystrom store, and vice versa.
  blk = str(tmp_path / "tri")
  nt.predict.gp_inference(KF, X, Y, XT, "nngp", REG,
                          solver=BlockCG(store=blk, block_size=48))
  with pytest.raises(ValueError, match="not a widenets Nystrom"):
    nt.predict.gp_inference(KF, X, Y, XT, "nngp", REG,
                            solver=_nystrom(store=blk))
  with pytest.raises(ValueError, match="not a widenets kernel store"):
    nt.predict.gp_inference(KF, X, Y, XT, "nngp", REG,
                            solver=BlockCG(store=path, block_size=32))


def test_nystrom_recomputed_and_float32():
  ref = nt.predict.gp_inference(KF, X, Y, XT, "nngp", REG, compute_cov=True,
                                solver=_nystrom())
  rec = _nystrom(memory_limit=0)
  out = nt.predict.gp_inference(KF, X, Y, XT, "nngp", REG, compute_cov=True,
                                solver=rec)
  assert rec.info["knm"] == "recomputed"
  np.testing.assert_allclose(out.mean, ref.mean, rtol=1e-9, atol=1e-9)
  # Past memory_limit / 2 for float64 factors, the m x m algebra is float32.
  f32 = Nystrom(m=40, block_size=32, memory_limit=16 * 40 * 40)
  out = nt.predict.gp_inference(KF, X, Y, XT, "nngp", REG, compute_cov=True,
                                solver=f32)
  assert f32.info["dtype"] == "float32"
  assert f32.info["cg"]["nngp"].converged
  scale = float(np.max(np.abs(ref.mean)))
  np.testing.assert_allclose(out.mean, ref.mean, atol=1e-3 * scale)
  np.testing.assert_allclose(out.covariance, ref.covariance,
                             atol=1e-3 * float(np.max(ref.covariance)))


def test_nystrom_m_equals_n_with_store_is_exact(tmp_path):
  out = nt.predict.gp_inference(
      KF, X, Y, XT, "nngp", REG, compute_cov=True,
      solver=_nystrom(m=N, store=str(tmp_path / "s")))
  _check(out, _reference("nngp"))


# ---- resumable variance solves -----------------------------------------------

_VAR_JOB = textwrap.dedent("""
    import os, signal, sys, json
    import numpy as np
    sys.path.insert(0, {root!r})
    import widenets as nt
    from widenets import stax
    from widenets.predict import BlockCG
    _, _, kf = stax.serial(stax.Dense(32, W_std=1.5, b_std=0.1), stax.Relu(),
                           stax.Dense(32, W_std=1.5, b_std=0.1), stax.Relu(),
                           stax.Dense(1))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 5)).astype(np.float32)
    y = np.stack([np.sin(x[:, 0]), np.cos(x[:, 1])], 1).astype(np.float32)
    xt = rng.standard_normal((20, 5)).astype(np.float32)
    kill_var = int(sys.argv[2])
    solver = None
    calls = []
    def on_iter(it, res):
      # Variance solves start once the mean solve is in info["cg"].
      if "nngp" in solver.info["cg"]:
        calls.append(it)
        if len(calls) == kill_var:
          os.kill(os.getpid(), signal.SIGKILL)
    solver = BlockCG(store=sys.argv[1], block_size=16, dtype="float64",
                     preconditioner=None, tol=1e-10, maxiter=500,
                     checkpoint_every=5, variance_batch=10,
                     iteration_callback=on_iter)
    out = nt.predict.gp_inference(kf, x, y, xt, "nngp", 1e-2,
                                  compute_cov=True, solver=solver)
    print(json.dumps(dict(
        variance_its=calls,
        var=np.asarray(out.covariance, np.float64).tolist())))
""")


def test_sigkill_mid_variance_solve_resumes(tmp_path):
  script = tmp_path / "job.py"
  script.write_text(_VAR_JOB.format(root=str(ROOT)))
  ref = json.loads(_run_job(script, tmp_path / "ref", 0).stdout)
  its = ref["variance_its"]
  first = its.index(1, 1)  # the second test batch's solve starts here
  assert first > 8 and len(its) - first > 8
  store = tmp_path / "store"
  # Killed in the second batch's solve, 7 iterations in: the first batch's
  # variances and the second's iteration-5 checkpoint are in the store.
  r = _run_job(script, store, first + 7)
  assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
  out = json.loads(_run_job(script, store, 0).stdout)
  # The rerun solved neither the mean nor the first batch again, and
  # resumed the second from iteration 5.
  assert out["variance_its"] == its[first + 5:]
  np.testing.assert_allclose(out["var"], ref["var"], rtol=1e-12, atol=1e-14)


# ---- DaskCG over a triangle store ---------------------------------------------


def test_dask_cg_on_block_cg_store(tmp_path):
  pytest.importorskip("dask")
  from widenets.scale import DaskCG
  path = str(tmp_path / "k")
  ref = _reference("nngp")
  blk = BlockCG(store=path, block_size=32, dtype="float64", rank=16)
  nt.predict.gp_inference(KF, X, Y, XT, "nngp", REG, solver=blk)
  # Stores written before the ownership marker existed are still ours.
  os.remove(os.path.join(path, "widenets_store.json"))
  solver = DaskCG(kernel_store=path, chunks=32, dtype="float64", rank=16)
  out = nt.predict.gp_inference(KF, X, Y, XT, "nngp", REG, compute_cov=True,
                                solver=solver)
  assert "blocks_computed" not in solver.info  # BlockCG's blocks, reused
  assert solver.info["cg"]["nngp"].iterations == \
      blk.info["cg"]["nngp"].iterations
  _check(out, ref)
  with pytest.raises(StoreMismatchError, match="other training inputs"):
    nt.predict.gp_inference(KF, X + 1, Y, XT, "nngp", REG, solver=solver)


def test_dask_cg_fills_store_then_block_cg_reuses_it(tmp_path):
  pytest.importorskip("dask")
  from widenets.scale import DaskCG
  path = str(tmp_path / "k")
  solver = DaskCG(kernel_store=path, chunks=32, dtype="float64", rank=16)
  out = nt.predict.gp_inference(KF, X, Y, XT, "nngp", REG, solver=solver)
  assert solver.info["blocks_computed"] == 6
  blk = BlockCG(store=path, block_size=32, dtype="float64", rank=16)
  again = nt.predict.gp_inference(KF, X, Y, XT, "nngp", REG, solver=blk)
  assert blk.info["blocks"].computed == 0
  np.testing.assert_allclose(again, out, rtol=1e-10, atol=1e-12)


def test_assign_panels_balances_blocks():
  from widenets.scale.store_panels import assign_panels
  owned = assign_panels(10, ["a", "b"])
  assert sorted(owned["a"] + owned["b"]) == list(range(10))
  loads = [sum(10 - i for i in p) for p in owned.values()]
  assert abs(loads[0] - loads[1]) <= 10 and sum(loads) == 55


@pytest.mark.slow
def test_dask_cg_store_on_process_cluster(tmp_path):
  pytest.importorskip("distributed")
  from widenets.scale import DaskCG, local_client
  ref = _reference("nngp", compute_cov=False)
  with local_client(n_workers=2, processes=True,
                    dashboard_address=None) as client:
    solver = DaskCG(client=client, kernel_store=str(tmp_path / "k"),
                    chunks=32, dtype="float64", rank=16)
    out = nt.predict.gp_inference(KF, X, Y, XT, "nngp", REG, solver=solver)
    owned = solver.info["panels"]
    assert len(owned) == 2 and all(owned.values())
    client.cluster.close()
  assert solver.info["blocks_computed"] == 6
  np.testing.assert_allclose(out, ref, atol=1e-4 * np.abs(ref).max())


# ---- one randomized Nystrom preconditioner -----------------------------------


def test_randomized_nystrom_numpy_and_jax_agree():
  import jax.numpy as jnp
  from widenets.predict.randomized_nystrom import (apply_nystrom,
                                                   gaussian_sketch,
                                                   nystrom_factors)
  rng = np.random.default_rng(1)
  q, _ = np.linalg.qr(rng.standard_normal((50, 50)))
  k = (q * np.logspace(-6, 0, 50)) @ q.T
  omega = gaussian_sketch(50, 10, 0, np.float64)
  u, s = nystrom_factors(lambda v: k @ v, omega, 1e-3)
  uj, sj = nystrom_factors(lambda v: jnp.asarray(k) @ v, jnp.asarray(omega),
                           1e-3)
  # JAX may compute in float32 (x64 off): compare the operators.
  r = rng.standard_normal((50, 3))
  np.testing.assert_allclose(
      np.asarray(apply_nystrom((uj, sj), jnp.asarray(r, uj.dtype))),
      apply_nystrom((u, s), r), rtol=1e-3, atol=1e-3 * np.abs(r).max())
  # The preconditioned matrix is better conditioned than K + mu I.
  a = k + 1e-3 * np.eye(50)
  pa = apply_nystrom((u, s), a)
  ev = np.sort(np.abs(np.linalg.eigvals(pa)))
  assert ev[-1] / ev[0] < 0.5 * np.linalg.cond(a)
