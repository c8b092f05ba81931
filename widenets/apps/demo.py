"""The seed example end to end: infinite-width NTK ensemble vs trained nets.

The network of the README's five lines (three `Dense` layers with `Erf`) on a
1-D regression: a sine through a few noisy points. For each training time
``t`` it compares

* the infinite ensemble of infinitely wide networks trained by gradient flow
  on MSE, in closed form: ``predict.gradient_descent_mse_ensemble`` with
  ``get='ntk', compute_cov=True`` (a Gaussian over test outputs), with
* an ensemble of finite networks of the same architecture, each initialized
  independently and actually trained by full-batch gradient descent on
  ``L = mean((f(x_train) - y_train)**2) / 2`` with learning rate ``lr`` for
  ``t / lr`` steps (the time unit that ``predict`` uses).

The agreement at each ``t`` is reported relative to the ensemble's spread
``s = rms_x sigma_ntk(x)``: ``mean gap = rms_x(mean_nets - mean_ntk) / s`` and
``std gap = rms_x(std_nets - sigma_ntk) / s``. With ``n`` networks the
Monte-Carlo error alone is about ``1/sqrt(n)`` and ``1/sqrt(2n)``.

``t = inf`` is compared with networks trained until the infinite-width
prediction is within 0.01 spreads of its limit (the first such time at or
after the last finite ``t``; the exact limit needs infinitely many steps).

Run with ``python -m widenets.apps.demo`` (or ``widenets demo``, or
``make demo``).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .. import predict, stax

__all__ = ["seed_network", "make_data", "train_ensemble", "agreement",
           "run", "main", "DemoResult"]

# The README's network. Kernels do not depend on the width; finite networks
# are trained at ``width`` (2048 would take too long on a laptop CPU).
W_STD, B_STD = 1.5, 0.05
# For t = inf the finite networks are trained until the infinite-width
# prediction is within this many spreads of its limit.
_INF_TOL = 0.01


def seed_network(width: int = 2048):
  """``(init_fn, apply_fn, kernel_fn)`` of the README's network."""
  return stax.serial(
      stax.Dense(width, W_std=W_STD, b_std=B_STD), stax.Erf(),
      stax.Dense(width, W_std=W_STD, b_std=B_STD), stax.Erf(),
      stax.Dense(1, W_std=W_STD, b_std=B_STD))


def make_data(n_train: int = 5, n_test: int = 80, noise: float = 0.1,
              seed: int = 0):
  """A sine through ``n_train`` noisy points in ``[-pi, pi]``.

  Returns:
    ``x_train (n_train, 1)``, ``y_train (n_train, 1)``, ``x_test (n_test, 1)``
    on ``[-1.25 pi, 1.25 pi]``, ``y_test = sin(x_test)``; float32.
  """
  rng = np.random.default_rng(seed)
  x_train = np.linspace(-np.pi, np.pi, n_train)[:, None]
  y_train = np.sin(x_train) + noise * rng.standard_normal(x_train.shape)
  x_test = np.linspace(-1.25 * np.pi, 1.25 * np.pi, n_test)[:, None]
  return tuple(a.astype(np.float32) for a in
               (x_train, y_train, x_test, np.sin(x_test)))


