"""Large-n solvers (BlockCG, Nystrom, DaskCG) against dense Cholesky."""
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import widenets as nt
from widenets import stax
from widenets.batching import StoreMismatchError
from widenets.predict import BlockCG, Cholesky, Nystrom
from widenets.predict.pcg import pcg

pytest.importorskip("zarr")

ROOT = pathlib.Path(__file__).resolve().parents[2]
N, T, D = 96, 20, 5
REG = 1e-2


def _net(depth=2):
  layers = []
  for _ in range(depth):
    layers += [stax.Dense(32, W_std=1.5, b_std=0.1), stax.Relu()]
  return stax.serial(*layers, stax.Dense(1))[2]


KF = _net()
RNG = np.random.default_rng(0)
X = RNG.standard_normal((N, D)).astype(np.float32)
Y = np.stack([np.sin(X[:, 0]), np.cos(X[:, 1])], 1).astype(np.float32)
XT = RNG.standard_normal((T, D)).astype(np.float32)


def _reference(get, compute_cov=True):
  return nt.predict.gp_inference(KF, X, Y, XT, get, REG,
                                 compute_cov=compute_cov,
                                 solver=Cholesky(dtype="float64"))


def _check(out, ref, rtol=1e-4):
  scale = float(np.max(np.abs(ref.mean)))
  np.testing.assert_allclose(out.mean, ref.mean, atol=rtol * scale)
  var = np.diagonal(ref.covariance)
  assert out.covariance.shape == var.shape
  np.testing.assert_allclose(out.covariance, var,
                             atol=rtol * float(np.max(var)))


@pytest.mark.parametrize("store", [False, True])
def test_block_cg_equals_cholesky(tmp_path, store):
  solver = BlockCG(store=str(tmp_path / "k") if store else None,
                   block_size=32, dtype="float64", rank=16)
  out = nt.predict.gp_inference(KF, X, Y, XT, ("nngp", "ntkgp"), REG,
                                compute_cov=True, solver=solver)
  ref = _reference(("nngp", "ntkgp"))
  _check(out.nngp, ref.nngp)
  _check(out.ntkgp, ref.ntkgp)
  blocks = solver.info["blocks"]
  assert blocks.total == 6 and blocks.computed == 6  # 3 x 3 grid, i <= j


def test_block_cg_jacobi_and_strings():
  ref = _reference("nngp", compute_cov=False)
  out = nt.predict.gp_inference(KF, X, Y, XT, "nngp", REG,
                                solver=BlockCG(block_size=40, dtype="float64",
                                               preconditioner="jacobi"))
  np.testing.assert_allclose(out, ref, atol=1e-4 * np.abs(ref).max())
  out = nt.predict.gp_inference(KF, X, Y, XT, "nngp", REG, solver="nystrom")
  assert out.shape == ref.shape  # default m = min(n, 1000)


def test_nystrom_m_equals_n_is_exact():
  solver = Nystrom(m=N, block_size=32)
  out = nt.predict.gp_inference(KF, X, Y, XT, "nngp", REG, compute_cov=True,
                                solver=solver)
  _check(out, _reference("nngp"))
  assert sorted(solver.info["centres"]) == list(range(N))


@pytest.mark.parametrize("centres", ["uniform", "rpcholesky"])
def test_nystrom_error_shrinks_with_m(centres):
  ref = _reference("nngp", compute_cov=False)
  errs = []
  for m in (12, 48, N):
    out = nt.predict.gp_inference(KF, X, Y, XT, "nngp", REG,
                                  solver=Nystrom(m=m, centres=centres,
                                                 block_size=32))
    errs.append(float(np.mean((np.asarray(out) - ref) ** 2)))
  assert errs[2] < 1e-8 * np.mean(ref ** 2) + 1e-12
  assert errs[1] < errs[0]


def test_nystrom_variance_close_to_exact_at_large_m():
  out = nt.predict.gp_inference(KF, X, Y, XT, "nngp", REG, compute_cov=True,
                                solver=Nystrom(m=80, centres="rpcholesky",
                                               block_size=32))
  var = np.diagonal(_reference("nngp").covariance)
  err = np.abs(np.asarray(out.covariance) - var)
  assert np.max(err) < 0.1 * var.max()
  far = nt.predict.gp_inference(KF, X, Y, XT, "nngp", REG, compute_cov=True,
                                solver=Nystrom(m=8, block_size=32))
  assert np.mean(np.abs(np.asarray(far.covariance) - var)) > np.mean(err)


