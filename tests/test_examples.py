"""Every example runs with --small (as in CI)."""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
# The examples import this checkout's widenets, not an installed one.
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
    [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))


def run_example(name):
  r = subprocess.run([sys.executable, str(EXAMPLES / name), "--small"],
                     capture_output=True, text=True, env=ENV, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  return r.stdout


def test_digits_fcn():
  out = run_example("digits_fcn.py")
  acc = float(out.split("NTK kernel regression, test accuracy ")[1]
              .split("%")[0])
  assert acc > 85.0, out


def test_myrtle5():
  out = run_example("myrtle5.py")
  assert "test accuracy" in out or out.startswith("skipped:"), out


def test_flax_cnn_ntk():
  out = run_example("flax_cnn_ntk.py")
  if out.startswith("skipped:"):
    pytest.skip(out.strip())
  errs = [float(l.rsplit(" ", 1)[1]) for l in out.splitlines()
          if l.startswith("width")]
  assert len(errs) >= 2 and errs[-1] < errs[0] and errs[-1] < 0.1, out


def test_tabular_uncertainty():
  out = run_example("tabular_uncertainty.py")
  rmse = float(out.split("test RMSE ")[1].split()[0])
  inside = float(out.split("interval: ")[1].split("%")[0])
  assert rmse < 0.9 and inside >= 75.0, out
