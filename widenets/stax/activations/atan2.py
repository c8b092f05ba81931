"""``arctan2`` for the angle-based kernels (Erf, ReLU family, GELU, ...).

Every closed-form kernel of the arcsine / arccosine families evaluates one
``arctan2`` per covariance entry, and XLA's CPU float32 ``atan2`` is as
costly as a large part of the input product, once per layer. `atan2` below
computes it in float32 with a small rational function instead (multiplies,
adds, two divisions and selects), which XLA fuses with the surrounding kernel
math.

Method (standard octant reduction): with ``a = |y|``, ``b = |x|``,
``t = min(a, b) / max(a, b)`` lies in ``[0, 1]``; above ``tan(pi / 8)`` it is
mapped to ``(t - 1) / (t + 1)`` (adding ``pi / 4``), so that a (2, 2)
rational approximation ``atan(u) ~ u P(u**2) / Q(u**2)`` on
``|u| <= tan(pi / 8)`` suffices; the octant (``pi / 2 - r`` when ``a > b``,
``pi - r`` when ``x < 0``, the sign of ``y``) is folded into the numerator of
the final division. Accuracy: within 4.5 float32 ulps of the exact angle, mean
0.4 ulp (XLA's ``atan2``: 1.5, mean 0.3), over the whole normal float32
range, tested in tests/stax/test_atan2.py; subnormal inputs count as zero,
as they do for XLA's CPU ``atan2``.

Other dtypes (float64 above all) use `jax.numpy.arctan2`: the approximation is
only float32-accurate. So do small float32 arrays (at most `XLA_UP_TO`
entries): there XLA's own ``atan2`` costs little per call, while ours adds
kernels to XLA's compile of every program it appears in (about 0.1 CPU s of
a 2-layer ReLU kernel's first call; benchmarks/ISSUE15.md, section 10). The
choice depends on the shape only, so it is the same under an outer
``jax.jit``. The derivative is the exact one,
``(x dy - y dx) / (x**2 + y**2)``, not the approximation's.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..lax_ops import select, signbit, unit_sign

__all__ = ["atan2", "XLA_UP_TO"]

# Up to this many entries a float32 atan2 is XLA's (see the module docstring):
# XLA's is ~16 ns per entry here against ~1 for ours, i.e. at most 0.5 ms
# per layer below this size.
XLA_UP_TO = 2 ** 15

_TAN_PI_8 = 0.41421356237309503
# atan(u) ~ u P(z) / Q(z), z = u**2, on |u| <= tan(pi / 8): a (2, 2) rational
# least-squares fit of atan(u) / u on Chebyshev nodes (iteratively reweighted
# linearized fit), relative error 3e-10 in exact arithmetic, far below
# float32's eps (checked in float64 by tests/stax/test_atan2.py).
_P = (0.9999999997153866, 0.7523817104100002, 0.06119036379818981)
_Q = (1.0, 1.0857149541326203, 0.2230998527521288)


def _split(v: float) -> tuple:
  head = np.float32(v)
  return head, np.float32(v - np.float64(head))


_PI_4, _PI_2, _PI = _split(np.pi / 4), _split(np.pi / 2), _split(np.pi)


def _atan2_float32(y: jax.Array, x: jax.Array) -> jax.Array:
  # How XLA sees this matters as much as the flop count:
  # - min / max rather than selects, and few reuses of each intermediate,
  #   keep it in one loop fusion (selects split it into several, each
  #   writing a full-size temporary);
  # - the octant is restored inside the numerator of one final division,
  #   ``(C Q + S u P) / Q``: XLA does not duplicate a division into several
  #   consumers, so the angle is computed once per layer (cheap selects at
  #   the end would let XLA defer every layer's polynomial into the NTK's
  #   last fusion, keeping two full-size arrays per layer alive).
  a, b = jnp.abs(y), jnp.abs(x)
  num, den = jnp.minimum(a, b), jnp.maximum(a, b)
  mid = num > _TAN_PI_8 * den
  # (num - den) / (num + den), computed on num and den rescaled by a power
  # of two (exact) into [2**-64, 2**64]: there num + den cannot overflow,
  # its reciprocal below is a normal number, and num - den is not subnormal
  # (flushed to zero on CPU) unless the angle is. max(.., tiny) turns
  # 0 / 0 at (0, 0) into 0 (arctan2 gives 0 there).
  scale = select(den > np.float32(2.0**64), np.float32(2.0**-64),
                 select(den < np.float32(2.0**-64), np.float32(2.0**64),
                        np.float32(1)))
  num, den = num * scale, den * scale
  # A reciprocal times the numerator, not a division: XLA keeps a true
  # division whose result is used more than once (u below) in a kernel of
  # its own, one more full-size temporary and compiled kernel per call.
  u = select(mid, num - den, num) * (1 / jnp.maximum(
      select(mid, num + den, den), np.finfo(np.float32).tiny))
  z = u * u
  p = _P[0] + z * (_P[1] + z * _P[2])
  q = _Q[0] + z * (_Q[1] + z * _Q[2])
  # angle = C + S atan(u): pi / 4 for the middle sector, pi / 2 - angle
  # when |y| > |x|, pi - angle when x < 0, then the sign of y (copysign keeps
  # arctan2's signed zeros: (-0, x > 0) -> -0, (-0, -x) -> -pi).
  # The constants are split into float32 head + tail (pi is not a float32):
  # the tails add back about one ulp of the result.
  c = select(mid, _PI_4[0], np.float32(0))
  c_lo = select(mid, _PI_4[1], np.float32(0))
  swap, neg = a > b, signbit(x)
  c, c_lo = (select(swap, _PI_2[0] - c, c),
             select(swap, _PI_2[1] - c_lo, c_lo))
  c, c_lo = (select(neg, _PI[0] - c, c), select(neg, _PI[1] - c_lo, c_lo))
  sign_y = unit_sign(y)
  s = select(swap != neg, -sign_y, sign_y)
  return (c * sign_y * q + (s * (u * p) + c_lo * sign_y * q)) / q


@jax.custom_jvp
def atan2(y: jax.Array, x: jax.Array) -> jax.Array:
  """``arctan2(y, x)`` elementwise (broadcasting); fast in float32.

  Args:
    y, x: arrays of the same floating dtype (or broadcastable scalars).

  Returns:
    The angle in ``[-pi, pi]``, with `jax.numpy.arctan2`'s conventions for
    zeros and signs.
  """
  y, x = jnp.asarray(y), jnp.asarray(x)
  dtype = jnp.result_type(y, x)
  if (dtype == jnp.float32
      and np.prod(jnp.broadcast_shapes(y.shape, x.shape)) > XLA_UP_TO):
    return _atan2_float32(y.astype(dtype), x.astype(dtype))
  return jnp.arctan2(y, x)


@atan2.defjvp
def _atan2_jvp(primals, tangents):
  (y, x), (dy, dx) = primals, tangents
  r2 = x * x + y * y
  # At (0, 0) arctan2 is not differentiable; callers that reach it (the
  # angle of a vanishing vector) guard it themselves, as `safe_arctan2` does.
  return atan2(y, x), (x * dy - y * dx) / r2
