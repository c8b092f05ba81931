"""Batched kernels and the `widenets` command: errors that name the cause."""
from __future__ import annotations

import numpy as np
import pytest

import widenets as nt
from widenets import stax
from widenets.apps import cli
from widenets import KernelOverflowError

_, _, KF = stax.serial(stax.Dense(64, W_std=1.5), stax.Relu(), stax.Dense(1))
X = np.random.RandomState(0).randn(10, 3).astype(np.float32)


def run(capsys, *argv):
  code = cli.main(list(argv))
  err = capsys.readouterr().err
  return code, err


# -- item 4: the same input and overflow checks as the direct call -------------
@pytest.mark.parametrize("x2", [None, "x2"])
@pytest.mark.parametrize("store", [False, True])
def test_batch_rejects_nan_inputs_naming_input_and_rows(tmp_path, x2, store):
  bad = X.copy()
  bad[6, 1] = np.nan
  with pytest.raises(ValueError, match=r"x1 .*rows 4:8.*NaN"):
    KF_b = nt.batch(KF, 4, store=tmp_path / "k" if store else None)
    KF_b(bad, None if x2 is None else X, "ntk")
  if x2:
    with pytest.raises(ValueError, match=r"x2 .*rows 4:8.*NaN"):
      nt.batch(KF, 4)(X, bad, "ntk")


def test_batch_honours_mask_constant():
  masked = X[:, :, None].copy()
  masked[3, 1] = np.nan
  net = stax.serial(stax.Dense(8), stax.Relu(), stax.GlobalAvgPool(),
                    stax.Dense(1))[2]
  direct = net(masked, None, "nngp", mask_constant=np.nan)
  batched = nt.batch(net, 4)(masked, None, "nngp", mask_constant=np.nan)
  np.testing.assert_allclose(np.asarray(batched), np.asarray(direct),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("store", [False, True])
def test_batch_raises_on_overflow_like_the_direct_call(tmp_path, store):
  huge = X * np.float32(1e30)
  with pytest.raises(KernelOverflowError):
    KF(huge, None, "ntk")
  bf = nt.batch(KF, 4, store=tmp_path / "k" if store else None)
  with pytest.raises(KernelOverflowError, match=r"rows 0:4"):
    bf(huge, None, "ntk")


def test_batch_raises_when_a_custom_kernel_fn_returns_nan():
  def kernel_fn(x1, x2, get):
    k = KF(x1, x2, get)
    return k.at[0, 0].set(np.nan) if x1.shape[0] == 4 else k
  with pytest.raises(FloatingPointError, match="rows 0:4"):
    nt.batch(kernel_fn, 4)(X, X, "ntk")


# -- item 10: zero samples, empty CSVs, bad shapes -----------------------------
def test_batch_of_zero_samples_is_a_clear_error():
  with pytest.raises(ValueError, match=r"x1 has 0 samples"):
    nt.batch(KF, 4)(X[:0], None, "ntk")
  with pytest.raises(ValueError, match=r"x2 has 0 samples"):
    nt.batch(KF, 4)(X, X[:0], "ntk")


@pytest.mark.parametrize("text", ["", "a,b,c\n"], ids=["empty", "header"])
def test_kernel_of_empty_csv_names_the_file(tmp_path, capsys, text):
  f = tmp_path / "x.csv"
  f.write_text(text)
  code, err = run(capsys, "kernel", "Dense(1)", str(f), "--out",
                  str(tmp_path / "k.npz"))
  assert code == 2
  assert str(f) in err and "no samples" in err
  assert "ZeroDivision" not in err


@pytest.mark.parametrize("shape", ["-2,-2", "0,3", "3,0"])
def test_kernel_negative_or_zero_shape_names_the_argument(tmp_path, capsys,
                                                          shape):
  np.save(tmp_path / "x.npy", np.ones((3, 4), np.float32))
  code, err = run(capsys, "kernel", "Dense(1)", str(tmp_path / "x.npy"),
                  f"--shape={shape}", "--out", str(tmp_path / "k.npz"))
  assert code == 2
  assert "--shape" in err and shape in err and "positive" in err


def test_kernel_of_nan_data_fails(tmp_path, capsys):
  x = np.ones((5, 4), np.float32)
  x[2, 1] = np.nan
  np.save(tmp_path / "x.npy", x)
  code, err = run(capsys, "kernel", "Dense(1)", str(tmp_path / "x.npy"),
                  "--out", str(tmp_path / "k.npz"))
  assert code == 2 and "NaN" in err
  assert not (tmp_path / "k.npz").exists()


def test_kernel_store_path_must_be_new_or_ours(tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "mine.txt").write_text("keep")
  np.save(tmp_path / "x.npy", np.ones((3, 4), np.float32))
  code, err = run(capsys, "kernel", "Dense(1)", "x.npy", "--out", ".")
  assert code == 2 and "not a widenets" in err
  assert (tmp_path / "mine.txt").read_text() == "keep"


def test_help_says_py_architectures_run_python(capsys):
  for sub in ("kernel", "evaluate"):
    with pytest.raises(SystemExit):
      cli.main([sub, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "runs it as Python" in out, sub


@pytest.mark.parametrize("out", ["", "k.txt"])
def test_kernel_bad_out_fails_before_computing(tmp_path, capsys, out):
  np.save(tmp_path / "x.npy", np.ones((3, 4), np.float32))
  code, err = run(capsys, "kernel", "Dense(1)", str(tmp_path / "x.npy"),
                  "--out", out, "--no-progress")
  assert code == 2 and "--out must end in" in err
