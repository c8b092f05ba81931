"""Figures for wide-network predictions (matplotlib, imported lazily).

Three pictures cover most uses:

* `posterior`: the ensemble's mean +- 2 sigma over 1-D inputs at several
  training times (optionally beside a finite-network ensemble and the data);
* `loss_curves`: train / test loss against training time, e.g. from
  `ensemble_losses` on a ``predict.gradient_descent_mse_ensemble`` predictor;
* `kernel_heatmap`: an NNGP / NTK matrix;
* `evidence_landscape`: the log marginal likelihood over a ``(W_std,
  b_std)`` grid with an optimizer's path, and test error beside it (see
  `widenets.hyperparameters.evidence_grid`).

Every function draws into ``ax`` when given one and otherwise makes a new
`matplotlib.figure.Figure` (no pyplot, so no global state and no display is
needed: figures render with the Agg canvas). `save` writes a figure to a file.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np

__all__ = ["posterior", "loss_curves", "ensemble_losses", "kernel_heatmap",
           "evidence_landscape", "new_figure", "save"]


def _mpl():
  try:
    import matplotlib
  except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError("widenets.plot needs matplotlib: pip install "
                      "'widenets[plot]'") from e
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  return matplotlib, Figure, FigureCanvasAgg


def new_figure(n_axes: int = 1, ncols: Optional[int] = None,
               size: tuple[float, float] = (4.0, 3.2)):
  """A Figure with ``n_axes`` subplots on a grid; returns ``(fig, axes)``."""
  _, Figure, FigureCanvasAgg = _mpl()
  ncols = ncols or min(n_axes, 4)
  nrows = math.ceil(n_axes / ncols)
  fig = Figure(figsize=(size[0] * ncols, size[1] * nrows),
               layout="constrained")
  FigureCanvasAgg(fig)
  axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(n_axes)]
  return fig, axes


def save(fig, path, dpi: int = 110) -> str:
  """Writes ``fig`` to ``path`` (format from the suffix); returns the path."""
  fig.savefig(str(path), dpi=dpi)
  return str(path)


def _time_label(t) -> str:
  if t is None or (isinstance(t, float) and math.isinf(t)):
    return "t = inf"
  return f"t = {t:g}"


def posterior(x_test, mean, std, *, times: Optional[Sequence[Any]] = None,
              x_train=None, y_train=None, target=None,
              finite_mean=None, finite_std=None,
              finite_label: str = "finite nets",
              label: str = "NTK ensemble", axes=None):
  """Mean +- 2 sigma of a prediction over 1-D inputs, one panel per time.

  Args:
    x_test: ``(M,)`` or ``(M, 1)`` test inputs (sorted for clean lines).
    mean, std: ``(T, M)`` (or ``(M,)`` for one time) predictive mean and
      standard deviation, e.g. from ``predict.gradient_descent_mse_ensemble``
      with ``compute_cov=True`` (``std = sqrt(diag(cov))``).
    times: ``T`` labels (numbers, ``None``/``inf`` for infinite time).
    x_train, y_train: training points to scatter.
    target: ``(M,)`` true function on ``x_test`` (dashed line).
    finite_mean, finite_std: ``(T, M)`` the same moments of an ensemble of
      finite networks, drawn as error bars for comparison.
    axes: a sequence of ``T`` matplotlib axes; new figure if None.

  Returns:
    The figure.
  """
  x = np.asarray(x_test).reshape(-1)
  mean = np.atleast_2d(np.asarray(mean).reshape(-1, x.size))
  std = np.atleast_2d(np.asarray(std).reshape(-1, x.size))
  n = mean.shape[0]
  times = list(times) if times is not None else [None] * n
  if len(times) != n:
    raise ValueError(f"posterior: got {len(times)} times for {n} rows of "
                     f"`mean` (shape {mean.shape}).")
  if axes is None:
    fig, axes = new_figure(n)
  else:
    fig = axes[0].figure
  order = np.argsort(x)
  xs = x[order]
  for i, ax in enumerate(axes[:n]):
    m, s = mean[i][order], std[i][order]
    ax.fill_between(xs, m - 2 * s, m + 2 * s, color="C0", alpha=0.25,
                    label=f"{label} mean +- 2 sigma")
    ax.plot(xs, m, color="C0", lw=1.5)
    if target is not None:
      ax.plot(xs, np.asarray(target).reshape(-1)[order], "k--", lw=1,
              label="target")
    if finite_mean is not None:
      fm = np.asarray(finite_mean).reshape(n, -1)[i][order]
      fs = (np.zeros_like(fm) if finite_std is None else
            np.asarray(finite_std).reshape(n, -1)[i][order])
      step = max(1, xs.size // 25)  # keep error bars readable
      ax.errorbar(xs[::step], fm[::step], yerr=2 * fs[::step], fmt="o",
                  ms=2.5, color="C3", elinewidth=0.8, capsize=1.5,
                  label=f"{finite_label} mean +- 2 sigma")
    if x_train is not None and y_train is not None:
      ax.scatter(np.asarray(x_train).reshape(-1),
                 np.asarray(y_train).reshape(-1), c="k", s=18, zorder=5,
                 label="train")
    ax.set_title(_time_label(times[i]))
    ax.set_xlabel("x")
  axes[0].legend(fontsize=7, loc="lower left")
  return fig


def ensemble_losses(predict_fn, times, y_train, x_test=None, y_test=None,
                    get: str = "ntk") -> dict:
  """Expected MSE of an ensemble predictor against time.

  ``predict_fn`` is ``predict.gradient_descent_mse_ensemble(...)``. For a
  Gaussian output ``f ~ N(mu, Sigma)`` the expected loss is
  ``mean((mu - y)**2) + mean(diag Sigma)``.

  Returns:
    ``{'train': (T,), 'test': (T,)}`` (``'test'`` only with ``x_test``).
  """
  times = np.asarray(times, dtype=float)

  def loss(x, y):
    mean, cov = predict_fn(t=times, x_test=x, get=get, compute_cov=True)
    mean, cov, y = np.asarray(mean), np.asarray(cov), np.asarray(y)
    err = ((mean - y[None]) ** 2).reshape(len(times), -1).mean(-1)
    var = np.diagonal(cov, axis1=1, axis2=2).reshape(len(times), -1).mean(-1)
    return err + var

  out = {"train": loss(None, y_train)}
  if x_test is not None:
    out["test"] = loss(x_test, y_test)
  return out


def loss_curves(times, losses: Mapping[str, Any], *, ax=None,
                title: str = "expected MSE loss", logx: bool = True):
  """Loss against training time, one line per entry of ``losses``.

  Args:
    times: ``(T,)`` positive times.
    losses: ``{name: (T,) values}``, e.g. `ensemble_losses`' output.
  """
  if ax is None:
    fig, (ax,) = new_figure(1, size=(5.0, 3.5))
  else:
    fig = ax.figure
  times = np.asarray(times, dtype=float)
  for name, vals in losses.items():
    ax.plot(times, np.asarray(vals).reshape(-1), label=name, lw=1.5)
  if logx:
    ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("training time t")
  ax.set_title(title)
  ax.legend(fontsize=8)
  return fig


def kernel_heatmap(k, *, ax=None, title: str = "kernel", cmap: str = "viridis"):
  """A kernel matrix as an image (``(N1, N2)``; extra axes are averaged)."""
  k = np.asarray(k, dtype=float)
  if k.ndim < 2:
    raise ValueError(f"kernel_heatmap: need a matrix of shape (N1, N2, ...); "
                     f"got shape {k.shape}.")
  while k.ndim > 2:
    k = k.mean(-1)
  if ax is None:
    fig, (ax,) = new_figure(1, size=(4.2, 3.6))
  else:
    fig = ax.figure
  im = ax.imshow(k, cmap=cmap, interpolation="nearest")
  fig.colorbar(im, ax=ax, shrink=0.85)
  ax.set_title(title)
  ax.set_xlabel("x2 index")
  ax.set_ylabel("x1 index")
  return fig


def evidence_landscape(w_values, b_values, evidence, *, path=None,
                       test_error=None, axes=None, levels: int = 24):
  """Evidence over a ``(W_std, b_std)`` grid, with a path and test error.

  Args:
    w_values: ``(n_w,)`` W_std values; b_values: ``(n_b,)`` b_std values.
    evidence: ``(n_w, n_b)`` log marginal likelihood on the grid.
    path: optional ``(W_std path, b_std path)`` of an optimizer (e.g.
      ``FitResult.path['W_std'], FitResult.path['b_std']``).
    test_error: optional ``(n_w, n_b)`` test error, drawn in a second panel.
    axes: one or two axes to draw into.

  Returns:
    The figure (log-scaled axes, as the fit works in log space).
  """
  w, b = np.asarray(w_values, float), np.asarray(b_values, float)
  ev = np.asarray(evidence, float)
  if ev.shape != (w.size, b.size):
    raise ValueError(f"evidence_landscape: evidence must have shape "
                     f"(len(w_values), len(b_values)) = {(w.size, b.size)};"
                     f" got {ev.shape}.")
  panels = [("log marginal likelihood", ev, "viridis")]
  if test_error is not None:
    panels.append(("test error", np.asarray(test_error, float), "magma_r"))
  if axes is None:
    fig, axes = new_figure(len(panels), size=(4.4, 3.6))
  else:
    fig = axes[0].figure
  for ax, (title, z, cmap) in zip(axes, panels):
    finite = z[np.isfinite(z)]
    lo = np.percentile(finite, 25) if title.startswith("log") else None
    cs = ax.contourf(b, w, np.where(np.isfinite(z), z, np.nan), levels=levels,
                     cmap=cmap, vmin=lo)
    fig.colorbar(cs, ax=ax, shrink=0.85)
    if path is not None:
      pw, pb = (np.asarray(p, float) for p in path)
      ax.plot(pb, pw, "w.-", ms=3, lw=1, label="optimizer path")
      ax.plot(pb[-1:], pw[-1:], "r*", ms=10, label="fit")
      ax.legend(fontsize=7, loc="lower right")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("b_std")
    ax.set_ylabel("W_std")
    ax.set_title(title)
  return fig