def test_ensemble_at_infinity():
  pred = nt.predict.gradient_descent_mse_ensemble(KF, X, Y, diag_reg=REG,
                                                  solver=Nystrom(m=N))
  ref = nt.predict.gradient_descent_mse_ensemble(
      KF, X, Y, diag_reg=REG, solver=Cholesky(dtype="float64"))
  for get in ("nngp", "ntk"):
    want = ref(None, XT, get)
    np.testing.assert_allclose(pred(None, XT, get), want,
                               atol=1e-4 * np.abs(want).max())
  got = pred(None, XT, "nngp", compute_cov=True)
  np.testing.assert_allclose(
      got.covariance, np.diagonal(ref(None, XT, "nngp", True).covariance),
      atol=1e-4)
  with pytest.raises(ValueError, match="t=None"):
    pred(1., XT, "nngp")
  with pytest.raises(ValueError, match="'ntk' posterior covariance"):
    pred(None, XT, "ntk", compute_cov=True)


def test_progress_bars(capsys):
  pytest.importorskip("tqdm")
  nt.predict.gp_inference(KF, X, Y, XT, "nngp", REG,
                          solver=BlockCG(block_size=48, progress=True))
  err = capsys.readouterr().err
  assert "kernel blocks" in err and "3/3" in err
  assert "BlockCG (nngp, n=96) iterations" in err and "residual" in err


def test_train_set_predictions():
  out = nt.predict.gp_inference(KF, X, Y, None, "nngp", REG, compute_cov=True,
                                solver=BlockCG(block_size=48))
  np.testing.assert_array_equal(out.mean, Y)
  np.testing.assert_array_equal(out.covariance, np.zeros(N))


def test_dask_cg_threads_equals_cholesky():
  pytest.importorskip("dask")
  from widenets.scale import DaskCG
  solver = DaskCG(chunks=32, dtype="float64", rank=16)
  out = nt.predict.gp_inference(KF, X, Y, XT, "nngp", REG, compute_cov=True,
                                solver=solver)
  _check(out, _reference("nngp"))


@pytest.mark.slow
def test_dask_cg_local_cluster(tmp_path):
  distributed = pytest.importorskip("distributed")
  from widenets.scale import DaskCG
  ref = _reference("nngp", compute_cov=False)
  with distributed.LocalCluster(n_workers=2, threads_per_worker=1,
                                processes=False,
                                dashboard_address=None) as cluster:
    with distributed.Client(cluster) as client:
      for store in (None, str(tmp_path / "dask")):
        out = nt.predict.gp_inference(
            KF, X, Y, XT, "nngp", REG,
            solver=DaskCG(client=client, chunks=32, dtype="float64",
                          store=store))
        np.testing.assert_allclose(out, ref, atol=1e-4 * np.abs(ref).max())


# ---- bad input -------------------------------------------------------------


@pytest.mark.parametrize("m,match", [(0, "must be >= 1"), (N + 1, "> n="),
                                     (2.5, "must be an integer")])
def test_nystrom_bad_m(m, match):
  with pytest.raises(ValueError, match=match):
    nt.predict.gp_inference(KF, X, Y, XT, "nngp", REG, solver=Nystrom(m=m))


def test_non_convergence_warns_with_residual():
  with pytest.warns(RuntimeWarning, match=r"did not reach tol=1e-12 in "
                    r"maxiter=2 iterations: the largest relative residual "
                    r".* is [0-9.e-]+"):
    nt.predict.gp_inference(KF, X, Y, XT, "nngp", 1e-6,
                            solver=BlockCG(block_size=48, maxiter=2,
                                           tol=1e-12, preconditioner=None))
  with pytest.raises(RuntimeError, match="did not reach"):
    nt.predict.gp_inference(KF, X, Y, XT, "nngp", 1e-6,
                            solver=Nystrom(m=40, maxiter=1, tol=1e-14,
                                           on_failure="raise"))


