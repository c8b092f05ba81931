"""Smooth activations without a closed-form kernel: `Tanh`, `Softplus`,
`Silu` (Swish), `Mish` — kernels by Gauss-Hermite quadrature (`quadrature`),
except `Tanh`, which by default uses an accurate erf-mixture closed form.

Accuracy. The quadrature is exact for polynomials and converges
geometrically for these analytic functions, but its rate depends on the
pre-activation variance ``var``: these functions bend at ``|x| ~ 1``, and
for ``var >> 1`` they look kinked on the Gaussian's scale. Measured maximum
relative errors of the NNGP / NTK factor (float64, against 300-point
quadrature, correlations in ``[-1, 1]``), default ``deg=40``:

  ==========  ===============  ===============  ===============
  variance    0.1              1                4
  ==========  ===============  ===============  ===============
  Tanh        1e-15 / 1e-15    1e-6 / 2e-5      2e-3 / 3e-2
  Softplus    1e-15 / 1e-15    1e-15 / 1e-13    6e-9 / 3e-7
  Silu        1e-15 / 1e-15    5e-13 / 9e-12    5e-7 / 1e-5
  Mish        1e-15 / 1e-15    1e-10 / 3e-9     1e-5 / 3e-4
  ==========  ===============  ===============  ===============

At ``var = 25`` the NNGP is within ~1e-3 (Softplus, Silu, Mish) but the NTK
factor only ~2-5e-2: raise ``deg`` (cost ``deg**2``) or keep pre-activation
variances moderate (e.g. ``W_std`` ~1-2 with normalized inputs). ``Tanh`` by
quadrature is worse still (5e-2 / 0.7 at ``var = 25``), so by default it uses
a closed form instead: an erf mixture accurate to ~1e-5 at every variance
(`erf_mixture_rule`). See docs/activations.md.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from .atan2 import atan2
from .base import elementwise_layer
from .quadrature import gauss_hermite, quadrature_rule

DEFAULT_DEG = 40


def _numerical(name: str, fn, df, deg: int):
  try:
    gauss_hermite(deg)
  except ValueError as e:
    raise ValueError(f"{name}: {e}") from None
  return elementwise_layer(fn, f"{name}(deg={deg})",
                           quadrature_rule(fn, df, deg))


# tanh(x) ~ sum_k A_k erf(B_k x): least-squares fit of tanh and tanh' on
# [0, 30] (odd functions; sum A_k = 1 so the limits agree). Max error over
# the real line: 2.5e-6 (tanh) and 6.2e-6 (tanh').
TANH_ERF_A = (0.030835125370589883, 0.23652257673239066, 0.4323875373392686,
              0.26468156687158667, 0.03557316667517018)
TANH_ERF_B = (0.42373630016055985, 0.6004897252559546, 0.8419728206656453,
              1.1689468980433557, 1.6211346506447815)


def erf_mixture_rule(weights, scales):
  """Kernel of ``sum_k a_k erf(b_k x)``: every pair ``(k, l)`` has the
  closed form of `erf`, ``E[erf(b_k u) erf(b_l v)] = (2 / pi) arcsin(2 b_k
  b_l cov / sqrt((1 + 2 b_k**2 var1)(1 + 2 b_l**2 var2)))``, and its NTK
  factor ``(4 / pi) b_k b_l / sqrt((1 + 2 b_k**2 var1)(1 + 2 b_l**2 var2) -
  4 b_k**2 b_l**2 cov**2)`` (the square root is ``>= 1``).

  The pairs are the steps of a `jax.lax.scan` that accumulates both sums:
  one copy of the pair formula in the traced program rather than one per
  pair, which keeps compilation (above all of derivatives) close to
  `Erf`'s; each step is one fused pass over the covariance.
  """
  weights = np.asarray(weights, np.float64)
  scales = np.asarray(scales, np.float64)
  n = len(weights)
  pairs = np.stack([np.outer(weights, weights).ravel(),   # a_k a_l
                    np.repeat(scales, n),                  # b_k
                    np.tile(scales, n)], 1)                # b_l

  def pair_rule(cov, var1, var2, ntk):
    def step(sums, pair):
      a, b1, b2 = pair[0], pair[1], pair[2]
      bb = b1 * b2
      prod = (1 + 2 * b1**2 * var1) * (1 + 2 * b2**2 * var2)
      root = jnp.sqrt(jnp.maximum(prod - 4 * (bb * cov)**2, 1.0))
      new = sums[0] + a * atan2(2 * bb * cov, root)
      dot = None if ntk is None else sums[1] + (a * bb) / root
      return (new, dot), None

    zero = jnp.zeros(jnp.broadcast_shapes(jnp.shape(cov), jnp.shape(var1),
                                          jnp.shape(var2)), cov.dtype)
    (new, dot), _ = jax.lax.scan(
        step, (zero, None if ntk is None else zero),
        jnp.asarray(pairs, cov.dtype))
    new = new * (2 / jnp.pi)
    return new, (None if ntk is None else ntk * dot * (4 / jnp.pi))

  return pair_rule


def Tanh(deg: Optional[int] = None):
  """``tanh(x)``.

  Default (``deg=None``): the kernel of ``tanh``'s best 5-term erf mixture,
  in closed form — within 3e-6 (NNGP) and 1e-5 (NTK factor) in absolute
  terms at ANY pre-activation variance, at the cost of 25 `Erf` kernels.
  With ``deg``: ``deg x deg`` Gauss-Hermite quadrature (see the table above;
  poor for variances >~ 4).
  """
  if deg is None:
    return elementwise_layer(jnp.tanh, "Tanh",
                             erf_mixture_rule(TANH_ERF_A, TANH_ERF_B))
  return _numerical("Tanh", jnp.tanh, None, deg)


def Softplus(deg: int = DEFAULT_DEG):
  """``log(1 + exp(x))``; NTK factor from ``softplus' = sigmoid``."""
  return _numerical("Softplus", jax.nn.softplus, jax.nn.sigmoid, deg)


def Silu(deg: int = DEFAULT_DEG):
  """``x * sigmoid(x)`` (Swish with beta = 1)."""
  return _numerical("Silu", jax.nn.silu, None, deg)


Swish = Silu


def _mish(x):
  return x * jnp.tanh(jax.nn.softplus(x))


def Mish(deg: int = DEFAULT_DEG):
  """``x * tanh(softplus(x))``."""
  return _numerical("Mish", _mish, None, deg)
