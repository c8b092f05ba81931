r"""GP inference with NNGP / NTK / NTKGP kernels (`gp_inference`).

With train-train kernel :math:`K` (regularized: :math:`K + rI`), test-train
:math:`K_{*}` and test-test :math:`K_{**}` and targets :math:`y`:

* ``'nngp'`` -- exact posterior of an infinitely wide Bayesian network:
  mean :math:`K_* K^{-1} y`, covariance :math:`K_{**} - K_* K^{-1} K_*^T`.
* ``'ntk'`` -- the infinite ensemble of infinitely wide networks trained by
  gradient flow on MSE to convergence (Lee et al. 2019, eq. 16): mean
  :math:`\Theta_* \Theta^{-1} y`; covariance
  :math:`K_{**} + \Theta_*\Theta^{-1} K \Theta^{-1}\Theta_*^T
  - (\Theta_*\Theta^{-1} K_*^T + h.c.)` (NNGP :math:`K`, NTK :math:`\Theta`).
* ``'ntkgp'`` -- a GP posterior with the NTK as prior covariance (He et al.
  2020): the ``'nngp'`` formulas with :math:`\Theta` everywhere.

`gp_inference` has two forms, told apart by the first argument:

* ``gp_inference(k_train_train, y_train, diag_reg=0.,
  diag_reg_absolute_scale=False, trace_axes=(-1,))`` (neural-tangents >= 0.3)
  returns ``predict_fn(get=None, k_test_train=None, k_test_test=None)``.
* ``gp_inference(kernel_fn, x_train, y_train, x_test, get, diag_reg=0.,
  compute_cov=False)`` (neural-tangents 0.1/0.2, still in tutorials) computes
  the kernels itself and returns the prediction directly: ``Gaussian(mean,
  covariance)`` if ``compute_cov`` else the mean (a namedtuple of those for a
  tuple ``get``). Its ``diag_reg`` is relative to the mean diagonal, as it was
  then, and its ``'ntk'`` covariance is the gradient-descent (t = inf)
  covariance above, as it was then; ``'ntkgp'`` is available too.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from . import large, solvers
from . import validation
from ._common import (Axes, Gaussian, Layout, as_array, canonical_predict_get,
                      check_diag_reg, check_test_train, check_train,
                      eval_context, from_2d, get_kernel, is_array, is_concrete,
                      kernel_dependencies, pack_get, small_jit, to_2d)

__all__ = ["Gaussian", "gp_inference"]


class _Factors:
  """Lazily computed, cached factorizations of the train-train kernels."""

  def __init__(self, k_train_train, diag_reg, absolute, solver):
    self.k = k_train_train
    self.diag_reg, self.absolute = diag_reg, absolute
    self.solver = solvers.make_solver(solver)
    self._cache = {}

  def matrix(self, g: str):
    return to_2d(get_kernel(self.k, g, "k_train_train"))

  def factor(self, g: str):
    if g not in self._cache:
      # Evaluate now even when called under `jit` of a concrete kernel, so
      # the factor is computed once and reused by later (traced) calls.
      with eval_context():
        self._cache[g] = self.solver.factor(self.matrix(g), self.diag_reg,
                                            self.absolute)
    return self._cache[g]

  def solve(self, g: str, b2d: jax.Array) -> jax.Array:
    return self.factor(g).solve(b2d)

  def factor_solve(self, g: str, b2d: jax.Array, apply=None):
    """``(K^{-1} b, apply @ K^{-1} b or None)``; on the first use of ``g``
    with the default solver, factor and solve are one compiled program."""
    if g not in self._cache and type(self.solver) is solvers.Cholesky:
      with eval_context():
        self._cache[g], x, applied = self.solver.factor_solve(
            self.matrix(g), self.diag_reg, self.absolute, b2d, apply)
      return x, applied
    x = self.solve(g, b2d)
    return x, None if apply is None else apply @ x


def _gp_inference(
    k_train_train,
    y_train: jax.Array,
    diag_reg: float = 0.,
    diag_reg_absolute_scale: bool = False,
    trace_axes: Axes = (-1,),
    *,
    solver: Any = None,
) -> Callable:
  validation.check_finite("gp_inference", y_train=y_train)
  y_train = as_array(y_train)
  layout = Layout(y_train.shape, trace_axes)
  check_diag_reg(diag_reg)
  check_train(k_train_train, y_train, layout)
  factors = _Factors(k_train_train, diag_reg, diag_reg_absolute_scale, solver)
  y2 = layout.flatten(y_train)
  k_inv_y = {}

  def alpha(g):
    if g not in k_inv_y:
      with eval_context():
        k_inv_y[g], _ = factors.factor_solve(g, y2)
    return k_inv_y[g]

  def test_mean(g, k_td):
    """``k_td @ alpha(g)``; the first time, with the factor and the solve in
    one program (a concrete array ``k_td`` only: under an outer trace it is
    a tracer, and the factor must stay a concrete, cached value)."""
    if g not in k_inv_y and isinstance(k_td, jax.Array) and \
        is_concrete(k_td):
      with eval_context():
        k_inv_y[g], out = factors.factor_solve(g, y2, k_td)
      return out
    return k_td @ alpha(g)

  def predict_fn(get=None, k_test_train=None, k_test_test=None):
    """Posterior on the test set (``k_test_train=None``: the train set).

    Args:
      get: ``'nngp'``, ``'ntk'``, ``'ntkgp'``, a tuple of them, or ``None``
        (``('nngp', 'ntk')``).
      k_test_train: test-train kernel (array, Kernel or namedtuple with the
        needed ``nngp``/``ntk``), or ``None`` for train-set predictions,
        which are always ``N(y_train, 0)``.
      k_test_test: test-test kernel (``nngp``; ``ntk`` for ``'ntkgp'``), to
        get covariances; ``None``: means only. With ``k_test_train=None`` any
        non-None value asks for the (zero) train-set covariance.

    Returns:
      For a single name the `Gaussian` (or mean), else a namedtuple
      ``Gaussians`` of them in ``get`` order.
    """
    names, single = canonical_predict_get(get)
    validation.check_finite("gp_inference", k_test_train=k_test_train,
                            k_test_test=k_test_test)
    out = {}
    for g in names:
      kind = "ntk" if g == "ntkgp" else g
      k_dd = get_kernel(k_train_train, kind, "k_train_train")
      if k_test_train is None:
        mean = y_train.astype(k_dd.dtype)
        out[g] = (mean if k_test_test is None else
                  Gaussian(mean, jnp.zeros(k_dd.shape, k_dd.dtype)))
        continue
      test_shape = check_test_train(
          get_kernel(k_test_train, kind, "k_test_train"), layout)
      k_td = to_2d(get_kernel(k_test_train, kind, "k_test_train"))
      if k_test_test is None:
        out[g] = layout.unflatten(test_mean(kind, k_td), test_shape)
        continue
      mean2d, cov = _posterior(g, factors, alpha, k_train_train,
                               k_test_train, k_test_test, k_td)
      out[g] = Gaussian(layout.unflatten(mean2d, test_shape),
                        from_2d(cov, test_shape, test_shape))
    return pack_get(out, get, single)

  return predict_fn


def _posterior(g, factors, alpha, k_train_train, k_test_train,
               k_test_test, k_td):
  """Flat posterior ``(mean (t, c), covariance (t, t))`` on the test set."""
  if g == "ntk" and (is_array(k_train_train) or is_array(k_test_train)):
    raise ValueError(
        "The 'ntk' posterior covariance needs both NTK and NNGP kernels: "
        "pass `k_train_train` and `k_test_train` as Kernels or namedtuples "
        "with `nngp` and `ntk` (got arrays).")
  init = "ntk" if g == "ntkgp" else "nngp"  # the prior (initialization) kernel
  k_tt = to_2d(get_kernel(k_test_test, init, "k_test_test"))
  kind = "ntk" if g == "ntkgp" else g
  k_td_init = (k_td if g != "ntk" else
               to_2d(get_kernel(k_test_train, init, "k_test_train")))
  # alpha first: on a first call it factors and solves in one program.
  alpha_kind = alpha(kind)
  factor = factors.factor(kind)
  if isinstance(factor, solvers.Factor):
    # One compiled program per posterior (mean and covariance): fewer passes
    # over the (n, n) factor and no (n, t) temporaries left to the
    # allocator between eager ops.
    with solvers.precision(factor.dtype):
      cast = lambda x: jnp.asarray(x, factor.dtype)
      # The mean as in the mean-only path (k_td @ cached alpha), so both
      # give the same numbers.
      a = cast(alpha_kind)
      args = (factor.chol, a, k_td, k_tt) if g in ("nngp", "ntkgp") else (
          factor.chol, a, factors.matrix("nngp"), k_td, k_td_init, k_tt)
      if solvers.on_host(*args):
        # Small and concrete: NumPy / SciPy, no program per shape.
        host = _gp_posterior_host if len(args) == 4 else _ntk_posterior_host
        mean, cov = host(*(np.asarray(x, factor.dtype) for x in args))
        return (as_array(mean.astype(factor.out_dtype)),
                as_array(cov.astype(factor.out_dtype)))
      posterior = _gp_posterior if len(args) == 4 else _ntk_posterior
      mean, cov = posterior(*map(cast, args))
      return mean.astype(factor.out_dtype), cov.astype(factor.out_dtype)
  mean = k_td @ alpha_kind
  if g in ("nngp", "ntkgp"):
    # The prior kernel is the one being inverted: K** - K* K^{-1} K*^T.
    explained = k_td @ factors.solve(kind, k_td.T)
    return mean, k_tt - (explained + explained.T) / 2
  return mean, _ntk_cov_terms(factors.solve("ntk", k_td.T),
                              factors.matrix("nngp"), k_td_init, k_tt)


def _ntk_cov_terms(term_1, nngp_dd, k_td_init, k_tt):
  """Lee et al. (2019) eq. 16 from ``term_1 = Theta^{-1} Theta_*^T``.

  ``Theta_* Theta^{-1} K_*^T`` is ``term_1^T K_*^T`` (Theta is symmetric), so
  one solve serves both terms. The computed part is symmetrized (round-off
  in the products), ``k_tt`` is added as given.
  """
  spread = term_1.T @ (nngp_dd @ term_1)
  term_2 = term_1.T @ k_td_init.T
  return k_tt + ((spread + spread.T) / 2 - (term_2 + term_2.T))


def _gp_terms(solve_triangular, chol, alpha, k_td, k_tt):
  """``K* alpha`` and ``K** - K* K^{-1} K*^T``, the latter as ``K** - V^T V``
  with ``V = L^{-1} K*^T``: one triangular solve with the test columns
  instead of two, and an exactly symmetric covariance. ``solve_triangular``:
  JAX's or SciPy's (the host path)."""
  v = solve_triangular(chol, k_td.T, lower=True)
  return k_td @ alpha, k_tt - v.T @ v


def _ntk_terms(cho_solve, chol, alpha, nngp_dd, k_td, k_td_init, k_tt):
  """The NTK posterior's mean and covariance; ``cho_solve(chol, b)``."""
  term_1 = cho_solve(chol, k_td.T)
  return k_td @ alpha, _ntk_cov_terms(term_1, nngp_dd, k_td_init, k_tt)


