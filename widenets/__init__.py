"""widenets: infinitely wide neural networks in JAX.

A drop-in successor of neural-tangents: ``import widenets as nt``.
"""
__version__ = "0.1.0"

from . import stax
from . import predict
from .kernel import Kernel
