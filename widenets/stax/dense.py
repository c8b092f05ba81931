"""`Dense`, and the affine covariance rule every affine layer shares."""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from ..kernel import Kernel
from . import covariance, draws, validation
from .layer import layer
from .requirements import Requirements
from .sharing import hyperparameters


def affine(mat, W_std: float, b_std: Optional[float]):
  """Covariance of ``W x + b`` given covariance ``mat`` of ``x`` (mean over
  channels): ``W_std**2 * mat + b_std**2``."""
  if mat is None:
    return mat
  b_var = 0.0 if b_std is None else b_std**2
  return W_std**2 * mat + b_var


def affine_kernel(k: Kernel, W_std: float, b_std: Optional[float],
                  parameterization: str, input_width: float) -> Kernel:
  """The kernel after an affine layer (Dense, or Conv once the covariances
  were summed over the filter).

  NTK parameterization: ``ntk' = nngp' + W_std**2 ntk``. Standard:
  ``ntk' = input_width * nngp + W_std**2 ntk (+ 1 with a bias)``, because
  there the weights, not the activations, carry the ``1/sqrt(width)``.
  """
  ntk = k.ntk
  if parameterization == "ntk":
    k = covariance.map_all(k, lambda m: affine(m, W_std, b_std), ntk=False)
    if ntk is not None:
      ntk = k.nngp + W_std**2 * ntk
  elif parameterization == "standard":
    if ntk is not None:
      ntk = input_width * k.nngp + W_std**2 * ntk
      if b_std is not None:
        ntk = ntk + 1.0
    k = covariance.map_all(k, lambda m: affine(m, W_std, b_std), ntk=False)
  else:
    raise ValueError(f"parameterization must be 'ntk' or 'standard'; got "
                     f"{parameterization!r}.")
  return k.replace(ntk=ntk, is_gaussian=True, is_input=False)


def check_parameterization(parameterization: str, s) -> str:
  p = parameterization.lower()
  if p not in ("ntk", "standard"):
    raise ValueError(f"parameterization must be 'ntk' or 'standard'; got "
                     f"{parameterization!r}.")
  if len(tuple(s)) != 2:
    raise ValueError(f"s must be a pair (s_in, s_out); got {s!r}.")
  return p


@hyperparameters("W_std", "b_std")
@layer
def Dense(out_dim: int, W_std: float = 1.0, b_std: Optional[float] = None,
          batch_axis: int = 0, channel_axis: int = -1,
          parameterization: str = "ntk", s: tuple = (1, 1)):
  r"""Fully connected layer ``z = W_std / sqrt(n_in) * x W + b_std * b``.

  Args:
    out_dim: output channels (ignored by ``kernel_fn`` under ``'ntk'``).
    W_std: weight standard deviation :math:`\sigma_W`.
    b_std: bias standard deviation :math:`\sigma_b`; ``None``: no bias.
    batch_axis, channel_axis: axes of the inputs.
    parameterization: ``'ntk'`` (weights ~ N(0, 1), scaled in the forward
      pass) or ``'standard'`` (weights ~ N(0, W_std**2 / n_in), output width
      ``s[1] * out_dim``, inputs of width ``s[0] * n_in``).
    s: width scalings for ``'standard'``.

  Kernel: ``nngp' = W_std**2 nngp + b_std**2`` (covariances averaged over
  the input channels); see `affine_kernel` for the NTK.

  Params: ``(W, b)`` with ``W`` of shape ``(n_in, out_dim)`` and ``b`` of
  shape ``(1, ..., out_dim, ..., 1)`` (or ``None``).
  """
  validation.known_parameterization("Dense", parameterization)
  parameterization = check_parameterization(parameterization, s)
  validation.positive_int("Dense", "out_dim", out_dim)
  validation.finite_float("Dense", "W_std", W_std)
  validation.finite_float("Dense", "b_std", b_std, allow_none=True)
  validation.positive_floats("Dense", "s", s)

  width = out_dim if parameterization == "ntk" else out_dim * s[1]

  def output_shape(input_shape):
    ndim = len(input_shape)
    if ndim < 2:
      raise ValueError(f"Dense: input must have at least 2 axes (batch, "
                       f"features); got input_shape {tuple(input_shape)}.")
    ca = channel_axis % ndim
    return tuple(input_shape[:ca]) + (width,) + tuple(input_shape[ca + 1:])

  def init_fn(rng, input_shape):
    out_shape = output_shape(input_shape)
    ndim = len(input_shape)
    ca = channel_axis % ndim
    k1, k2 = jax.random.split(rng)
    W = draws.normal(k1, (input_shape[ca], width))
    b = None
    if b_std is not None:
      b_shape = [1] * ndim
      b_shape[ca] = width
      b = draws.normal(k2, tuple(b_shape))
    if parameterization == "standard":
      W = W * W_std / (input_shape[ca] / s[0]) ** 0.5
      b = None if b is None else b * b_std
    return out_shape, (W, b)

  init_fn.output_shape = output_shape  # see `kernel_fn.output_shape`

  def apply_fn(params, inputs, **kwargs):
    W, b = params
    if inputs.shape[channel_axis] != W.shape[0]:
      raise ValueError(
          f"Dense: inputs have {inputs.shape[channel_axis]} features on axis "
          f"{channel_axis} (shape {tuple(inputs.shape)}) but the weights "
          f"expect {W.shape[0]}.")
    out = jnp.moveaxis(jnp.tensordot(inputs, W, (channel_axis, 0)), -1,
                       channel_axis)
    if parameterization == "ntk":
      out = W_std / inputs.shape[channel_axis] ** 0.5 * out
      if b is not None:
        out = out + b_std * b
    else:
      out = out / s[0] ** 0.5
      if b is not None:
        out = out + b
    return out

  def rule(k: Kernel, **kwargs) -> Kernel:
    # On inputs with spatial axes Dense acts on the channel axis at every
    # position (a 1x1 convolution), as in neural-tangents.
    input_width = k.shape1[k.channel_axis] / s[0]
    return affine_kernel(k, W_std, b_std, parameterization, input_width)

  return init_fn, apply_fn, rule, Requirements(
      batch_axis=batch_axis, channel_axis=channel_axis)
