"""Disk stores cannot mix, rot or delete what is not theirs (issue 18)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import widenets as nt
from widenets import stax
from widenets.batching import (StoreCorruptionError, StoreMismatchError,
                               batch, open_store)

zarr = pytest.importorskip("zarr")

_, _, KF = stax.serial(stax.Dense(64, W_std=1.5, b_std=0.05), stax.Relu(),
                       stax.Dense(1))
X = np.random.RandomState(0).randn(10, 3).astype(np.float32)
ALL = [(i, j) for i in range(3) for j in range(i, 3)]  # batch 4: 3 x 3 grid


def make(path, kernel_fn=KF, **kw):
  return batch(kernel_fn, 4, store=path, **kw)(X, None, "ntk")


def tree_files(root):
  out = {}
  for d, _, files in os.walk(root):
    for f in files:
      p = os.path.join(d, f)
      with open(p, "rb") as fh:
        out[os.path.relpath(p, root)] = fh.read()
  return out


# -- item 1: explicit paths, nothing foreign touched ---------------------------
@pytest.mark.parametrize("bad", ["", "  "])
def test_empty_store_path_is_an_error_and_cwd_untouched(tmp_path, monkeypatch,
                                                         bad):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "leaf_0").mkdir()
  (tmp_path / "leaf_0" / "mine.txt").write_text("keep me")
  with pytest.raises(ValueError, match="store"):
    batch(KF, 4, store=bad)
  assert (tmp_path / "leaf_0" / "mine.txt").read_text() == "keep me"
  assert sorted(os.listdir(tmp_path)) == ["leaf_0"]


def test_non_store_directory_is_never_touched(tmp_path):
  d = tmp_path / "d"
  (d / "leaf_0").mkdir(parents=True)
  (d / "leaf_0" / "mine.txt").write_text("keep me")
  before = tree_files(d)
  with pytest.raises(ValueError, match="not a widenets"):
    make(d)
  assert tree_files(d) == before


def test_foreign_zarr_store_is_never_touched(tmp_path):
  d = tmp_path / "z"
  g = zarr.open_group(str(d), mode="w")
  g.create_array("leaf_0", shape=(3,), dtype="f4")[...] = [1, 2, 3]
  before = tree_files(d)
  with pytest.raises(ValueError, match="not a widenets"):
    make(d)
  assert tree_files(d) == before


def test_store_without_its_metadata_but_ours_is_recreated(tmp_path):
  path = tmp_path / "k"
  make(path)
  os.remove(path / "zarr.json")  # as if killed while creating it
  np.testing.assert_allclose(make(path), KF(X, None, "ntk"), rtol=1e-5,
                             atol=1e-6)


# -- item 2: another computation is refused ------------------------------------
def _elementwise(fn):
  return stax.serial(stax.Dense(8), stax.ElementwiseNumerical(fn, deg=8),
                     stax.Dense(1))[2]


def _scaled(c):
  def kernel_fn(x1, x2, get):
    return c * KF(x1, x2, get)
  return kernel_fn


def _empirical(scale):
  def f(params, x):
    return scale * jax.numpy.tanh(x @ params)
  return nt.empirical_ntk_fn(f)


PARAMS = np.random.RandomState(1).randn(3, 4).astype(np.float32)

OTHERS = {
    "elementwise lambdas": (lambda: _elementwise(lambda x: jax.numpy.sin(x)),
                            lambda: _elementwise(lambda x: jax.numpy.cos(x)),
                            ("ntk",)),
    "closure over a number": (lambda: _scaled(1.0), lambda: _scaled(2.0),
                              ("ntk",)),
    "empirical of another f": (lambda: _empirical(1.0),
                               lambda: _empirical(3.0), (PARAMS,)),
}


@pytest.mark.parametrize("name", list(OTHERS))
def test_other_computation_is_refused(tmp_path, name):
  first, second, args = OTHERS[name]
  path = tmp_path / "k"
  ref = batch(first(), 4, store=path)(X, None, *args)
  bf = batch(first(), 4, store=path)  # the same computation resumes
  np.testing.assert_allclose(np.asarray(bf(X, None, *args)),
                             np.asarray(ref), rtol=1e-5, atol=1e-6)
  assert bf.last_run.computed == 0
  with pytest.raises(StoreMismatchError, match="different computation"):
    batch(second(), 4, store=path)(X, None, *args)


def test_store_key_must_match(tmp_path):
  path = tmp_path / "k"
  make(path, store_key="run-1")
  make(path, store_key="run-1")
  with pytest.raises(StoreMismatchError, match="store_key"):
    make(path, store_key="run-2")
  with pytest.raises(ValueError, match="store_key"):
    batch(KF, 4, store=path, store_key=3)


# -- item 3: corruption is detected --------------------------------------------
def chunk(path, i, j):
  return os.path.join(path, "leaf_0", "c", str(i), str(j))


def corrupt(path, how):
  target = chunk(path, 0, 1)
  if how == "delete":
    os.remove(target)
  elif how == "truncate":
    with open(target, "r+b") as f:
      f.truncate(max(1, os.path.getsize(target) // 2))
  elif how == "bitflip":
    with open(target, "r+b") as f:
      data = bytearray(f.read())
      data[len(data) // 2] ^= 0x10
      f.seek(0)
      f.write(data)
  elif how == "swap":
    shutil.copyfile(chunk(path, 0, 2), target)
  elif how == "garbage":
    with open(target, "wb") as f:
      f.write(os.urandom(64))
  return target


@pytest.mark.parametrize("how", ["delete", "truncate", "bitflip", "swap",
                                 "garbage"])
def test_corrupted_chunk_detected_on_read_and_recomputed_on_resume(tmp_path,
                                                                   how):
  path = tmp_path / "k"
  ref = np.asarray(make(path))
  target = corrupt(path, how)
  with pytest.raises(StoreCorruptionError) as e:
    open_store(path)
  assert "block (0, 1)" in str(e.value) and target in str(e.value)
  bf = batch(KF, 4, store=path)
  np.testing.assert_allclose(np.asarray(bf(X, None, "ntk")), ref, rtol=1e-5,
                             atol=1e-6)
  assert bf.last_run.computed_blocks == [(0, 1)]
  np.testing.assert_allclose(np.asarray(open_store(path)), ref, rtol=1e-5,
                             atol=1e-6)


def test_corrupted_mirror_chunk_is_recomputed(tmp_path):
  path = tmp_path / "k"
  ref = np.asarray(make(path))
  os.remove(chunk(path, 2, 0))  # the mirror of block (0, 2)
  with pytest.raises(StoreCorruptionError, match=r"block \(2, 0\)"):
    open_store(path)
  bf = batch(KF, 4, store=path)
  np.testing.assert_allclose(np.asarray(bf(X, None, "ntk")), ref, rtol=1e-5,
                             atol=1e-6)
  assert bf.last_run.computed_blocks == [(0, 2)]


def test_lazy_read_detects_corruption(tmp_path):
  pytest.importorskip("dask")
  path = tmp_path / "k"
  make(path)
  corrupt(path, "swap")
  k = open_store(path, lazy=True)
  with pytest.raises(StoreCorruptionError, match=r"block \(0, 1\)"):
    k.compute()


def test_unparseable_zarr_json_names_the_file(tmp_path):
  path = tmp_path / "k"
  make(path)
  for name in ("zarr.json", os.path.join("leaf_0", "zarr.json")):
    shutil.copytree(path, tmp_path / "c", dirs_exist_ok=False)
    with open(tmp_path / "c" / name, "w") as f:
      f.write("{not json")
    with pytest.raises(StoreCorruptionError, match="zarr.json"):
      open_store(tmp_path / "c")
    with pytest.raises(StoreCorruptionError, match="zarr.json"):
      make(tmp_path / "c")
    shutil.rmtree(tmp_path / "c")


# -- item 11: read-only stores and several processes ---------------------------
def test_complete_store_resumes_without_writing(tmp_path):
  path = tmp_path / "k"
  ref = np.asarray(make(path))
  before = tree_files(path)
  stamps = {p: os.stat(os.path.join(path, p)).st_mtime_ns for p in before}
  bf = batch(KF, 4, store=path)
  np.testing.assert_allclose(np.asarray(bf(X, None, "ntk")), ref, rtol=1e-5,
                             atol=1e-6)
  assert bf.last_run.computed == 0
  assert tree_files(path) == before
  assert {p: os.stat(os.path.join(path, p)).st_mtime_ns
          for p in before} == stamps


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file modes")
def test_read_only_complete_store_resumes(tmp_path):
  path = tmp_path / "k"
  ref = np.asarray(make(path))
  for d, dirs, files in os.walk(path):
    for f in files + dirs:
      os.chmod(os.path.join(d, f), 0o555 if f in dirs else 0o444)
  os.chmod(path, 0o555)
  try:
    np.testing.assert_allclose(np.asarray(make(path)), ref, rtol=1e-5,
                               atol=1e-6)
  finally:
    for d, dirs, _ in os.walk(path):
      os.chmod(d, 0o755)


_RESUME = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from widenets import stax
    from widenets.batching import batch
    _, _, kf = stax.serial(stax.Dense(64, W_std=1.5, b_std=0.05), stax.Relu(),
                           stax.Dense(1))
    x = np.random.RandomState(0).randn(15, 3).astype(np.float32)
    bf = batch(kf, 3, store=sys.argv[1],
               progress=lambda done, total: time.sleep(0.3))
    bf(x, None, "ntk")
    print(json.dumps(bf.last_run.computed_blocks))
    """)


