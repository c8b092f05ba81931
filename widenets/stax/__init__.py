"""Layers: each returns an ``(init_fn, apply_fn, kernel_fn)`` triple.

``kernel_fn(x1, x2=None, get=None, **kwargs)`` gives the exact infinite-width
NNGP and NTK of the network that ``init_fn``/``apply_fn`` describe.
"""
from .activations import (ABRelu, Abs, Cos, Elementwise, ElementwiseNumerical,
                          Erf, Exp, ExpNormalized, Gabor, Gaussian, Gelu,
                          Hermite, LeakyRelu, MaxPool, Mish, Monomial,
                          Polynomial, Rbf, RectifiedMonomial, Relu,
                          Sigmoid_like, Sign, Silu, Sin, Softplus, Swish, Tanh)
from .attention import (AttentionMechanism, GlobalSelfAttention,
                        PositionalEmbedding)
from .branching import FanInConcat, FanInProd, FanInSum, FanOut
from .combinators import parallel, repeat, serial
from .conv import Conv, ConvLocal, ConvTranspose
from .custom import Bool, Diagonal, requires, supports_masking
from .dense import Dense
from .graph import Aggregate, AggregateImplementation, DotGeneral
from .layer import KernelFn, Requirements, layer
from .masking import MaskedArray, unmask_fn
from .pooling import (AvgPool, Flatten, GlobalAvgPool, GlobalSumPool,
                      SumPool)
from .stencil import Padding
from .structural import (Dropout, Identity, ImageResize, Index, LayerNorm,
                         Slice)
