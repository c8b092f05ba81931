"""Layers: each returns an ``(init_fn, apply_fn, kernel_fn)`` triple.

``kernel_fn(x1, x2=None, get=None, **kwargs)`` gives the exact infinite-width
NNGP and NTK of the network that ``init_fn``/``apply_fn`` describe.

Where each layer lives (``stax/``)::

  Layer                                           File
  ----------------------------------------------  -------------------------
  Dense                                           dense.py
  Conv, ConvLocal, ConvTranspose                  conv.py
  AvgPool, SumPool, GlobalAvgPool,                pooling.py
  GlobalSumPool, Flatten
  MaxPool                                         maxpool.py
  LayerNorm                                       normalization.py
  Dropout                                         dropout.py
  Identity, Index, Slice                          indexing.py
  ImageResize                                     resize.py
  GlobalSelfAttention, PositionalEmbedding,       attention.py
  AttentionMechanism
  Aggregate, DotGeneral                           graph.py
  FanOut, FanInSum, FanInProd, FanInConcat        branching.py
  serial, parallel, repeat                        combinators.py
  MaskedArray, unmask_fn                          masking.py
  Padding                                         stencil.py
  layer (the decorator)                           layer.py
  Requirements (the layout algebra)               requirements.py
  KernelFn (the public kernel_fn call)            kernel_fn.py
  KernelOverflowError (overflow flags)            overflow.py
  serial's runs of identical layers as loops      runs.py
  argument validation of every layer              validation.py
  Relu, ABRelu, LeakyRelu, Abs, Sign              activations/arccos.py
  Erf, Sigmoid_like                               activations/erf.py
  Exp, ExpNormalized, Gaussian, Gabor             activations/exp.py
  Gelu                                            activations/gelu.py
  Polynomial, Monomial, Hermite,                  activations/polynomial.py
  RectifiedMonomial
  Tanh, Softplus, Silu, Swish, Mish               activations/smooth.py
  Sin, Cos, Rbf                                   activations/trig.py
  Elementwise, ElementwiseNumerical               activations/custom.py

Shared kernel primitives: ``covariance.py`` (pairwise maps over covariance
blocks), ``inputs.py`` (the `Kernel` of raw inputs), ``packing.py``
(``x2=None`` as upper-triangle blocks: pad/pack and unpack/trim),
``chunking.py`` (row blocks of large inputs), ``stencil.py``
(windows and padding), ``activations/base.py`` (the elementwise layer
constructor), ``activations/quadrature.py`` and ``activations/atan2.py``
(numerical helpers of the activation families).
"""
from .activations import (ABRelu, Abs, Cos, Elementwise, ElementwiseNumerical,
                          Erf, Exp, ExpNormalized, Gabor, Gaussian, Gelu,
                          Hermite, LeakyRelu, Mish, Monomial, Polynomial, Rbf,
                          RectifiedMonomial, Relu, Sigmoid_like, Sign, Silu,
                          Sin, Softplus, Swish, Tanh)
from .attention import (AttentionMechanism, GlobalSelfAttention,
                        PositionalEmbedding)
from .branching import FanInConcat, FanInProd, FanInSum, FanOut
from .combinators import parallel, repeat, serial
from .conv import Conv, ConvLocal, ConvTranspose
from .custom import Bool, Diagonal, requires, supports_masking
from .dense import Dense
from .dropout import Dropout
from .graph import Aggregate, AggregateImplementation, DotGeneral
from .indexing import Identity, Index, Slice
from .kernel_fn import KernelFn
from .layer import layer
from .masking import MaskedArray, unmask_fn
from .maxpool import MaxPool
from .normalization import LayerNorm
from .overflow import KernelOverflowError
from .pooling import (AvgPool, Flatten, GlobalAvgPool, GlobalSumPool,
                      SumPool)
from .requirements import Requirements
from .resize import ImageResize
from .stencil import Padding
