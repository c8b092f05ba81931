"""Finite-width (empirical) kernels of any JAX function ``f(params, x)``.

* `empirical_nngp_fn`, `empirical_ntk_fn`, `empirical_kernel_fn`
  (`kernel.py`): one draw of ``f(x1) f(x2)^T`` / ``J(x1) J(x2)^T``.
* The NTK methods (`NtkImplementation`, registered in `methods.py`):
  Jacobian contraction (`jacobian.py`), NTK-vector products (`ntk_vp.py`),
  structured derivatives (`structured.py`, `structured_rules.py`, over the
  jaxpr interpreter `jaxpr_eval.py`) and AUTO (`auto.py`).
* `empirical_ntk_vp_fn` (`ntk_vp.py`); `linearize`, `taylor_expand`
  (`taylor.py`).
"""
from ._common import DEFAULT_NTK_IMPLEMENTATION, NtkImplementation
from .kernel import empirical_kernel_fn, empirical_nngp_fn, empirical_ntk_fn
from .ntk_vp import empirical_ntk_vp_fn
from .taylor import linearize, taylor_expand

__all__ = ["NtkImplementation", "DEFAULT_NTK_IMPLEMENTATION",
           "empirical_kernel_fn", "empirical_nngp_fn", "empirical_ntk_fn",
           "empirical_ntk_vp_fn", "linearize", "taylor_expand"]
