"""Nonlinearities, grouped by the family of their closed-form kernels."""
from .arccos import ABRelu, Abs, LeakyRelu, Relu, Sign
from .base import elementwise_layer
from .erf import Erf, Sigmoid_like
