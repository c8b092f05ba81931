"""The elementwise-activation layer shared by every nonlinearity.

An activation ``phi`` maps a Gaussian pre-activation kernel to
``nngp' = E[phi(u) phi(v)]`` and ``ntk' = ntk * E[phi'(u) phi'(v)]`` where
``(u, v) ~ N(0, [[var1, cov], [cov, var2]])``. Each activation supplies only
that pairwise rule; `covariance.map_pairwise` applies it to every covariance.

Hyperparameters: a rule computes what it derives from its layer's
hyperparameters (``b**2``, slopes, ``cos(2 c)``) inside ``pair_rule``, never
when the layer is built. A network call runs with the hyperparameters as
traced values (`sharing`), equal values as one tracer; a value derived at
build time would be a new tracer in every layer, so equal layers would no
longer compare equal and a deep network would not run as one loop (`runs`;
tests/robustness/test_deep_serial.py checks every such activation).
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from ...kernel import Kernel
from .. import covariance, lax_ops
from ..layer import make_layer
from ..overflow import FlagRecorder, KernelOverflowError
from ..requirements import Requirements
from .atan2 import atan2

# ``pair_rule(cov, var1, var2, ntk) -> (new_cov, new_ntk)``.
PairRule = Callable


def require_gaussian(name: str, k: Kernel) -> None:
  if not k.is_gaussian:
    what = "the inputs" if k.is_input else "a non-Gaussian layer"
    raise ValueError(
        f"{name}: an activation needs Gaussian pre-activations, but it is "
        f"applied to {what} (shape {tuple(k.shape1)}). Put an affine layer "
        f"(Dense, Conv, ...) before it.")


def check_callable(name: str, arg: str, value, optional: bool = False) -> None:
  """A clear error for a non-callable function argument."""
  if value is None and optional:
    return
  if not callable(value):
    raise TypeError(
        f"{name}: {arg} must be a callable (a function of arrays); got "
        f"{type(value).__name__} {value!r}.")


def check_overflow(name: str, k: Kernel, flags: FlagRecorder) -> None:
  """Flags this layer's output for `KernelOverflowError` if not finite.

  Checks only ``cov1``/``cov2`` (by Cauchy-Schwarz the largest NNGP entries,
  so they overflow first; O(N) work). An NTK that outgrows a bounded NNGP
  (e.g. Erf with large W_std) is caught by the final output check of
  `KernelFn`.
  """
  flags.record_finite(name, k.cov1, k.cov2)


def elementwise_layer(fn: Optional[Callable], name: str, pair_rule: PairRule,
                      prepare: Optional[Callable] = None,
                      may_overflow: bool = False):
  """Builds an activation layer from ``fn`` and its pairwise kernel rule.

  Args:
    fn: the elementwise function for ``apply_fn`` (``None``: the layer has no
      finite-width counterpart and ``apply_fn`` raises).
    name: the layer name used in error messages.
    pair_rule: ``(cov, var1, var2, ntk) -> (new_cov, new_ntk)``, applied by
      `covariance.map_pairwise` to every covariance entry (``ntk`` is
      ``None`` for ``cov1``/``cov2`` and when the NTK is not asked for).
    prepare: optional ``k -> (k, finish)``, run before the rule; ``finish``
      maps the output kernel back (used to rescale by a homogeneity factor).
    may_overflow: the rule is unbounded (ReLU family, Exp, polynomials): in
      float32, a non-finite output raises `KernelOverflowError` telling the
      user to enable float64, instead of returning inf/NaN.

  Returns:
    ``(init_fn, apply_fn, kernel_fn)``.
  """
  init_fn = lambda rng, input_shape: (input_shape, ())

  def apply_fn(params, inputs, **kwargs):
    if fn is None:
      raise NotImplementedError(f"{name} has no finite-width apply_fn.")
    return fn(inputs)

  def rule(k: Kernel, flags: FlagRecorder, **kwargs) -> Kernel:
    require_gaussian(name, k)
    finish = None
    if prepare is not None:
      k, finish = prepare(k)
    k = covariance.map_pairwise(k, pair_rule)
    if finish is not None:
      k = finish(k)
    if may_overflow:
      check_overflow(name, k, flags)
    return k.replace(is_gaussian=False)

  return make_layer(name, init_fn, apply_fn, rule, Requirements(),
                    records_flags=True)


def homogeneous_rescale(k: Kernel):
  """``prepare`` for a rule that is 1-homogeneous in the covariances:
  divides them by their largest magnitude and multiplies back after, which
  keeps very deep networks from overflowing in float32 (``do_stabilize``)."""
  factor = jnp.maximum(jnp.max(jnp.abs(k.nngp)), 1e-12)
  scale = lambda kk, c: kk.replace(
      nngp=kk.nngp * c, cov1=kk.cov1 * c,
      cov2=None if kk.cov2 is None else kk.cov2 * c)
  return scale(k, 1 / factor), lambda kk: scale(kk, factor)


def correlation(cov, var1, var2):
  """``(rho, s)``: ``rho = cov / s`` clipped into ``[-1, 1]`` with ``s =
  sqrt(var1 var2)``; ``rho = 0`` where a variance vanishes (then ``cov``
  does too)."""
  s = safe_sqrt(var1 * var2)
  positive = s > 0
  rho = lax_ops.select(positive, cov / lax_ops.select(positive, s, 1.0), 0.0)
  return lax_ops.clip(rho, -1.0, 1.0), s


# --- numerically safe primitives -------------------------------------------

@jax.custom_jvp
def safe_sqrt(x):
  """``sqrt(max(x, 0))`` with a zero (not infinite) derivative at 0."""
  return jnp.sqrt(jnp.maximum(x, 0.0))


@safe_sqrt.defjvp
def _safe_sqrt_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  out = safe_sqrt(x)
  positive = x > 1e-30
  return out, lax_ops.select(
      positive, dx / (2 * lax_ops.select(positive, out, 1.0)), 0.0)


@jax.custom_jvp
def safe_arctan2(y, x):
  """``arctan2(y, x)``, ``pi / 2`` at ``(0, 0)`` (the angle of two vectors of
  which one vanishes), with finite derivatives there."""
  return lax_ops.select((y == 0) & (x == 0), jnp.pi / 2, atan2(y, x))


@safe_arctan2.defjvp
def _safe_arctan2_jvp(primals, tangents):
  (y, x), (dy, dx) = primals, tangents
  denom = jnp.maximum(x**2 + y**2, 1e-30)
  return safe_arctan2(y, x), (dy * x - dx * y) / denom


def sine_and_angle(cov, var1, var2):
  """``(sqrt(var1 var2 - cov**2), theta)`` with ``cos theta = cov /
  sqrt(var1 var2)``.

  The square root is formed as ``(s - cov)(s + cov)``, ``s = sqrt(var1
  var2)``: exactly zero when ``cov == var1 == var2`` (``sqrt(fl(c * c)) == c``
  in IEEE arithmetic), where the textbook ``var1 var2 - cov**2`` leaves an
  FMA round-off whose square root is ``sqrt(eps)``.
  """
  root = safe_sqrt(sine_squared(cov, var1, var2))
  return root, safe_arctan2(root, cov)


def sine_squared(cov, var1, var2):
  """``var1 var2 - cov**2`` as ``(s - cov)(s + cov)`` (see `sine_and_angle`).

  Smooth where its square root is not (at ``|cov| = sqrt(var1 var2)``): rules
  that need only the square use this, so that their second derivatives in
  the inputs are exact at x1 == x2.
  """
  s = safe_sqrt(var1 * var2)
  # A gap of a few ulps is round-off of an exact +-1 correlation (see
  # `covariance.snap_unit_gaps`).
  minus, plus = covariance.snap_unit_gaps(cov, s)
  return minus * plus
