"""widenets: infinitely wide neural networks in JAX.

A drop-in successor of neural-tangents: ``import widenets as nt``.
"""
__version__ = "0.1.0"

import importlib

from . import memory
from . import stax
from . import predict
from .kernel import Kernel
from .stax import KernelOverflowError

# Imported on first use (PEP 562): most programs need only `stax` and
# `predict`, and these cost ~0.2 s more at `import widenets`.
_LAZY = {
    "NtkImplementation": "empirical", "empirical_kernel_fn": "empirical",
    "empirical_nngp_fn": "empirical", "empirical_ntk_fn": "empirical",
    "empirical_ntk_vp_fn": "empirical", "linearize": "empirical",
    "taylor_expand": "empirical",
    "monte_carlo_kernel_fn": "monte_carlo",
    "batch": "batching",
    "fit_hyperparameters": "hyperparameters",
}
_SUBMODULES = frozenset(_LAZY.values())


def __getattr__(name: str):
  if name in _SUBMODULES:
    return importlib.import_module(f"{__name__}.{name}")
  if name in _LAZY:
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)