def test_two_processes_resuming_compute_each_block_once(tmp_path):
  path = str(tmp_path / "k")
  x = np.random.RandomState(0).randn(15, 3).astype(np.float32)

  def stop_after_two(done, total):
    if done >= 2:
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    batch(KF, 3, store=path, progress=stop_after_two)(x, None, "ntk")
  flags = np.asarray(zarr.open_group(path, mode="r")["blocks"][..., 0]) != 0
  finished = {(i, j) for i in range(5) for j in range(i, 5) if flags[i, j]}
  assert len(finished) == 2
  script = tmp_path / "job.py"
  script.write_text(_RESUME)
  root = os.path.dirname(os.path.dirname(nt.__file__))  # this checkout
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH",
                                                              "")]))
  procs = [subprocess.Popen([sys.executable, str(script), path],
                            stdout=subprocess.PIPE, text=True, env=env)
           for _ in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs)
  computed = [[tuple(b) for b in json.loads(o.strip().splitlines()[-1])]
              for o in outs]
  together = computed[0] + computed[1]
  assert len(together) == len(set(together))  # no block computed twice
  assert set(together) | finished == {(i, j) for i in range(5)
                                      for j in range(i, 5)}
  assert not set(together) & finished
  np.testing.assert_allclose(np.asarray(open_store(path)),
                             np.asarray(KF(x, None, "ntk")), rtol=1e-5,
                             atol=1e-6)


def test_claims_of_dead_processes_are_taken_over(tmp_path):
  path = tmp_path / "k"

  def stop(done, total):
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    make(path, progress=stop)
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True).stdout.strip()
  claims = path / "claims"
  claims.mkdir(exist_ok=True)
  for i, j in ALL:
    (claims / f"{i}_{j}").write_text(json.dumps(
        {"pid": int(dead), "host": os.uname().nodename}))
  bf = batch(KF, 4, store=path)
  np.testing.assert_allclose(np.asarray(bf(X, None, "ntk")),
                             np.asarray(KF(X, None, "ntk")), rtol=1e-5,
                             atol=1e-6)
  assert len(bf.last_run.computed_blocks) == len(ALL) - 1
