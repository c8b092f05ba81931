"""Plots render to non-blank PNG files."""
import numpy as np
import pytest

pytest.importorskip("matplotlib")
from matplotlib.image import imread  # noqa: E402

from widenets import plot  # noqa: E402


def assert_png(path, min_bytes=5000):
  assert path.stat().st_size > min_bytes
  img = imread(str(path))
  assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
  rgb = img[..., :3].reshape(-1, 3)
  # not blank: many distinct colours and a real share of non-white pixels
  assert len(np.unique(np.round(rgb, 2), axis=0)) > 20
  assert np.mean(rgb.min(axis=1) < 0.9) > 0.02


def test_posterior_panels(tmp_path):
  x = np.linspace(-3, 3, 50)
  mean = np.stack([np.sin(x) * s for s in (0.5, 1.0)])
  std = np.stack([0.3 + 0.1 * np.abs(x), 0.1 + 0.05 * np.abs(x)])
  fig = plot.posterior(x, mean, std, times=[10, np.inf],
                       x_train=x[::10], y_train=np.sin(x[::10]),
                       target=np.sin(x), finite_mean=mean + 0.02,
                       finite_std=std * 1.1)
  assert len(fig.axes) == 2 and fig.axes[1].get_title() == "t = inf"
  plot.save(fig, tmp_path / "posterior.png")
  assert_png(tmp_path / "posterior.png")
  with pytest.raises(ValueError, match="times"):
    plot.posterior(x, mean, std, times=[1])


def test_loss_curves_from_predict(tmp_path):
  from widenets import predict, stax
  _, _, kernel_fn = stax.serial(stax.Dense(8, W_std=1.5, b_std=0.05),
                                stax.Erf(), stax.Dense(1, W_std=1.5))
  x = np.linspace(-2, 2, 6, dtype=np.float32)[:, None]
  xt = np.linspace(-2.5, 2.5, 9, dtype=np.float32)[:, None]
  fn = predict.gradient_descent_mse_ensemble(kernel_fn, x, np.sin(x))
  times = np.logspace(-1, 3, 12)
  losses = plot.ensemble_losses(fn, times, np.sin(x), xt, np.sin(xt))
  assert losses["train"].shape == losses["test"].shape == (12,)
  assert losses["train"][-1] < 0.1 * losses["train"][0]  # training fits
  plot.save(plot.loss_curves(times, losses), tmp_path / "loss.png")
  assert_png(tmp_path / "loss.png")


def test_kernel_heatmap(tmp_path):
  rng = np.random.default_rng(0)
  a = rng.standard_normal((30, 5))
  plot.save(plot.kernel_heatmap(a @ a.T, title="K"), tmp_path / "k.png")
  assert_png(tmp_path / "k.png")
  with pytest.raises(ValueError, match="matrix"):
    plot.kernel_heatmap(np.ones(3))
