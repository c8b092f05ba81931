"""The `widenets` command end to end, in subprocesses."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

# The subprocess imports this checkout's widenets, not an installed one.
ROOT = str(pathlib.Path(__file__).resolve().parents[1])
ENV = dict(os.environ, JAX_PLATFORMS="cpu", WIDENETS_TRACEBACK="",
           PYTHONPATH=os.pathsep.join(
               [ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))


def widenets(*args, cwd=None, timeout=300):
  return subprocess.run([sys.executable, "-m", "widenets.apps.cli", *args],
                        capture_output=True, text=True, cwd=cwd, env=ENV,
                        timeout=timeout)


def assert_one_line_error(r, *words):
  assert r.returncode == 2, (r.stdout, r.stderr)
  assert "Traceback" not in r.stderr
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, r.stderr
  assert lines[0].startswith("widenets ") and "error:" in lines[0]
  for w in words:
    assert w in lines[0], lines[0]


def test_help_for_the_command_and_every_subcommand(capsys):
  r = widenets("--help")
  assert r.returncode == 0
  for sub in ("demo", "kernel", "evaluate"):
    assert sub in r.stdout
  from widenets.apps import cli
  for sub, word in (("demo", "--nets"), ("kernel", "--out"),
                    ("evaluate", "--train")):
    with pytest.raises(SystemExit) as e:
      cli.main([sub, "--help"])
    assert e.value.code == 0
    assert word in capsys.readouterr().out


def test_console_script_is_installed():
  exe = os.path.join(os.path.dirname(sys.executable), "widenets")
  if not os.path.exists(exe):
    pytest.skip("console script not installed (pip install -e .)")
  r = subprocess.run([exe, "--version"], capture_output=True, text=True,
                     env=ENV, timeout=120)
  assert r.returncode == 0 and r.stdout.startswith("widenets ")


def test_kernel_npy_csv_npz_and_resumable_zarr(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((7, 16)).astype(np.float32)
  np.save(tmp_path / "x.npy", x)
  np.savetxt(tmp_path / "x.csv", x, delimiter=",",
             header=",".join(f"f{i}" for i in range(16)), comments="")
  np.savez(tmp_path / "x2.npz", x=x[:3])
  arch = "Conv(8,(3,3),SAME) Relu GlobalAvgPool Dense(1)"

  r = widenets("kernel", arch, "x.csv", "--shape", "4,4,1", "--out",
               "k.npz", "--batch-size", "3", cwd=tmp_path)
  assert r.returncode == 0, r.stderr
  k = np.load(tmp_path / "k.npz")
  assert k["nngp"].shape == k["ntk"].shape == (7, 7)
  np.testing.assert_allclose(k["ntk"], k["ntk"].T, rtol=1e-5, atol=1e-6)

  r = widenets("kernel", arch, "x.npy", "--x2", "x2.npz", "--shape", "4,4,1",
               "--get", "ntk", "--out", "k.npy", cwd=tmp_path)
  assert r.returncode == 0, r.stderr
  np.testing.assert_allclose(np.load(tmp_path / "k.npy"), k["ntk"][:, :3],
                             rtol=1e-4, atol=1e-5)

  for _ in range(2):  # the second run finds every block done
    r = widenets("kernel", "Dense(32) Relu Dense(1)", "x.npy", "--out",
                 "k.zarr", "--batch-size", "3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "k.zarr").is_dir()
    assert "blocks:" in r.stdout
  # x2=None needs the 6 blocks i <= j of 3 x 3; all were stored by run one
  assert "0 computed, 6 already in the store" in r.stdout, r.stdout


def test_kernel_from_a_python_file(tmp_path):
  (tmp_path / "net.py").write_text(
      "from widenets import stax\n"
      "network = stax.serial(stax.Dense(16), stax.Relu(), stax.Dense(1))\n")
  np.save(tmp_path / "x.npy", np.eye(3, 5, dtype=np.float32))
  r = widenets("kernel", "net.py", "x.npy", "--get", "nngp", "--out", "k.npy",
               cwd=tmp_path)
  assert r.returncode == 0, r.stderr
  assert np.load(tmp_path / "k.npy").shape == (3, 3)


def test_bad_input_gives_one_clear_line(tmp_path):
  np.save(tmp_path / "x.npy", np.ones((5, 4), np.float32))
  np.save(tmp_path / "y.npy", np.arange(4))
  assert_one_line_error(widenets("kernel", "Dense(8) Frob Dense(1)", "x.npy",
                                 cwd=tmp_path), "unknown layer 'Frob'")
  assert_one_line_error(widenets("kernel", "Dense(8)", "missing.npy",
                                 cwd=tmp_path), "missing.npy", "not found")
  assert_one_line_error(widenets("evaluate", "--x", "x.npy", "--y", "y.npy",
                                 cwd=tmp_path), "5 samples", "4 labels")
  assert_one_line_error(widenets("kernel", "Relu Dense(1)", "x.npy",
                                 cwd=tmp_path))  # activation on raw inputs


def test_demo_subcommand_rejects_bad_options_in_one_line(capsys):
  from widenets.apps import cli
  assert cli.main(["demo", "--times", "ten", "--out", ""]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "--times" in err[0] and "Traceback" not in err[0]
  assert cli.main(["demo", "--nets", "1", "--out", ""]) == 2
  assert "--nets" in capsys.readouterr().err


def test_evaluate_small_writes_a_markdown_table(tmp_path):
  r = widenets("evaluate", "--train", "40", "--test", "30", "--only", "FC",
               "--times", "100,inf", "--out", "res.md", cwd=tmp_path)
  assert r.returncode == 0, r.stderr
  table = (tmp_path / "res.md").read_text()
  assert "| FC | NNGP |" in table and "| FC | NTK |" in table
  assert "t=inf" in table and "t=100" in table
  acc = float(table.split("| FC | NTK |")[1].split("|")[1])  # t=inf
  assert acc > 50.0  # far above chance (10%) even with 40 train images
