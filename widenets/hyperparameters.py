"""Fitting a network's hyperparameters by evidence (marginal likelihood).

An infinitely wide network is a Gaussian process whose kernel depends on
its hyperparameters (each layer's ``W_std`` and ``b_std``, activation
parameters, the observation noise). Here they are a *pytree* (e.g.
``{'W_std': 1.5, 'b_std': 0.05}``) and the network is built from it by a
function ``build(hp) -> (init_fn, apply_fn, kernel_fn)``, called inside the
differentiated function so that ``jax.grad`` reaches every leaf::

    def build(hp):
      return stax.serial(stax.Dense(512, hp['W_std'], hp['b_std']),
                         stax.ABRelu(hp['a'], hp['b']),
                         stax.Dense(1, hp['W_std'], hp['b_std']))

    f = evidence_fn(build, x, y)                  # f(hp, noise) -> scalar
    g_hp, g_noise = jax.grad(f, argnums=(0, 1))(hp, 0.1)

`fit_hyperparameters` maximizes the evidence with an optax optimizer (Adam
by default; optax is the optional extra ``widenets[fit]``) over the
*unconstrained* parameters ``theta = log(hp)`` for positive leaves (and
``theta = hp`` for leaves marked not positive), with restarts from
perturbed starting points, and returns a `FitResult`. Depth is discrete:
`compare_depths` fits each depth and `evidence_table` lays them side by
side. `dense_network` builds the usual fully-connected family.

``noise`` is the absolute observation-noise variance added to the kernel's
diagonal (``diag_reg`` with ``diag_reg_absolute_scale=True``).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .predict.evidence import (leave_one_out_log_likelihood,
                               log_marginal_likelihood)

__all__ = ["evidence_fn", "fit_hyperparameters", "FitResult",
           "compare_depths", "evidence_table", "dense_network", "from_spec", "evidence_grid"]

Build = Callable[[Any], tuple]
_CRITERIA = {"lml": log_marginal_likelihood,
             "loo": leave_one_out_log_likelihood}


def evidence_fn(build: Build, x_train, y_train, *, get: str = "nngp",
                criterion: str = "lml", **kernel_fn_kwargs
                ) -> Callable[[Any, Any], jax.Array]:
  """``f(hp, noise)``: the evidence of ``y_train`` under ``build(hp)``.

  Args:
    build: ``hp -> (init_fn, apply_fn, kernel_fn)``.
    x_train: inputs ``(n, ...)``; y_train: targets ``(n,)`` or ``(n, c)``.
    get: ``'nngp'`` (the Bayesian posterior's prior) or ``'ntk'``.
    criterion: ``'lml'`` (`predict.log_marginal_likelihood`) or ``'loo'``
      (`predict.leave_one_out_log_likelihood`).

  Returns:
    ``f(hp, noise, x=None, y=None) -> scalar``, summed over output
    columns; ``noise`` is the absolute noise variance; ``x``, ``y`` replace
    ``x_train``, ``y_train`` (pass them as arguments when jitting ``f``, so
    that the data is not compiled in as a constant). Differentiable in
    ``hp`` and ``noise``.
  """
  if criterion not in _CRITERIA:
    raise ValueError(f"evidence_fn: criterion must be 'lml' or 'loo'; got "
                     f"{criterion!r}.")
  score = _CRITERIA[criterion]

  def f(hp, noise, x=None, y=None):
    # x, y override the captured data: pass them as arguments of a jitted
    # caller, or XLA constant-folds the kernel of a captured x_train.
    x = x_train if x is None else x
    y = y_train if y is None else y
    kernel_fn = build(hp)[2]
    k = kernel_fn(x, None, get, **kernel_fn_kwargs)
    return score(k, y, noise, True)

  return f


@dataclasses.dataclass
class FitResult:
  """The outcome of `fit_hyperparameters`.

  Attributes:
    values: the fitted hyperparameter pytree (floats, structure of ``init``).
    noise: the fitted (or fixed) noise variance.
    objective: the evidence at ``values`` (the criterion, summed over
      output columns; larger is better).
    history: ``(steps,)`` objective per step of the best restart.
    path: the best restart's hyperparameters per step: the pytree of
      ``values`` with a leading ``(steps,)`` axis on each leaf.
    noise_path: ``(steps,)`` noise per step of the best restart.
    restart_objectives: the final objective of every restart.
    criterion: ``'lml'`` or ``'loo'``.
  """

  values: Any
  noise: float
  objective: float
  history: np.ndarray
  path: Any
  noise_path: np.ndarray
  restart_objectives: list
  criterion: str = "lml"

  def build(self, build: Build):
    """The network ``build(values)``."""
    return build(self.values)


def _optax():
  try:
    import optax
  except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError("fit_hyperparameters needs optax: pip install "
                      "'widenets[fit]'") from e
  return optax


def _leaves_with_paths(tree):
  return jax.tree_util.tree_flatten_with_path(tree)[0]


def _check_init(init) -> None:
  leaves = _leaves_with_paths(init)
  if not leaves:
    raise ValueError("fit_hyperparameters: init has no leaves; pass a pytree "
                     "of numbers, e.g. {'W_std': 1.5, 'b_std': 0.05}.")
  for path, leaf in leaves:
    if not (isinstance(leaf, (int, float, np.number)) or
            (hasattr(leaf, "shape") and np.ndim(leaf) == 0)):
      raise TypeError(f"fit_hyperparameters: init{jax.tree_util.keystr(path)}"
                      f" must be a number (a scalar hyperparameter); got "
                      f"{type(leaf).__name__} {leaf!r}.")


def _match(tree, init, name: str) -> list:
  """``tree`` flattened up to ``init``'s structure, or a clear error."""
  treedef = jax.tree_util.tree_structure(init)
  try:
    return treedef.flatten_up_to(tree)
  except (ValueError, TypeError) as e:
    raise ValueError(f"fit_hyperparameters: {name} must have the structure "
                     f"of init {treedef}; got {tree!r} ({e}).") from None


@dataclasses.dataclass(frozen=True)
class _Space:
  """Maps hyperparameters to unconstrained ``theta`` and back."""

  treedef: Any
  names: tuple
  positive: tuple
  lower: tuple    # in theta space, -inf where unbounded
  upper: tuple

  @classmethod
  def of(cls, init, positive, bounds) -> "_Space":
    _check_init(init)
    treedef = jax.tree_util.tree_structure(init)
    names = tuple(jax.tree_util.keystr(p) for p, _ in _leaves_with_paths(init))
    values = treedef.flatten_up_to(init)
    pos = ([bool(positive)] * len(values) if isinstance(positive, bool)
           else [bool(p) for p in _match(positive, init, "positive")])
    lo, hi = [-math.inf] * len(values), [math.inf] * len(values)
    if bounds is not None:
      for i, b in enumerate(_match(bounds, init, "bounds")):
        lo[i], hi[i] = _theta_bounds(b, pos[i], "bounds" + names[i])
    for name, v, p in zip(names, values, pos):
      if p and not float(v) > 0:
        raise ValueError(f"fit_hyperparameters: init{name} = {v!r} must be > "
                         f"0 (it is log-parametrized; mark it positive=False "
                         f"to fit it unconstrained).")
    return cls(treedef, names, tuple(pos), tuple(lo), tuple(hi))

  def to_theta(self, values) -> list:
    flat = self.treedef.flatten_up_to(values)
    return [jnp.log(v) if p else jnp.asarray(v, float)
            for v, p in zip(flat, self.positive)]

  def to_values(self, theta: Sequence) -> Any:
    flat = [jnp.exp(t) if p else t for t, p in zip(theta, self.positive)]
    return jax.tree_util.tree_unflatten(self.treedef, flat)

  def clip(self, theta: Sequence) -> list:
    return [jnp.clip(t, lo, hi) for t, lo, hi in
            zip(theta, self.lower, self.upper)]


def _theta_bounds(b, positive: bool, name: str) -> tuple:
  """``(lo, hi)`` (either may be None) -> bounds in theta space."""
  if b is None:
    return -math.inf, math.inf
  try:
    lo, hi = b
  except (TypeError, ValueError):
    raise ValueError(f"fit_hyperparameters: {name} must be a (low, high) "
                     f"pair or None; got {b!r}.") from None
  lo = -math.inf if lo is None else float(lo)
  hi = math.inf if hi is None else float(hi)
  if not lo < hi:
    raise ValueError(f"fit_hyperparameters: {name} = {b!r} needs low < high.")
  if positive:
    if lo < 0 or hi <= 0:
      raise ValueError(f"fit_hyperparameters: {name} = {b!r} of a positive "
                       f"(log-parametrized) hyperparameter must be >= 0.")
    return (math.log(lo) if lo > 0 else -math.inf), math.log(hi)
  return lo, hi


def _as_float(tree):
  return jax.tree_util.tree_map(lambda v: float(np.asarray(v)), tree)


def fit_hyperparameters(build: Build, init, x_train, y_train, *,
                        noise: float = 0.1, fit_noise: bool = True,
                        noise_bounds: Optional[tuple] = (1e-8, None),
                        get: str = "nngp", criterion: str = "lml",
                        positive: Any = True, bounds: Any = None,
                        steps: int = 200, learning_rate: float = 0.05,
                        optimizer: Any = None, restarts: int = 0,
                        restart_scale: float = 0.5, tol: float = 1e-7,
                        seed: int = 0, x64: bool = True,
                        **kernel_fn_kwargs) -> FitResult:
  """Maximizes the evidence of ``(x_train, y_train)`` over hyperparameters.

  Args:
    build: ``hp -> (init_fn, apply_fn, kernel_fn)``, e.g. `dense_network`.
    init: starting hyperparameters, a pytree of numbers.
    x_train: ``(n, ...)``; y_train: ``(n,)`` or ``(n, c)``.
    noise: (starting) absolute observation-noise variance.
    fit_noise: fit the noise too (else it is fixed at ``noise``).
    noise_bounds: ``(low, high)`` of the noise (None: unbounded side).
    get: ``'nngp'`` or ``'ntk'``; criterion: ``'lml'`` or ``'loo'``.
    positive: True (every leaf is log-parametrized, so stays > 0), False,
      or a pytree of bools like ``init`` (e.g. ``ABRelu``'s ``a`` may be
      negative).
    bounds: None or a pytree like ``init`` of ``(low, high)`` pairs (or
      None); iterates are projected onto them.
    steps: optimizer steps per restart; stops early when the objective
      changes by less than ``tol * n`` for 10 steps.
    learning_rate: Adam's step size (in log space for positive leaves).
    optimizer: any ``optax.GradientTransformation`` instead of Adam.
    restarts: extra starts from ``theta + restart_scale * z``, ``z ~ N(0,
      1)`` per leaf (``theta`` the unconstrained starting point).
    seed: for the restarts.
    x64: compute in float64 (inside ``jax.enable_x64``).
    kernel_fn_kwargs: passed to ``kernel_fn``.

  Returns:
    A `FitResult` (the best restart).

  Raises:
    ValueError: hyperparameters, bounds or ``positive`` of the wrong
      structure or sign; a non-finite objective at the starting point.
  """
  optax = _optax()
  if criterion not in _CRITERIA:
    raise ValueError(f"fit_hyperparameters: criterion must be 'lml' or "
                     f"'loo'; got {criterion!r}.")
  space = _Space.of(init, positive, bounds)
  if not float(noise) > 0:
    raise ValueError(f"fit_hyperparameters: noise = {noise!r} must be > 0.")
  nlo, nhi = _theta_bounds(noise_bounds, True, "noise_bounds")
  opt = optax.adam(learning_rate) if optimizer is None else optimizer
  with jax.enable_x64(bool(x64)):
    dtype = jnp.float64 if x64 else jnp.float32
    x = jnp.asarray(x_train, dtype)
    y = jnp.asarray(y_train, dtype)
    n = x.shape[0]
    score = evidence_fn(build, x, y, get=get, criterion=criterion,
                        **kernel_fn_kwargs)

    def unpack(params):
      log_noise = params[1] if fit_noise else jnp.log(jnp.asarray(noise,
                                                                  dtype))
      return space.to_values(params[0]), jnp.exp(log_noise)

    def loss(params, x, y):
      return -score(*unpack(params), x, y) / n

    @jax.jit
    def step(params, state, x, y):
      value, grad = jax.value_and_grad(loss)(params, x, y)
      updates, state = opt.update(grad, state, params)
      params = optax.apply_updates(params, updates)
      params = (space.clip(params[0]), jnp.clip(params[1], nlo, nhi))
      return params, state, value

    theta0 = [jnp.asarray(t, dtype) for t in space.to_theta(init)]
    start = (theta0, jnp.log(jnp.asarray(noise, dtype)))
    first = float(loss(start, x, y))
    if not math.isfinite(first):
      raise ValueError(
          f"fit_hyperparameters: the {criterion} objective is {-first * n} at "
          f"the starting point init={init!r}, noise={noise!r}: the train "
          f"kernel is not positive definite or overflows there. Start from "
          f"other values or a larger noise.")
    rng = np.random.default_rng(seed)
    runs = []
    for r in range(restarts + 1):
      params = start if r == 0 else _perturb(start, rng, restart_scale,
                                             space, (nlo, nhi))
      runs.append(_run(functools.partial(step, x=x, y=y), params,
                       opt.init(params), steps, tol, unpack))
  best = min(runs, key=lambda run: run[0])  # run[0] is the loss
  if not math.isfinite(best[0]):
    raise ValueError("fit_hyperparameters: the objective was not finite at "
                     "any iterate; start from other values or a larger "
                     "noise.")
  objective, history, path, noise_path = best
  return FitResult(
      values=_as_float(jax.tree_util.tree_map(lambda p: p[-1], path)),
      noise=float(noise_path[-1]), objective=objective * -n,
      history=np.asarray(history) * -n, path=path, noise_path=noise_path,
      restart_objectives=[run[0] * -n for run in runs], criterion=criterion)


def _perturb(start, rng, scale, space, noise_bounds):
  theta, log_noise = start
  theta = space.clip([t + scale * rng.standard_normal() for t in theta])
  log_noise = jnp.clip(log_noise + scale * rng.standard_normal(),
                       *noise_bounds)
  return theta, log_noise


def _run(step, params, state, steps, tol, unpack):
  """One restart: ``(best loss, losses, value path, noise path)``.

  The path ends at the best finite iterate; a non-finite loss stops the
  restart there (with a warning) instead of stepping on from NaNs.
  """
  losses, values, noises = [], [], []
  quiet = 0
  for i in range(steps):
    new, state, value = step(params, state)
    value = float(value)
    if not math.isfinite(value):
      warnings.warn(f"fit_hyperparameters: the objective became {value} "
                    f"after {i} steps; keeping the best iterate so far.",
                    RuntimeWarning, stacklevel=3)
      break
    hp, nz = unpack(params)
    losses.append(value)
    values.append(hp)
    noises.append(float(nz))
    quiet = quiet + 1 if len(losses) > 1 and \
        abs(losses[-2] - value) < tol else 0
    params = new
    if quiet >= 10:
      break
  if not losses:
    return math.inf, [], None, np.zeros(0)
  stop = int(np.argmin(losses)) + 1
  path = jax.tree_util.tree_map(lambda *v: np.asarray(v, np.float64),
                                *values[:stop])
  return losses[stop - 1], losses[:stop], path, np.asarray(noises[:stop])


def compare_depths(build_for_depth: Callable[[int], Build],
                   depths: Sequence[int], init, x_train, y_train,
                   **fit_kwargs) -> dict:
  """Fits each depth; ``{depth: FitResult}`` (see `evidence_table`).

  Args:
    build_for_depth: ``depth -> build`` (e.g. ``lambda d:
      dense_network(d)``).
    depths: the depths to compare; init, x_train, y_train, fit_kwargs: as
      `fit_hyperparameters`.
  """
  return {int(d): fit_hyperparameters(build_for_depth(d), init, x_train,
                                      y_train, **fit_kwargs) for d in depths}


def evidence_table(results: dict) -> str:
  """A Markdown table of `compare_depths` results: depth, evidence, values.

  The best depth (largest evidence) is marked with ``*``.
  """
  if not results:
    return ""
  best = max(results, key=lambda d: results[d].objective)
  names = [jax.tree_util.keystr(p) for p, _ in
           _leaves_with_paths(next(iter(results.values())).values)]
  head = "| depth | evidence | " + " | ".join(names) + " | noise |"
  rows = [head, "|" + "---|" * (len(names) + 3)]
  for d, r in results.items():
    vals = " | ".join(f"{v:.3g}" for v in
                      jax.tree_util.tree_leaves(r.values))
    mark = " *" if d == best else ""
    rows.append(f"| {d}{mark} | {r.objective:.2f} | {vals} | {r.noise:.3g} |")
  return "\n".join(rows)


def dense_network(depth: int, activation: Optional[Callable] = None,
                  width: int = 512, out_dim: int = 1) -> Build:
  """``build(hp)`` of ``depth`` hidden ``Dense -> activation`` layers.

  Every ``Dense`` (hidden and readout) uses ``hp['W_std']`` and
  ``hp['b_std']``; ``activation(hp)`` returns the nonlinearity (default
  ``stax.Relu()``), e.g. ``lambda hp: stax.ABRelu(hp['a'], hp['b'])``.
  ``width`` only matters for ``init_fn``/``apply_fn``.
  """
  from . import stax

  if int(depth) < 0:
    raise ValueError(f"dense_network: depth must be >= 0; got {depth!r}.")
  act = activation or (lambda hp: stax.Relu())

  def build(hp):
    layers = []
    for _ in range(int(depth)):
      layers += [stax.Dense(width, W_std=hp["W_std"], b_std=hp["b_std"]),
                 act(hp)]
    layers.append(stax.Dense(out_dim, W_std=hp["W_std"], b_std=hp["b_std"]))
    return stax.serial(*layers)

  return build


def from_spec(spec: str) -> tuple[Build, dict]:
  """``(build, init)`` for a spec string (`widenets.spec`) with shared
  ``W_std`` / ``b_std``.

  Every layer that takes ``W_std`` (Dense, Conv, ...) gets ``hp['W_std']``;
  every one with a bias (``b_std`` not None) gets ``hp['b_std']``. ``init``
  holds the first values the spec gives (1.0 / 0.05 where it gives none);
  ``b_std`` is left out when no layer has a bias.
  """
  import inspect
  from . import spec as spec_module
  from . import stax

  known = spec_module.layer_names()
  calls = []
  w0, b0 = [], []
  for name, args, kwargs in spec_module.layer_calls(spec):
    params = inspect.signature(known[name]).parameters
    bound = dict(inspect.signature(known[name]).bind_partial(*args,
                                                             **kwargs)
                 .arguments)
    takes_w = "W_std" in params
    has_b = "b_std" in params and (bound.get("b_std", params["b_std"].default)
                                   is not None)
    if takes_w:
      w0.append(bound.get("W_std", params["W_std"].default))
    if has_b:
      b0.append(bound.get("b_std", params["b_std"].default))
    calls.append((known[name], bound, takes_w, has_b))
  init = {"W_std": float(w0[0]) if w0 else 1.0}
  if b0:
    init["b_std"] = float(b0[0])
  if not w0:
    raise ValueError(f"from_spec: no layer of {spec!r} takes W_std; nothing "
                     f"to fit.")

  def build(hp):
    layers = []
    for ctor, bound, takes_w, has_b in calls:
      kw = dict(bound)
      if takes_w:
        kw["W_std"] = hp["W_std"]
      if has_b:
        kw["b_std"] = hp["b_std"]
      layers.append(ctor(**kw))
    return layers[0] if len(layers) == 1 else stax.serial(*layers)

  return build, init


def evidence_grid(build: Build, x_train, y_train, w_values, b_values, *,
                  noise: float, get: str = "nngp", criterion: str = "lml",
                  extra: Optional[dict] = None, x64: bool = True
                  ) -> np.ndarray:
  """The evidence on a ``(W_std, b_std)`` grid: ``(len(w), len(b))``.

  ``build`` gets ``{'W_std': w, 'b_std': b, **extra}``; the evaluation is
  one compiled function mapped over the grid (for
  `widenets.plot.evidence_landscape`).
  """
  extra = dict(extra or {})
  with jax.enable_x64(bool(x64)):
    dtype = jnp.float64 if x64 else jnp.float32
    f = evidence_fn(build, None, None, get=get, criterion=criterion)
    x, y = jnp.asarray(x_train, dtype), jnp.asarray(y_train, dtype)
    one = jax.jit(lambda w, b, x, y: f(dict(extra, W_std=w, b_std=b),
                                       jnp.asarray(noise, dtype), x, y))
    out = [[float(one(jnp.asarray(w, dtype), jnp.asarray(b, dtype), x, y))
            for b in b_values] for w in w_values]
  return np.asarray(out)