@small_jit
def _gp_posterior(chol, alpha, k_td, k_tt):
  return _gp_terms(jax.scipy.linalg.solve_triangular, chol, alpha, k_td,
                   k_tt)


@small_jit
def _ntk_posterior(chol, alpha, nngp_dd, k_td, k_td_init, k_tt):
  return _ntk_terms(lambda c, b: jax.scipy.linalg.cho_solve((c, True), b),
                    chol, alpha, nngp_dd, k_td, k_td_init, k_tt)


def _gp_posterior_host(chol, alpha, k_td, k_tt):
  """`_gp_posterior` on NumPy arrays (SciPy's triangular solve)."""
  import scipy.linalg  # a dependency of jax itself
  solve = functools.partial(scipy.linalg.solve_triangular, check_finite=False)
  return _gp_terms(solve, chol, alpha, k_td, k_tt)


def _ntk_posterior_host(chol, alpha, nngp_dd, k_td, k_td_init, k_tt):
  """`_ntk_posterior` on NumPy arrays (SciPy's ``cho_solve``)."""
  return _ntk_terms(solvers.cho_solve_host, chol, alpha, nngp_dd, k_td,
                    k_td_init, k_tt)


def _gp_inference_kernel_fn(
    kernel_fn: Callable,
    x_train: jax.Array,
    y_train: jax.Array,
    x_test: Optional[jax.Array] = None,
    get=None,
    diag_reg: float = 0.,
    compute_cov: bool = False,
    *,
    diag_reg_absolute_scale: bool = False,
    trace_axes: Axes = (-1,),
    solver: Any = None,
    **kernel_fn_kwargs,
):
  """The neural-tangents 0.1/0.2 form: kernels computed from ``kernel_fn``."""
  large_solver = large.resolve(solver)
  if large_solver is not None:
    return large.gp_inference_large(
        kernel_fn, x_train, y_train, x_test, get, diag_reg, compute_cov,
        solver=large_solver, diag_reg_absolute_scale=diag_reg_absolute_scale,
        trace_axes=trace_axes, **kernel_fn_kwargs)
  x_train, y_train = as_array(x_train), as_array(y_train)
  if x_train.shape[0] != y_train.shape[0]:
    raise ValueError(f"`x_train` has {x_train.shape[0]} examples (shape "
                     f"{x_train.shape}) but `y_train` has {y_train.shape[0]} "
                     f"(shape {y_train.shape}).")
  names, _ = canonical_predict_get(get)
  deps = kernel_dependencies(names, compute_cov)
  k_dd = kernel_fn(x_train, None, deps, **kernel_fn_kwargs)
  k_td = k_tt = None
  if x_test is None:
    k_tt = True if compute_cov else None
  else:
    k_td = kernel_fn(x_test, x_train, deps, **kernel_fn_kwargs)
    if compute_cov:
      tt = (("nngp",) if ("nngp" in names or "ntk" in names) else ()) + \
           (("ntk",) if "ntkgp" in names else ())
      k_tt = kernel_fn(x_test, None, tt, **kernel_fn_kwargs)
  predict_fn = _gp_inference(k_dd, y_train, diag_reg, diag_reg_absolute_scale,
                             trace_axes, solver=solver)
  return predict_fn(get, k_td, k_tt)