def test_bad_shapes_and_kinds():
  with pytest.raises(ValueError, match="y_train"):
    nt.predict.gp_inference(KF, X, np.full_like(Y, np.nan), XT, "nngp",
                            solver="block_cg")
  with pytest.raises(ValueError, match="has 96 examples"):
    nt.predict.gp_inference(KF, X, Y[:10], XT, "nngp", solver="block_cg")
  with pytest.raises(ValueError, match="'ntk' posterior covariance"):
    nt.predict.gp_inference(KF, X, Y, XT, "ntk", compute_cov=True,
                            solver="block_cg")
  with pytest.raises(ValueError, match="unknown preconditioner"):
    nt.predict.gp_inference(KF, X, Y, XT, "nngp",
                            solver=BlockCG(preconditioner="ilu"))


def test_store_from_other_data_or_network_is_refused(tmp_path):
  path = str(tmp_path / "k")
  solver = BlockCG(store=path, block_size=48)
  nt.predict.gp_inference(KF, X, Y, XT, "nngp", REG, solver=solver)
  with pytest.raises(StoreMismatchError, match="other training inputs"):
    nt.predict.gp_inference(KF, X + 1, Y, XT, "nngp", REG, solver=solver)
  with pytest.raises(StoreMismatchError, match="another network"):
    nt.predict.gp_inference(_net(3), X, Y, XT, "nngp", REG, solver=solver)
  with pytest.raises(StoreMismatchError, match="block_size=48"):
    nt.predict.gp_inference(KF, X, Y, XT, "nngp", REG,
                            solver=BlockCG(store=path, block_size=32))
  (tmp_path / "junk").mkdir()
  (tmp_path / "junk" / "f").write_text("x")
  with pytest.raises(ValueError, match="not a widenets kernel store"):
    nt.predict.gp_inference(KF, X, Y, XT, "nngp", REG,
                            solver=BlockCG(store=str(tmp_path / "junk")))


# ---- resumability -----------------------------------------------------------


@pytest.mark.parametrize("precond", [None, "jacobi"])
def test_pcg_converges_in_n_steps(precond):
  # kappa ~ 1e4: unpreconditioned CG still ends in about n steps.
  q, _ = np.linalg.qr(RNG.standard_normal((60, 60)))
  a = (q * np.logspace(-4, 0, 60)) @ q.T
  b = RNG.standard_normal((60, 3))
  inv = 1. / np.diagonal(a)
  x, info = pcg(lambda v: a @ v, None if precond is None else
                (lambda r: inv[:, None] * r), b, 1e-8, 300)
  assert info.converged and info.iterations <= 200, info.iterations
  np.testing.assert_allclose(a @ x, b, atol=1e-6)


def test_pcg_nan_column_is_reported_and_the_others_solved():
  a = RNG.standard_normal((30, 30))
  a = a @ a.T + 30 * np.eye(30)
  b = RNG.standard_normal((30, 4))
  b[3, 2] = np.nan
  with pytest.warns(RuntimeWarning, match="NaN residuals"):
    x, info = pcg(lambda v: a @ v, None, b, 1e-10, 100)
  assert not info.converged and np.isnan(info.residual)
  assert all(np.isfinite(h) for h in info.history) and info.iterations > 0
  good = [0, 1, 3]
  np.testing.assert_allclose(a @ x[:, good], b[:, good], atol=1e-8)


def test_pcg_resumes_exactly():
  a = RNG.standard_normal((30, 30))
  a = a @ a.T + 30 * np.eye(30)
  b = RNG.standard_normal((30, 2))
  saved = {}
  full, info = pcg(lambda v: a @ v, None, b, 1e-12, 100,
                   checkpoint=lambda s: saved.setdefault(
                       s["iteration"], {k: np.copy(v) for k, v in s.items()}),
                   checkpoint_every=4)
  state = {k: np.copy(v) for k, v in saved[8].items()}
  resumed, info2 = pcg(lambda v: a @ v, None, b, 1e-12, 100, state=state)
  np.testing.assert_array_equal(resumed, full)
  assert info2.resumed_from == 8 and info2.iterations == info.iterations
  np.testing.assert_allclose(a @ full, b, atol=1e-9)


