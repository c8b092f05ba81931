"""Predictions from kernels: GP inference, gradient flow, ODE training, solvers.

Names as neural-tangents 0.6.5's ``nt.predict``: `gradient_descent_mse`,
`gradient_descent`, `gradient_descent_mse_ensemble`, `gp_inference`,
`max_learning_rate`, `ODEState`, `Gaussian`. Additive: solver objects
(`Cholesky`, `CG`), `KernelBlocks` for matrix-free kernels, `cg_solve`,
`check_psd`, `odeint`; large-n solvers
`BlockCG`, `Nystrom` (see `widenets.predict.large`). See docs/predict.md.
"""
import importlib

from .cg import CG, CGInfo, KernelBlocks, cg_solve
from .gp import Gaussian, gp_inference
from .gradient_flow import gradient_descent_mse, gradient_descent_mse_ensemble
from .ode import ODEState, gradient_descent, max_learning_rate
from .odeint import odeint
from .solvers import Cholesky, PSDReport, check_psd

__all__ = ["gradient_descent_mse", "gradient_descent",
           "gradient_descent_mse_ensemble", "gp_inference",
           "max_learning_rate", "ODEState", "Gaussian", "Cholesky", "CG",
           "CGInfo", "KernelBlocks", "cg_solve", "check_psd", "PSDReport",
           "odeint", "BlockCG", "Nystrom"]

from .evidence import leave_one_out_log_likelihood, log_marginal_likelihood

__all__ += ["log_marginal_likelihood", "leave_one_out_log_likelihood"]


# The large-n solvers load their stores and block machinery on first use.
_LAZY = {"BlockCG": "block_cg", "Nystrom": "nystrom"}


def __getattr__(name: str):
  if name in _LAZY:
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_LAZY))
