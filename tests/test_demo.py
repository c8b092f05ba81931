"""The demo (small mode): NTK ensemble vs trained finite networks agree."""
import math

import pytest

pytest.importorskip("matplotlib")
from widenets.apps import demo  # noqa: E402


def test_demo_small_agrees_and_writes_the_figure(tmp_path, capsys):
  out = tmp_path / "demo.png"
  r = demo.run(times=(0, 10, 100), n_nets=30, width=256, n_test=40,
               out=str(out))
  assert out.stat().st_size > 20000
  printed = capsys.readouterr().out
  assert "mean gap" in printed and "width 256" in printed
  # 30 nets: Monte-Carlo noise alone is ~0.18 (mean) and ~0.13 (std) of the
  # spread per function-space mode, and the same nets serve every t, so the
  # gaps move together; width 256 adds a finite-width bias of about 0.1-0.2
  # to the mean. Measured (seed 0): mean 0.18-0.28, std 0.29-0.39.
  assert max(r.mean_gap) < 0.6, r.mean_gap
  assert max(r.std_gap) < 0.55, r.std_gap
  assert r.trained_times == [0.0, 10.0, 100.0]


def test_infinite_time_uses_a_converged_training_time():
  x, y, xt, _ = demo.make_data(5, 20)
  from widenets import predict
  fn = predict.gradient_descent_mse_ensemble(demo.seed_network()[2], x, y)
  mean, std = demo._moments(fn, xt, [math.inf])
  t = demo._converged_time(fn, xt, mean[0], std[0], 10.0, 0.25)
  m, s = demo._moments(fn, xt, [t])
  spread = (std[0] ** 2).mean() ** 0.5
  assert t >= 10.0 and abs(m[0] - mean[0]).max() < 0.05 * spread


def test_bad_times_are_rejected():
  with pytest.raises(ValueError, match="increasing"):
    demo.run(times=(100, 10), n_nets=2, width=8, out=None, verbose=False)
  assert demo.main(["--times", "ten", "--out", ""]) == 2


@pytest.mark.slow
def test_demo_full_size_agrees_within_monte_carlo_noise(tmp_path):
  r = demo.run(out=str(tmp_path / "demo.png"), verbose=False)
  # Measured (100 nets of width 512, seed 0): mean 0.15-0.19, std 0.04-0.09;
  # Monte-Carlo noise alone is ~0.10 and ~0.07.
  assert r.n_nets == 100 and r.width == 512
  assert max(r.mean_gap) < 0.35, r.mean_gap
  assert max(r.std_gap) < 0.2, r.std_gap
