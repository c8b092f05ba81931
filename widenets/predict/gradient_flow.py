r"""Closed-form gradient flow on MSE: one linearized network, or the ensemble.

Continuous-time gradient descent on :math:`L = \frac{1}{2|y|}\|f - y\|^2`
(``|y| = y_train.size``) with learning rate :math:`\eta` and kernel
:math:`K` (NTK for training all layers, NNGP for training only the readout)
evolves train outputs as

.. math::
  f_t = y + e^{-\eta K t / |y|}(f_0 - y),\qquad
  f_t(x_*) = f_0(x_*) + K_* K^{-1}(I - e^{-\eta K t / |y|})(y - f_0).

In the eigenbasis :math:`K = V \mathrm{diag}(\lambda) V^T` (computed once and
reused for every ``t``) this needs :math:`e^{-\lambda \tau}` and
:math:`\phi(\lambda, \tau) = (1 - e^{-\lambda \tau})/\lambda`; eigenvalues
:math:`\le 0` (round-off of a PSD kernel) contribute nothing, and
``t = inf`` gives :math:`\phi = 1/\lambda`, i.e. the kernel-regression solution.

`gradient_descent_mse_ensemble` marginalizes the initialization of an
infinite-width network (``f_0 ~ GP(0, NNGP)``), giving a Gaussian whose mean is
the above with ``f_0 = 0`` and whose covariance is (Lee et al. 2019, eq. 15-16)

* NNGP (readout-only training): :math:`K_{**} - K_*\,\phi(K, 2\tau)\,K_*^T`;
* NTK: :math:`K_{**} + \Theta_*\phi\,K\,\phi\,\Theta_*^T -
  (\Theta_*\phi\,K_*^T + h.c.)` with :math:`\phi = \phi(\Theta, \tau)`;

and on the train set :math:`K e^{-2K\tau}` (NNGP) and
:math:`e^{-\Theta\tau} K e^{-\Theta\tau}` (NTK), :math:`\tau = \eta t/|y|`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ..buckets import is_pairwise
from . import large, solvers, validation
from ._common import (ArrayOrScalar, Axes, Layout, as_array,
                      canonical_predict_get, check_diag_reg, check_fx,
                      check_test_train, check_train, eval_context,
                      first_kernel, from_2d, is_array, is_concrete,
                      kernel_dependencies, pack_get, small_jit, to_2d)
from .gp import Gaussian, gp_inference

__all__ = ["gradient_descent_mse", "gradient_descent_mse_ensemble"]


def _decay(evals: jax.Array, tau: jax.Array, xp=jnp) -> jax.Array:
  """``exp(-lambda tau)`` for ``lambda > 0``, else 1; shape ``(T, n)``.
  ``xp``: `jax.numpy`, or NumPy for the host path."""
  pos = evals > 0
  lam = xp.where(pos, evals, 0.)
  return xp.where(pos[None], xp.exp(-lam[None] * tau[:, None]), 1.)


def _phi(evals: jax.Array, tau: jax.Array, xp=jnp) -> jax.Array:
  """``(1 - exp(-lambda tau)) / lambda`` for ``lambda > 0``, else 0."""
  pos = evals > 0
  lam = xp.where(pos, evals, 1.)
  return xp.where(pos[None], -xp.expm1(-lam[None] * tau[:, None]) / lam[None],
                  0.)


def _lead(x: jax.Array, t_shape: tuple) -> jax.Array:
  """``x`` with a unit axis per time axis in front (explicit broadcasting)."""
  return jnp.reshape(x, (1,) * len(t_shape) + jnp.shape(x))


def _factor_or_singular(solver, k2d, diag_reg, absolute, cache: dict) -> bool:
  """Caches the factor of ``K + r I`` in ``cache['f']``; True if singular.

  With the default `Cholesky` solver and a concrete kernel, a kernel that is
  singular to working precision is not regularized further: ``t=None`` then
  takes the eigendecomposition path, so that it equals ``t=inf``
  (directions with eigenvalues <= 0 keep their initial outputs). Other
  solvers (and traced kernels) keep their own failure handling.
  """
  if "f" in cache:
    return False
  s = solvers.make_solver(solver)
  if (isinstance(s, solvers.Cholesky) and s.on_failure == "regularize" and
      not getattr(k2d, "matrix_free", False) and is_concrete(k2d)):
    try:
      with eval_context():
        cache["f"] = dataclasses.replace(s, on_failure="raise").factor(
            k2d, diag_reg, absolute)
    except ValueError:
      return True
  return False


def _times(t, learning_rate, normalization) -> tuple[tuple, jax.Array]:
  """``(t's shape, flat t * learning_rate / normalization)``: in NumPy when
  concrete (two eager programs per number of times otherwise)."""
  if is_concrete(t) and is_concrete(learning_rate):
    t = np.asarray(t, jnp.result_type(t, float)) * learning_rate
  else:
    t = jnp.asarray(t) * learning_rate
  return t.shape, t.reshape(-1) / normalization


class _Eigen:
  """Cached `solvers.Eigen` of a kernel, computed once for all ``t``."""

  def __init__(self, diag_reg, absolute, solver, where: str):
    self.diag_reg, self.absolute, self.where = diag_reg, absolute, where
    self.dtype = getattr(solvers.make_solver(solver), "dtype", None)
    self._cache = {}

  def has(self, key) -> bool:
    return key in self._cache

  def __call__(self, key, k2d) -> solvers.Eigen:
    if key not in self._cache:
      with eval_context():
        self._cache[key] = solvers.Eigen.of(k2d, self.diag_reg, self.absolute,
                                            self.dtype)
      name = "k_train_train" if key == 0 else f"{key} train-train kernel"
      validation.warn_indefinite(self.where, self._cache[key].evals,
                                 self._cache[key].dtype, name)
    return self._cache[key]


def gradient_descent_mse(
    k_train_train: jax.Array,
    y_train: jax.Array,
    learning_rate: float = 1.,
    diag_reg: float = 0.,
    diag_reg_absolute_scale: bool = False,
    trace_axes: Axes = (-1,),
    *,
    solver: Any = None,
) -> Callable:
  """Gradient flow on MSE of a linearized network, in closed form.

  Args:
    k_train_train: train-train kernel, shape ``zip(y_train.shape,
      y_train.shape)`` without ``trace_axes`` (e.g. ``(N, N)``).
    y_train: targets.
    learning_rate: ``eta``; times are in units of it (``eta * t``).
    diag_reg: added to the diagonal: ``diag_reg * tr(K) / n``, or
      ``diag_reg`` if ``diag_reg_absolute_scale``. Must be >= 0.
    diag_reg_absolute_scale: see ``diag_reg``.
    trace_axes: output axes over which the kernel is ``K (x) I``.
    solver: (additive) ``'cholesky'`` / `solvers.Cholesky(...)` (e.g.
      ``dtype='float64'``) / ``'cg'`` / `cg.CG(...)` for ``t=None``.

  Returns:
    ``predict_fn(t=None, fx_train_0=0., fx_test_0=None, k_test_train=None)``
    returning ``fx_train_t``, ``fx_test_t`` or both (if both ``fx_*_0`` are
    given), with leading axes ``t.shape``. ``t=None`` is ``t=inf`` computed by
    a linear solve (train outputs are then ``y_train``). The
    eigendecomposition (finite ``t``) / factorization (``t=None``) is done on
    the first call and cached; a ``t=None`` call after a finite-``t`` call
    reuses the eigendecomposition.
  """
  where = "gradient_descent_mse"
  validation.check_finite(where, y_train=y_train)
  validation.check_learning_rate(where, learning_rate)
  y_train = as_array(y_train)
  layout = Layout(y_train.shape, trace_axes)
  check_diag_reg(diag_reg)
  check_train(k_train_train, y_train, layout)
  k2d = to_2d(k_train_train)
  validation.check_train_kernel(where, k2d)
  eigen = _Eigen(diag_reg, diag_reg_absolute_scale, solver, where)
  solve_inf = {}

  def factor():
    if "f" not in solve_inf:
      with eval_context():
        solve_inf["f"] = solvers.make_solver(solver).factor(
            k2d, diag_reg, diag_reg_absolute_scale)
    return solve_inf["f"]

  def predict_fn(
      t: ArrayOrScalar = None,
      fx_train_0: ArrayOrScalar = 0.,
      fx_test_0: ArrayOrScalar = None,
      k_test_train: Optional[jax.Array] = None,
  ):
    """Outputs on the train [and test] set at time[s] ``t``."""
    check_fx(fx_train_0, fx_test_0, k_test_train)
    validation.check_time(where, t, learning_rate)
    validation.check_finite(where, fx_train_0=fx_train_0, fx_test_0=fx_test_0,
                            k_test_train=k_test_train)
    test_shape = None
    if k_test_train is not None:
      test_shape = check_test_train(k_test_train, layout)
      k_td = to_2d(k_test_train)
    if fx_train_0 is not None:
      fx_train_0 = jnp.broadcast_to(fx_train_0, y_train.shape)
    if fx_test_0 is not None:
      fx_test_0 = jnp.broadcast_to(fx_test_0, layout.output_shape(test_shape))
    rhs = y_train if fx_train_0 is None else y_train - fx_train_0
    rhs = layout.flatten(rhs)

    if t is None and not eigen.has(0) and _factor_or_singular(
        solver, k2d, diag_reg, diag_reg_absolute_scale, solve_inf):
      eigen(0, k2d)  # t=None is t=inf: the flow's limit, as below
    if t is None and not eigen.has(0):
      fx_train_t = y_train.astype(k2d.dtype)
      if fx_test_0 is None:
        return fx_train_t
      fx_test_t = fx_test_0 + layout.unflatten(k_td @ factor().solve(rhs),
                                               test_shape)
      return fx_test_t if fx_train_0 is None else (fx_train_t, fx_test_t)

    t_shape, tau = _times(jnp.inf if t is None else t, learning_rate,
                          y_train.size)
    eig = eigen(0, k2d)
    with eig.context():
      v, lam = eig.evecs, eig.evals
      proj = v.T @ eig.cast(rhs)                                # (n, c)
      out = []
      if fx_train_0 is not None:
        d = jnp.einsum("ij,tj,jc->tic", v, 1 - _decay(lam, tau), proj)
        d = layout.unflatten(d.astype(eig.out_dtype), layout.kernel_shape)
        out.append(_lead(fx_train_0, t_shape)
                   + d.reshape(t_shape + y_train.shape))
      if fx_test_0 is not None:
        a = eig.cast(k_td) @ v
        d = jnp.einsum("mj,tj,jc->tmc", a, _phi(lam, tau), proj)
        d = layout.unflatten(d.astype(eig.out_dtype), test_shape)
        out.append(_lead(fx_test_0, t_shape)
                   + d.reshape(t_shape + fx_test_0.shape))
    return out[0] if len(out) == 1 else tuple(out)

  return predict_fn


def _split_test_train_kwargs(train_kwargs: dict, test_kwargs: dict):
  """Keyword arguments for the test-train and test-test kernel calls.

  As neural-tangents: test-test uses train kwargs overridden by test ones;
  for test-train a pair ``(v1, v2)`` given for both becomes
  ``(test's v1, train's v1)``; other values must agree.
  """
  def arrays(v):
    return all(is_array(x) for x in jax.tree_util.tree_leaves(v)) and \
        len(jax.tree_util.tree_leaves(v)) > 0

  def first(v):
    return v[0] if isinstance(v, tuple) and len(v) == 2 else v

  kwargs_td, kwargs_tt = dict(train_kwargs), dict(train_kwargs)
  for k, v_tt in test_kwargs.items():
    if k not in train_kwargs:
      v_td = v_tt
    else:
      v_dd = train_kwargs[k]
      if arrays(v_dd) and arrays(v_tt):
        if (isinstance(v_dd, tuple) and len(v_dd) == 2 and
            isinstance(v_tt, tuple) and len(v_tt) == 2):
          v_td = (first(v_tt), first(v_dd))
        else:
          v_td = v_tt
      elif not arrays(v_dd) and not arrays(v_tt) and v_dd != v_tt:
        raise ValueError(
            f"Keyword argument {k!r} of `kernel_fn` is {v_dd!r} for the "
            f"train-train kernel but {v_tt!r} for the test kernels; the "
            f"test-train kernel needs one value.")
      else:
        v_td = v_tt
    kwargs_td[k], kwargs_tt[k] = v_td, v_tt
  return kwargs_td, kwargs_tt


def gradient_descent_mse_ensemble(
    kernel_fn: Callable,
    x_train: jax.Array,
    y_train: jax.Array,
    learning_rate: float = 1.,
    diag_reg: float = 0.,
    diag_reg_absolute_scale: bool = False,
    trace_axes: Axes = (-1,),
    *,
    solver: Any = None,
    **kernel_fn_train_train_kwargs,
) -> Callable:
  """Gaussian of an infinite ensemble of wide networks trained on MSE.

  Args:
    kernel_fn: ``kernel_fn(x1, x2, get, **kwargs)`` returning a `Kernel` or a
      namedtuple with ``nngp``/``ntk`` (analytic, Monte Carlo or
      ``empirical_kernel_fn``).
    x_train, y_train: training inputs and targets.
    learning_rate, diag_reg, diag_reg_absolute_scale, trace_axes: as in
      `gradient_descent_mse`.
    solver: (additive) as in `gradient_descent_mse`; or a large solver
      (``'nystrom'``, ``'block_cg'``, `Nystrom`, `BlockCG`, `DaskCG`) for
      ``t = None`` (inf) only, see `widenets.predict.large`.
    **kernel_fn_train_train_kwargs: passed to ``kernel_fn`` for the
      train-train kernel and (unless overridden) the test kernels; pairs
      such as ``pattern=(p1, p2)`` are combined for test-train as in
      neural-tangents.

  Returns:
    ``predict_fn(t=None, x_test=None, get=None, compute_cov=False,
    **kernel_fn_test_test_kwargs)`` giving the mean (or `Gaussian` with
    covariance if ``compute_cov``) on ``x_test`` (``None``: the train set) at
    times ``t`` (any shape; ``None`` = inf), for ``get`` in
    ``'nngp'``/``'ntk'``/a tuple/``None`` (both; a ``Gaussians`` namedtuple).
  """
  where = "gradient_descent_mse_ensemble"
  validation.check_finite(where, y_train=y_train)
  validation.check_learning_rate(where, learning_rate)
  if large.resolve(solver) is not None:
    return large.ensemble_large(kernel_fn, x_train, y_train, diag_reg,
                                diag_reg_absolute_scale, trace_axes,
                                large.resolve(solver),
                                kernel_fn_train_train_kwargs)
  x_train, y_train = as_array(x_train), as_array(y_train)
  if x_train.shape[0] != y_train.shape[0]:
    raise ValueError(f"`x_train` has {x_train.shape[0]} examples (shape "
                     f"{x_train.shape}) but `y_train` has {y_train.shape[0]} "
                     f"(shape {y_train.shape}).")
  check_diag_reg(diag_reg)
  layout = Layout(y_train.shape, trace_axes)
  y2 = layout.flatten(y_train)
  k_dd_cache: dict = {}
  eigen = _Eigen(diag_reg, diag_reg_absolute_scale, solver, where)
  inf_cache: dict = {}

  def k_train_train(deps, computed: Optional[dict] = None):
    """The cached train-train kernels ``deps``; missing ones are taken from
    ``computed`` (a merged call's), else computed."""
    missing = tuple(g for g in deps if g not in k_dd_cache)
    if missing:
      if computed is None:
        with eval_context():
          computed = _call(kernel_fn, x_train, None, missing,
                           kernel_fn_train_train_kwargs)
      k_dd_cache.update({g: computed[g] for g in missing})
      check_train(k_dd_cache[missing[0]], y_train, layout,
                  name=f"kernel_fn(x_train, None, {missing[0]!r})")
    return {g: k_dd_cache[g] for g in deps}

  def predict_fn(t: ArrayOrScalar = None, x_test: Optional[jax.Array] = None,
                 get=None, compute_cov: bool = False,
                 **kernel_fn_test_test_kwargs):
    """Mean [and covariance] of the ensemble's outputs at time[s] ``t``."""
    validation.check_time(where, t, learning_rate)
    names, single = canonical_predict_get(get, ("nngp", "ntk"))
    deps = kernel_dependencies(names, compute_cov)
    merged = None
    if x_test is not None and not (kernel_fn_train_train_kwargs or
                                   kernel_fn_test_test_kwargs):
      merged = _merged_call(kernel_fn, x_train, x_test, deps)
    # A train-train kernel already cached (and perhaps factorized) stays.
    k_dd = k_train_train(deps, None if merged is None else merged[0])
    if x_test is None:
      k_td, nngp_tt = None, (True if compute_cov else None)
    elif merged is not None:
      k_td, nngp_tt = merged[1], (merged[2] if compute_cov else None)
    else:
      kw_td, kw_tt = _split_test_train_kwargs(kernel_fn_train_train_kwargs,
                                              kernel_fn_test_test_kwargs)
      k_td = _call(kernel_fn, x_test, x_train, deps, kw_td)
      nngp_tt = (kernel_fn(x_test, None, "nngp", **kw_tt) if compute_cov
                 else None)

    if t is None and not all(eigen.has(g) for g in names):
      # Infinite time by Cholesky solves (unless eigh is already cached).
      if deps not in inf_cache:
        inf_cache[deps] = gp_inference(
            _Pair(**k_dd), y_train, diag_reg, diag_reg_absolute_scale,
            trace_axes, solver=solver)
      return inf_cache[deps](get, None if k_td is None else _Pair(**k_td),
                             nngp_tt)

    t_shape, tau = _times(jnp.inf if t is None else t, learning_rate,
                          y_train.size)
    out = {}
    for g in names:
      eig = eigen(g, to_2d(k_dd[g]))
      with eig.context():
        mean, cov = _moments_of(g, eig, tau, y2, k_dd, k_td, nngp_tt)
      shape = layout.kernel_shape if k_td is None else \
          first_kernel(k_td[g]).shape[::2]
      mean = layout.unflatten(mean.astype(eig.out_dtype), shape)
      mean = mean.reshape(t_shape + mean.shape[1:])
      if cov is None:
        out[g] = mean
      else:
        cov = from_2d(cov.astype(eig.out_dtype), shape, shape, lead=1)
        out[g] = Gaussian(mean, cov.reshape(t_shape + cov.shape[1:]))
    return pack_get(out, get, single)

  return predict_fn


def _moments_of(g, eig, tau, y2, k_dd, k_td, nngp_tt) -> tuple:
  """`_moments` of ``g`` from its eigendecomposition ``eig``: in NumPy when
  every array is small, concrete and on the CPU (no program per shape, as
  `solvers.on_host`), else compiled."""
  compute_cov = nngp_tt is not None
  nngp_tt = None if nngp_tt is None or nngp_tt is True else to_2d(nngp_tt)
  k_dd = {k: to_2d(v) for k, v in k_dd.items()}
  k_td = None if k_td is None else {k: to_2d(v) for k, v in k_td.items()}
  m = eig.evecs.shape[0] if k_td is None else k_td[g].shape[0]
  out_size = np.size(tau) * m * max(m if compute_cov else 1, np.size(y2))
  arrays = (eig.evecs, eig.evals, tau, y2, k_dd, k_td, nngp_tt)
  leaves = jax.tree_util.tree_leaves(arrays)
  if out_size <= solvers.HOST_SOLVE_SIZE and solvers.on_host(*leaves):
    host = jax.tree_util.tree_map(lambda x: np.asarray(x, eig.dtype), arrays)
    host = host[:2] + (np.asarray(tau),) + host[3:]  # tau keeps its dtype
    mean, cov = _moments(np, g, *host, compute_cov)
    return as_array(mean), None if cov is None else as_array(cov)
  cast = lambda tree: jax.tree_util.tree_map(eig.cast, tree)
  return _ensemble_moments(g, eig.evecs, eig.evals, tau, *map(cast, arrays[3:]),
                           compute_cov)


def _call(kernel_fn, x1, x2, get: tuple, kwargs: dict) -> dict:
  """``{name: matrix}``; a single name is asked for as a string (as
  neural-tangents does), so kernel functions returning arrays work."""
  if len(get) == 1:
    k = kernel_fn(x1, x2, get[0], **kwargs)
    return {get[0]: k if is_array(k) else getattr(k, get[0])}
  k = kernel_fn(x1, x2, get, **kwargs)
  return {g: getattr(k, g) for g in get}


# Up to this many entries ``(n + m)**2`` the train-train, test-train and
# test-test kernels come from one call (`_merged_call`): there a call's cost
# is mostly the compile of its program (one per input shape).
MERGE_ENTRIES = 1 << 20


def _merged_call(kernel_fn, x_train, x_test, deps: tuple):
  """``(k_dd, k_td, nngp_tt)`` as dicts / array from one ``x2=None`` call on
  ``[x_train; x_test]``, or None where that is not known to equal the three
  calls.

  Equal where `buckets.is_pairwise` (e.g. widenets' analytic kernel
  function, or a ``jax.jit`` of it, of a network that keeps samples
  independent, with the batch on axis 0): its ``x2=None`` blocks are those
  of ``x2=None`` calls, its off-diagonal block that of ``kernel_fn(x_test,
  x_train)`` (unless ``x_test`` equals ``x_train``: see below).
  Small problems only (`MERGE_ENTRIES`): one program to compile instead of
  up to three (per test size, per training-set size), for about the same
  number of kernel entries (``x2=None`` computes each pair once; a later
  call recomputes the train-train block, cheap at these sizes, so that all
  calls of one size share one program).
  """
  if not (is_pairwise(kernel_fn) and
          isinstance(x_test, (jax.Array, np.ndarray)) and
          is_concrete(x_train) and is_concrete(x_test)):
    # Traced inputs too: the train-train kernel is cached across calls.
    return None
  n, m = x_train.shape[0], x_test.shape[0]
  if (x_train.shape[1:] != x_test.shape[1:] or x_train.dtype != x_test.dtype
      or (n + m) ** 2 > MERGE_ENTRIES or not n or not m):
    return None
  host = solvers.on_host(x_train, x_test)
  xp = np if host else jnp
  if x_train.shape == x_test.shape and bool(xp.array_equal(x_train, x_test)):
    # kernel_fn(x_test, x_train) then knows x1 is x2 (by value), which a
    # block off the diagonal does not (e.g. Dropout's diagonal term).
    return None
  get = deps if "nngp" in deps else deps + ("nngp",)
  if host:
    # NumPy: no program per shape for the concatenation and the blocks.
    x = jax.device_put(np.concatenate([np.asarray(x_train),
                                       np.asarray(x_test)]))
    k = {g: np.asarray(v) for g, v in _call(kernel_fn, x, None, get,
                                             {}).items()}
    block = lambda a, rows, cols: jax.device_put(a[rows, cols])
  else:
    x = jnp.concatenate([x_train, x_test])
    k = _call(kernel_fn, x, None, get, {})
    block = lambda a, rows, cols: a[rows, cols]
  tr, te = slice(0, n), slice(n, n + m)
  return ({g: block(k[g], tr, tr) for g in deps},
          {g: block(k[g], te, tr) for g in deps}, block(k["nngp"], te, te))


class _Pair:
  """A minimal ``nngp``/``ntk`` holder handed to `gp_inference`."""

  def __init__(self, nngp=None, ntk=None):
    self.nngp, self.ntk = nngp, ntk


@functools.partial(small_jit, static_argnames=("g", "compute_cov"))
def _ensemble_moments(g, v, lam, tau, y2, k_dd, k_td, nngp_tt, compute_cov):
  """`_moments` in one compiled program (per shapes and ``g``): run eagerly,
  its dozen einsums and elementwise steps each compiled a program of their
  own."""
  return _moments(jnp, g, v, lam, tau, y2, k_dd, k_td, nngp_tt, compute_cov)


def _moments(xp, g, v, lam, tau, y2, k_dd, k_td, nngp_tt, compute_cov):
  """Flat mean ``(T, m, c)`` and covariance ``(T, m, m)`` (or None).

  ``v``, ``lam``: eigenvectors and eigenvalues of the train-train ``g``
  kernel; ``xp``: `jax.numpy`, or NumPy on NumPy arrays (the host path).
  """
  einsum = functools.partial(xp.einsum, optimize=True)
  proj = v.T @ y2                                               # (n, c)
  phi = _phi(lam, tau, xp)
  if k_td is None:
    mean = einsum("ij,tj,jc->tic", v, 1 - _decay(lam, tau, xp), proj)
  else:
    a = k_td[g] @ v                                             # (m, n)
    mean = einsum("mj,tj,jc->tmc", a, phi, proj)
  if not compute_cov:
    return mean, None

  if k_td is None:
    if g == "nngp":
      w = xp.maximum(lam, 0.)[None] * _decay(lam, 2 * tau, xp)
      cov = einsum("ij,tj,kj->tik", v, w, v)
    else:
      e = einsum("ij,tj,kj->tik", v, _decay(lam, tau, xp), v)
      cov = e @ k_dd["nngp"] @ e
    return mean, cov

  if g == "nngp":
    cov = nngp_tt[None] - einsum("mj,tj,lj->tml", a, _phi(lam, 2 * tau, xp),
                                 a)
  else:
    # X_t = Theta^{-1}(I - e^{-Theta tau}) Theta_*^T, shape (T, n, m).
    x = einsum("ij,tj,mj->tim", v, phi, a)
    cov = xp.swapaxes(x, 1, 2) @ (k_dd["nngp"] @ x)
    c = v.T @ k_td["nngp"].T                                    # (n, m)
    term_2 = einsum("mj,tj,jl->tml", a, phi, c)
    cov = cov - term_2 - xp.swapaxes(term_2, 1, 2) + nngp_tt[None]
  return mean, cov
