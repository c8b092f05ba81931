"""The elementwise-activation layer shared by every nonlinearity.

An activation ``phi`` maps a Gaussian pre-activation kernel to
``nngp' = E[phi(u) phi(v)]`` and ``ntk' = ntk * E[phi'(u) phi'(v)]`` where
``(u, v) ~ N(0, [[var1, cov], [cov, var2]])``. Each activation supplies only
that pairwise rule; `covariance.map_pairwise` applies it to every covariance.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from ...kernel import Kernel
from .. import covariance
from ..layer import Requirements, layer

# ``pair_rule(cov, var1, var2, ntk) -> (new_cov, new_ntk)``.
PairRule = Callable


def require_gaussian(name: str, k: Kernel) -> None:
  if not k.is_gaussian:
    what = "the inputs" if k.is_input else "a non-Gaussian layer"
    raise ValueError(
        f"{name}: an activation needs Gaussian pre-activations, but it is "
        f"applied to {what} (shape {tuple(k.shape1)}). Put an affine layer "
        f"(Dense, Conv, ...) before it.")


@layer
def elementwise_layer(fn: Optional[Callable], name: str, pair_rule: PairRule,
                      prepare: Optional[Callable] = None):
  """Builds an activation layer from ``fn`` and its pairwise kernel rule.

  ``prepare(k) -> (k, state)`` may rescale the kernel first and ``state`` is
  passed back to ``pair_rule`` as keyword ``state`` (used for stabilization).
  """
  init_fn = lambda rng, input_shape: (input_shape, ())

  def apply_fn(params, inputs, **kwargs):
    if fn is None:
      raise NotImplementedError(f"{name} has no finite-width apply_fn.")
    return fn(inputs)

  def rule(k: Kernel, **kwargs) -> Kernel:
    require_gaussian(name, k)
    k = covariance.map_pairwise(k, pair_rule)
    return k.replace(is_gaussian=False)

  apply_fn.__name__ = name
  return init_fn, apply_fn, rule, Requirements()


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
  return out, jnp.where(positive, dx / (2 * jnp.where(positive, out, 1.0)),
                        0.0)


@jax.custom_jvp
def safe_arctan2(y, x):
  """``arctan2(y, x)``, ``pi / 2`` at ``(0, 0)`` (the angle of two vectors of
  which one vanishes), with finite derivatives there."""
  return jnp.where((y == 0) & (x == 0), jnp.pi / 2, jnp.arctan2(y, x))


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
  s = safe_sqrt(var1 * var2)
  root = safe_sqrt((s - cov) * (s + cov))
  return root, safe_arctan2(root, cov)