_JOB = textwrap.dedent("""
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
    kill_block, kill_iter = int(sys.argv[2]), int(sys.argv[3])
    blocks = []
    def on_block(i, j):
      blocks.append((i, j))
      if len(blocks) == kill_block:
        os.kill(os.getpid(), signal.SIGKILL)
    def on_iter(it, res):
      if it == kill_iter:
        os.kill(os.getpid(), signal.SIGKILL)
    solver = BlockCG(store=sys.argv[1], block_size=16, dtype="float64",
                     preconditioner=None, tol=1e-10, maxiter=500,
                     checkpoint_every=5,
                     block_callback=on_block, iteration_callback=on_iter)
    mean = nt.predict.gp_inference(kf, x, y, xt, "nngp", 1e-2, solver=solver)
    cg = solver.info["cg"]["nngp"]
    print(json.dumps(dict(computed=solver.info["blocks"].computed,
                          skipped=solver.info["blocks"].skipped,
                          resumed_from=cg.resumed_from,
                          iterations=cg.iterations,
                          mean=np.asarray(mean, np.float64).tolist())))
""")


def _run_job(script, store, kill_block=0, kill_iter=0):
  return subprocess.run(
      [sys.executable, str(script), str(store), str(kill_block),
       str(kill_iter)], capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))


def _reference_job(store):
  """The job of `_JOB`, in this process and uninterrupted."""
  kf = stax.serial(stax.Dense(32, W_std=1.5, b_std=0.1), stax.Relu(),
                   stax.Dense(32, W_std=1.5, b_std=0.1), stax.Relu(),
                   stax.Dense(1))[2]
  rng = np.random.default_rng(0)
  x = rng.standard_normal((96, 5)).astype(np.float32)
  y = np.stack([np.sin(x[:, 0]), np.cos(x[:, 1])], 1).astype(np.float32)
  xt = rng.standard_normal((20, 5)).astype(np.float32)
  solver = BlockCG(store=str(store), block_size=16, dtype="float64",
                   preconditioner=None, tol=1e-10, maxiter=500,
                   checkpoint_every=5)
  mean = nt.predict.gp_inference(kf, x, y, xt, "nngp", 1e-2, solver=solver)
  return np.asarray(mean, np.float64), solver.info


def _done_blocks(store) -> int:
  import zarr
  return int(np.asarray(zarr.open_group(str(store), mode="r")["done"][...]
                        ).sum())


def test_sigkill_mid_kernel_and_mid_cg_resumes(tmp_path):
  import json
  script = tmp_path / "job.py"
  script.write_text(_JOB.format(root=str(ROOT)))
  ref_mean, ref_info = _reference_job(tmp_path / "ref")
  assert ref_info["blocks"].computed == 21  # 6 x 6 grid, i <= j
  assert ref_info["cg"]["nngp"].converged
  assert ref_info["cg"]["nngp"].iterations > 12
  store = tmp_path / "store"
  r = _run_job(script, store, kill_block=8)  # killed in the kernel phase
  assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
  assert _done_blocks(store) == 8  # every finished block kept
  r = _run_job(script, store, kill_iter=12)  # killed mid-CG
  assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
  out = json.loads(_run_job(script, store).stdout)
  # The last run computed no block and resumed CG from the checkpoint of
  # iteration 10, then followed the uninterrupted run's iterates exactly.
  assert out["computed"] == 0 and out["skipped"] == 21
  assert out["resumed_from"] == 10
  assert out["iterations"] == ref_info["cg"]["nngp"].iterations
  np.testing.assert_allclose(out["mean"], ref_mean, rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_kill_in_kernel_phase_recomputes_only_missing_blocks(tmp_path):
  import json
  script = tmp_path / "job.py"
  script.write_text(_JOB.format(root=str(ROOT)))
  store = tmp_path / "store"
  r = _run_job(script, store, kill_block=8)
  assert r.returncode == -signal.SIGKILL
  out = json.loads(_run_job(script, store).stdout)
  assert out["computed"] == 21 - 8 and out["skipped"] == 8
