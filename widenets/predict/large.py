"""One entry point for large training sets: ``solver=`` in the kernel_fn forms.

``gp_inference(kernel_fn, x_train, y_train, x_test, get, diag_reg,
compute_cov, solver=S)`` and ``gradient_descent_mse_ensemble(kernel_fn,
x_train, y_train, ..., solver=S)(t=None, x_test, get, compute_cov)`` with a
*large solver* ``S`` never form the ``(n, n)`` training kernel or the
``(t, n)`` test kernel as one array:

* `BlockCG` (``'block_cg'``): exact; kernel blocks in a resumable zarr store
  (or memory), preconditioned CG with checkpoints (widenets.predict.block_cg);
* `Nystrom` (``'nystrom'``): ``m`` centres, Falkon-style preconditioned CG
  (widenets.predict.nystrom);
* ``widenets.scale.DaskCG``: exact CG whose products run on a Dask cluster
  where the kernel blocks live (widenets.scale.dask_cg).

With ``compute_cov=True`` the result is ``Gaussian(mean, covariance)`` whose
``covariance`` is the *diagonal* of the posterior covariance, shape
``(t,)`` (the full ``(t, t)`` matrix is what large ``t`` cannot afford), for
``'nngp'`` and ``'ntkgp'``. Kernels must be flat ``(n1, n2)`` (outputs
traced over every axis but the batch axis).
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Optional

import jax.numpy as jnp
import numpy as np

from ._common import (Gaussian, Layout, canonical_predict_get, check_diag_reg,
                      pack_get)
from . import validation

__all__ = ["is_large_solver", "resolve", "gp_inference_large",
           "ensemble_large"]

# Modules and classes of the solvers named by strings, imported when named:
# their stores and block machinery cost ~0.05 s at `import widenets`.
_NAMES = {"block_cg": ("block_cg", "BlockCG"),
          "blockcg": ("block_cg", "BlockCG"),
          "nystrom": ("nystrom", "Nystrom")}


def is_large_solver(solver) -> bool:
  return bool(getattr(solver, "large_solver", False))


def resolve(solver) -> Optional[Any]:
  """The large solver ``solver`` names or is, else None."""
  if isinstance(solver, str) and solver.lower() in _NAMES:
    module, name = _NAMES[solver.lower()]
    return getattr(importlib.import_module(f"{__package__}.{module}"),
                   name)()
  return solver if is_large_solver(solver) else None


def _kinds(names, compute_cov: bool, where: str) -> tuple:
  if compute_cov and "ntk" in names:
    raise ValueError(
        f"{where}: the 'ntk' posterior covariance (which needs the NNGP and "
        f"NTK kernels and their products) is not available with a large "
        f"solver; use get='ntkgp' or 'nngp' for variances, compute_cov=False "
        f"for 'ntk' means, or solver='cholesky'.")
  return tuple(k for k, used in (("nngp", "nngp" in names),
                                 ("ntk", "ntk" in names or "ntkgp" in names))
               if used)


class _Inference:
  """Fitted large-solver models by kernel kind, and predictions from them."""

  def __init__(self, kernel_fn, x_train, y_train, diag_reg, absolute,
               trace_axes, solver, kwargs, where):
    self.x_train = np.asarray(x_train)
    self.y_train = np.asarray(y_train)
    n = self.x_train.shape[0]
    if self.y_train.shape[0] != n:
      raise ValueError(f"{where}: `x_train` has {n} examples (shape "
                       f"{self.x_train.shape}) but `y_train` has "
                       f"{self.y_train.shape[0]} (shape "
                       f"{self.y_train.shape}).")
    check_diag_reg(diag_reg)
    validation.check_finite(where, x_train=self.x_train, y_train=self.y_train)
    self.layout = Layout(self.y_train.shape, trace_axes)
    if self.layout.kernel_shape != (n,):
      raise ValueError(
          f"{where}: large solvers need targets whose only non-traced axis is "
          f"the batch axis (a flat (n, n) kernel); got y_train of shape "
          f"{self.y_train.shape} with trace_axes={trace_axes}.")
    self.y2 = np.asarray(self.layout.flatten(self.y_train))
    self.args = (kernel_fn, diag_reg, absolute, kwargs)
    self.solver, self.where = solver, where
    self.models: dict = {}
    self.dtype = np.result_type(self.x_train.dtype, np.float32) \
        if self.x_train.dtype.kind == "f" else np.float32

  def fit(self, kinds) -> None:
    missing = tuple(k for k in kinds if k not in self.models)
    if missing:
      kernel_fn, diag_reg, absolute, kwargs = self.args
      self.models.update(self.solver.fit(kernel_fn, self.x_train, self.y2,
                                         missing, diag_reg, absolute, kwargs))

  def predict(self, get, x_test, compute_cov: bool):
    names, single = canonical_predict_get(get)
    self.fit(_kinds(names, compute_cov, self.where))
    out = {}
    for g in names:
      model = self.models["ntk" if g == "ntkgp" else g]
      if x_test is None:
        mean = jnp.asarray(self.y_train, self.dtype)
        var = jnp.zeros((self.x_train.shape[0],), self.dtype)
      else:
        xt = np.asarray(x_test)
        mean = self.layout.unflatten(
            jnp.asarray(model.mean(xt), self.dtype), (xt.shape[0],))
        var = jnp.asarray(model.variance(xt), self.dtype) if compute_cov \
            else None
      out[g] = mean if not compute_cov else _gaussian(mean, var)
    return pack_get(out, get, single)


def _gaussian(mean, var):
  return Gaussian(mean, var)


def gp_inference_large(kernel_fn: Callable, x_train, y_train, x_test=None,
                       get=None, diag_reg: float = 0.,
                       compute_cov: bool = False, *, solver,
                       diag_reg_absolute_scale: bool = False,
                       trace_axes=(-1,), **kernel_fn_kwargs):
  """`gp_inference`'s kernel_fn form with a large solver (module doc).

  Returns the mean ``(t, c)`` (or ``Gaussian(mean, variances (t,))`` with
  ``compute_cov``), or a namedtuple of those for a tuple ``get``.
  """
  inf = _Inference(kernel_fn, x_train, y_train, diag_reg,
                   diag_reg_absolute_scale, trace_axes, solver,
                   kernel_fn_kwargs, "gp_inference")
  return inf.predict(get, x_test, compute_cov)


def ensemble_large(kernel_fn: Callable, x_train, y_train, diag_reg,
                   diag_reg_absolute_scale, trace_axes, solver,
                   kernel_fn_kwargs) -> Callable:
  """`gradient_descent_mse_ensemble` at ``t = inf`` with a large solver."""
  inf = _Inference(kernel_fn, x_train, y_train, diag_reg,
                   diag_reg_absolute_scale, trace_axes, solver,
                   kernel_fn_kwargs, "gradient_descent_mse_ensemble")

  def predict_fn(t=None, x_test=None, get=None, compute_cov: bool = False,
                 **kernel_fn_test_test_kwargs):
    """Mean [and variances] at ``t = inf`` (``None``) on ``x_test``."""
    if t is not None and not (np.ndim(t) == 0 and np.isinf(float(t))):
      raise ValueError(f"gradient_descent_mse_ensemble: a large solver "
                       f"({type(solver).__name__}) predicts at t=None (= inf) "
                       f"only; got t={t!r}. Use solver='cholesky' for finite "
                       f"times.")
    if kernel_fn_test_test_kwargs:
      raise ValueError(f"gradient_descent_mse_ensemble: test-test kwargs "
                       f"{sorted(kernel_fn_test_test_kwargs)} are not "
                       f"supported with a large solver.")
    canonical_predict_get(get, ("nngp", "ntk"))
    return inf.predict(get, x_test, compute_cov)

  return predict_fn