def train_ensemble(init_fn, apply_fn, x_train, y_train, x_test,
                   steps: Sequence[int], n_nets: int, lr: float, key,
                   chunk: int = 4) -> np.ndarray:
  """Trains ``n_nets`` networks by full-batch gradient descent.

  Each network gets its own initialization and minimizes
  ``mean((f(x_train) - y_train)**2) / 2`` with step size ``lr``.

  Args:
    steps: increasing step counts at which to record test outputs.
    chunk: networks trained together (vmapped); small chunks keep the
      weights in cache, which is much faster on CPUs than one huge vmap.

  Returns:
    ``(len(steps), n_nets, n_test)`` test outputs.
  """
  x_train, y_train = jnp.asarray(x_train), jnp.asarray(y_train)
  x_test = jnp.asarray(x_test)

  def loss(params):
    return 0.5 * jnp.mean((apply_fn(params, x_train) - y_train) ** 2)

  grad = jax.vmap(jax.grad(loss))

  @jax.jit
  def advance(params, n):
    def body(_, p):
      return jax.tree_util.tree_map(lambda w, g: w - lr * g, p, grad(p))
    return jax.lax.fori_loop(0, n, body, params)

  predict_test = jax.jit(jax.vmap(lambda p: apply_fn(p, x_test)[:, 0]))
  init = jax.vmap(lambda k: init_fn(k, x_train.shape)[1])
  keys = jax.random.split(key, n_nets)
  out = np.zeros((len(steps), n_nets, x_test.shape[0]), np.float32)
  for start in range(0, n_nets, chunk):
    ks = keys[start:start + chunk]
    if ks.shape[0] < chunk:  # pad so every chunk reuses one compilation
      ks = jnp.concatenate([ks, keys[:chunk - ks.shape[0]]])
    params, done = init(ks), 0
    stop = min(start + chunk, n_nets) - start
    for i, s in enumerate(steps):
      params = advance(params, s - done)
      done = s
      out[i, start:start + chunk] = np.asarray(predict_test(params))[:stop]
  return out


def agreement(mean_ntk, std_ntk, outputs) -> tuple[float, float]:
  """``(mean gap, std gap)`` of finite outputs ``(n_nets, M)`` vs the NTK
  ensemble's ``(M,)`` mean and std, relative to ``rms(std_ntk)``."""
  spread = float(np.sqrt(np.mean(np.square(std_ntk))))
  mean_gap = np.sqrt(np.mean((outputs.mean(0) - mean_ntk) ** 2)) / spread
  std_gap = np.sqrt(np.mean((outputs.std(0, ddof=1) - std_ntk) ** 2)) / spread
  return float(mean_gap), float(std_gap)


@dataclasses.dataclass
class DemoResult:
  """What `run` measured.

  Attributes:
    times: the requested times (``inf`` allowed).
    trained_times: the time each finite ensemble was trained for.
    mean_gap, std_gap: agreement per time (see the module docstring).
    width, n_nets, lr: the finite networks' setup.
    seconds: wall time of the run.
    figure: the PNG path, or None.
  """
  times: list
  trained_times: list
  mean_gap: list
  std_gap: list
  width: int
  n_nets: int
  lr: float
  seconds: float
  figure: Optional[str]


def _moments(predict_fn, x_test, times):
  """NTK ensemble mean and std ``(T, M)`` on ``x_test`` at ``times``."""
  mean, cov = predict_fn(t=np.asarray(times, np.float32), x_test=x_test,
                         get="ntk", compute_cov=True)
  var = np.diagonal(np.asarray(cov, np.float64), axis1=1, axis2=2)
  # float32 round-off can leave tiny negative variances next to train points
  return np.asarray(mean)[..., 0], np.sqrt(np.maximum(var, 0.))


def _converged_time(predict_fn, x_test, mean_inf, std_inf, t_min, lr,
                    tol: float = _INF_TOL) -> float:
  """The first time ``>= t_min`` (a multiple of ``lr``) at which the NTK
  ensemble is within ``tol`` spreads of its ``t = inf`` limit: where the
  finite networks stand in for infinitely long training."""
  spread = np.sqrt(np.mean(std_inf**2))
  t = max(t_min, lr)
  for _ in range(60):
    t = lr * max(1, round(t / lr))
    m, s = _moments(predict_fn, x_test, [t])
    gap = max(np.sqrt(np.mean((m[0] - mean_inf) ** 2)),
              np.sqrt(np.mean((s[0] - std_inf) ** 2))) / spread
    if gap < tol:
      return t
    t *= 1.5
  raise ValueError("the NTK ensemble does not converge within the step "
                   "budget; pass finite --times.")


