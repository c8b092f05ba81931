"""Nonlinearities, grouped by the family of their closed-form kernels."""
from .arccos import ABRelu, Abs, LeakyRelu, Relu, Sign
from .base import elementwise_layer
from .custom import Elementwise, ElementwiseNumerical
from .erf import Erf, Sigmoid_like
from .exp import Exp, ExpNormalized, Gabor, Gaussian
from .gelu import Gelu
from .polynomial import Hermite, Monomial, Polynomial, RectifiedMonomial
from .smooth import Mish, Silu, Softplus, Swish, Tanh
from .trig import Cos, Rbf, Sin