def gp_inference(*args, **kwargs):
  """Posterior of NNGP / NTK / NTKGP; see the module docstring for both forms.

  Current form::

    predict_fn = gp_inference(k_train_train, y_train, diag_reg=0.,
                              diag_reg_absolute_scale=False,
                              trace_axes=(-1,), *, solver=None)
    predict_fn(get=None, k_test_train=None, k_test_test=None)

  ``k_train_train`` is an array, a `Kernel` or a namedtuple holding the
  ``nngp`` and/or ``ntk`` needed by later calls; ``y_train`` the targets;
  ``diag_reg`` adds ``diag_reg * tr(K) / n`` (or ``diag_reg`` if
  ``diag_reg_absolute_scale``) to the diagonal; ``trace_axes`` are the output
  axes over which the kernel is ``K (x) I``. ``solver`` (additive):
  ``'cholesky'`` (default, `solvers.Cholesky`), ``'cg'`` or a
  `solvers.Cholesky` / `cg.CG` object. Factorizations are cached.

  In the old form ``solver`` may also be a large solver (``'nystrom'``,
  ``'block_cg'``, `Nystrom`, `BlockCG`, ``widenets.scale.DaskCG``): the
  kernels are then never held whole, and ``compute_cov`` gives the
  posterior variances (the diagonal); see `widenets.predict.large`.

  Old form (first argument a ``kernel_fn``)::

    gp_inference(kernel_fn, x_train, y_train, x_test, get, diag_reg=0.,
                 compute_cov=False) -> Gaussian(mean, cov) or mean
  """
  first = args[0] if args else kwargs.get(
      "k_train_train", kwargs.get("kernel_fn"))
  if callable(first) and not is_array(first) and not hasattr(first, "nngp"):
    if "kernel_fn" not in kwargs and not args:
      kwargs["kernel_fn"] = kwargs.pop("k_train_train")
    return _gp_inference_kernel_fn(*args, **kwargs)
  return _gp_inference(*args, **kwargs)


gp_inference.__signature__ = inspect.signature(_gp_inference)