def _fmt_t(t) -> str:
  return "inf" if math.isinf(t) else f"{t:g}"


def run(times: Sequence[float] = (0, 10, 100, math.inf), n_nets: int = 100,
        width: int = 512, lr: float = 0.25, n_train: int = 5,
        n_test: int = 80, noise: float = 0.1, seed: int = 0,
        out: Optional[str] = "demo.png", verbose: bool = True) -> DemoResult:
  """Runs the comparison, prints a table, writes the figure to ``out``."""
  start = time.perf_counter()
  say = print if verbose else (lambda *a, **k: None)
  x_train, y_train, x_test, y_test = make_data(n_train, n_test, noise, seed)
  _, _, kernel_fn = seed_network()
  init_fn, apply_fn, _ = seed_network(width)

  # The NTK's largest eigenvalue sets a stable learning rate: gradient
  # descent multiplies each mode by (1 - lr lambda / n_train) per step.
  ntk = np.asarray(kernel_fn(x_train, None, "ntk"), np.float64)
  lam_max = float(np.linalg.eigvalsh(ntk)[-1]) / y_train.size
  if lr * lam_max > 1.8:
    lr = 1.5 / lam_max
    say(f"(learning rate lowered to {lr:.3g} for stability: "
        f"lambda_max / n = {lam_max:.3g})")
  times = [float(t) for t in times]
  if any(b <= a for a, b in zip(times, times[1:])) or min(times) < 0:
    raise ValueError(f"times must be >= 0 and increasing; got {times}.")
  predict_fn = predict.gradient_descent_mse_ensemble(kernel_fn, x_train,
                                                     y_train)
  mean, std = _moments(predict_fn, x_test, times)
  t_train = [_converged_time(predict_fn, x_test, mean[-1], std[-1],
                             max([0.] + times[:-1]), lr)
             if math.isinf(t) else t for t in times]
  steps = [int(round(t / lr)) for t in t_train]
  t_train = [s * lr for s in steps]
  t_exact = [t if math.isinf(t) else tt for t, tt in zip(times, t_train)]
  if t_exact != times:  # t not a multiple of lr: predict where nets stop
    mean, std = _moments(predict_fn, x_test, t_exact)

  say(f"Seed network: Dense(2048)-Erf-Dense(2048)-Erf-Dense(1), W_std={W_STD},"
      f" b_std={B_STD}; {n_train} noisy sine points, {n_test} test points.")
  say(f"Infinite-width NTK ensemble (predict.gradient_descent_mse_ensemble) "
      f"vs {n_nets} finite networks of width {width} (reduced from 2048 for "
      f"CPU time; the kernel does not depend on width), trained by "
      f"full-batch gradient descent, lr={lr:g}, up to {steps[-1]} steps.")
  t0 = time.perf_counter()
  outs = train_ensemble(init_fn, apply_fn, x_train, y_train, x_test, steps,
                        n_nets, lr, jax.random.PRNGKey(seed))
  say(f"(training took {time.perf_counter() - t0:.1f} s)")

  gaps = [agreement(mean[i], std[i], outs[i]) for i in range(len(times))]
  say("")
  say(f"{'t':>8} {'nets trained to t':>18} {'mean gap':>9} {'std gap':>8}"
      f" {'spread':>7}")
  for i, t in enumerate(times):
    spread = float(np.sqrt(np.mean(std[i] ** 2)))
    say(f"{_fmt_t(t):>8} {t_train[i]:>18.6g} {gaps[i][0]:>9.3f} "
        f"{gaps[i][1]:>8.3f} {spread:>7.3f}")
  say(f"(gaps are RMS over test points relative to the spread rms(sigma_ntk);"
      f" Monte-Carlo noise alone with {n_nets} nets is about "
      f"{1 / math.sqrt(n_nets):.2f} (mean) and "
      f"{1 / math.sqrt(2 * n_nets):.2f} (std))")

  fig_path = None
  if out:
    fig_path = _figure(out, times, x_train, y_train, x_test, y_test, mean,
                       std, outs, predict_fn, kernel_fn, t_train)
    say(f"figure written to {fig_path}")
  seconds = time.perf_counter() - start
  say(f"total time {seconds:.1f} s")
  return DemoResult(times, t_train, [g[0] for g in gaps],
                    [g[1] for g in gaps], width, n_nets, lr, seconds,
                    fig_path)


