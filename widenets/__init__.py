"""widenets: infinitely wide neural networks in JAX.

A drop-in successor of neural-tangents: ``import widenets as nt``.
"""
__version__ = "0.1.0"

from . import memory
from . import stax
from . import predict
from .kernel import Kernel
from .stax import KernelOverflowError
from .empirical import (NtkImplementation, empirical_kernel_fn,
                        empirical_nngp_fn, empirical_ntk_fn,
                        empirical_ntk_vp_fn, linearize, taylor_expand)
from .monte_carlo import monte_carlo_kernel_fn
from .batching import batch
from .hyperparameters import fit_hyperparameters