def _figure(out, times, x_train, y_train, x_test, y_test, mean, std, outs,
            predict_fn, kernel_fn, t_train) -> str:
  from .. import plot
  n = len(times)
  fig, axes = plot.new_figure(n + 2, ncols=min(n + 2, 3))
  plot.posterior(x_test, mean, std, times=times, x_train=x_train,
                 y_train=y_train, target=y_test, finite_mean=outs.mean(1),
                 finite_std=outs.std(1, ddof=1), axes=axes[:n])
  grid = np.logspace(-1, math.log10(max(t_train) * 2), 40)
  losses = plot.ensemble_losses(predict_fn, grid, y_train, x_test, y_test)
  plot.loss_curves(grid, {"train (NTK ensemble)": losses["train"],
                          "test (NTK ensemble)": losses["test"]}, ax=axes[n])
  finite_test = ((outs - y_test[None, None, :, 0]) ** 2).mean((1, 2))
  axes[n].plot(t_train, finite_test, "s", color="C3", ms=4,
               label="test (finite nets)")
  axes[n].legend(fontsize=7)
  plot.kernel_heatmap(kernel_fn(x_test, None, "ntk"), ax=axes[n + 1],
                      title="NTK on test inputs")
  return plot.save(fig, out)


def build_parser(parser: Optional[argparse.ArgumentParser] = None):
  """The demo's options (shared by ``python -m widenets.apps.demo`` and the
  CLI)."""
  p = parser or argparse.ArgumentParser(
      prog="python -m widenets.apps.demo", description=__doc__.split("\n")[0])
  p.add_argument("--out", default="demo.png",
                 help="PNG figure to write (default: demo.png)")
  p.add_argument("--nets", type=int, default=100,
                 help="finite networks in the ensemble (default: 100)")
  p.add_argument("--width", type=int, default=512,
                 help="width of the finite networks (default: 512; the "
                      "analytic kernel is width-free)")
  p.add_argument("--lr", type=float, default=0.25,
                 help="gradient-descent step size (default: 0.25)")
  p.add_argument("--times", default="0,10,100,inf",
                 help="comma-separated training times (default: "
                      "0,10,100,inf; 0 is the prior at initialization)")
  p.add_argument("--train", type=int, default=5,
                 help="training points (default: 5)")
  p.add_argument("--seed", type=int, default=0, help="random seed")
  p.add_argument("--small", action="store_true",
                 help="a quick run: 30 nets of width 256, t = 0, 10, 100")
  return p


def run_args(args) -> DemoResult:
  try:
    times = [float(t) for t in args.times.split(",")]
  except ValueError:
    raise ValueError(f"--times must be comma-separated numbers or 'inf'; got "
                     f"{args.times!r}.") from None
  if args.nets < 2 or args.width < 1 or args.train < 2:
    raise ValueError("--nets and --train must be >= 2 and --width >= 1.")
  kw = dict(times=times, n_nets=args.nets, width=args.width, lr=args.lr,
            n_train=args.train, seed=args.seed, out=args.out)
  if args.small:
    kw.update(times=[0.0, 10.0, 100.0], n_nets=30, width=256, n_test=40)
  return run(**kw)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    run_args(args)
  except (ValueError, OSError) as e:
    print(f"widenets demo: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
