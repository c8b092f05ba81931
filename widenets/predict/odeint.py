"""An adaptive Dormand-Prince (RK45) ODE solver on pytrees, jit-friendly.

``odeint(f, y0, ts)`` integrates ``dy/dt = f(y, t)`` from ``ts[0]`` and
returns the states at every time in ``ts`` (non-decreasing) stacked on a
leading axis. Steps are clipped to land exactly on each requested time, so no
interpolation error is added. A time of ``inf`` integrates until the state
stops changing: a step whose change is below the tolerance on every entry
while the step size is at its stability limit (or ``max_steps``).

Written for `widenets.predict.gradient_descent`; it replaces
``jax.experimental.ode.odeint`` (an experimental API) with public
`jax.lax` control flow only.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .._reduce import nan_max

__all__ = ["odeint"]

# Dormand & Prince (1980) tableau: nodes, stages, 5th- and 4th-order weights.
_C = np.array([0., 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1., 1.])
_A = [
    [],
    [1 / 5],
    [3 / 40, 9 / 40],
    [44 / 45, -56 / 15, 32 / 9],
    [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
    [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
    [35 / 384, 0., 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84],
]
_B5 = np.array([35 / 384, 0., 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.])
_B4 = np.array([5179 / 57600, 0., 7571 / 16695, 393 / 640, -92097 / 339200,
                187 / 2100, 1 / 40])
_E = _B5 - _B4


def _axpy(y, coeffs, ks, dt):
  """``y + dt * sum_i coeffs[i] * ks[i]`` over pytrees."""
  def leaf(y, *k):
    acc = y
    for c, ki in zip(coeffs, k):
      if c != 0.:
        acc = acc + (dt * c).astype(y.dtype) * ki
    return acc
  return jax.tree_util.tree_map(leaf, y, *ks)


def _step(f, y, t, dt, k1):
  """One Dormand-Prince step: (y_new, k7 = f(y_new), error estimate)."""
  ks = [k1]
  for i in range(1, 7):
    yi = _axpy(y, _A[i], ks, dt)
    ks.append(f(yi, t + _C[i] * dt))
  y_new = _axpy(y, _B5[:6], ks[:6], dt)
  err = jax.tree_util.tree_map(lambda *k: dt * sum(
      float(e) * ki for e, ki in zip(_E, k) if e != 0.), *ks)
  return y_new, ks[-1], err


def _err_norm(err, y, y_new, rtol, atol):
  def leaf(e, a, b):
    scale = atol + rtol * jnp.maximum(jnp.abs(a), jnp.abs(b))
    # A NaN must reject the step, so the maximum keeps it (`nan_max`).
    return nan_max(jnp.abs(e) / scale, initial=0.)
  leaves = jax.tree_util.tree_leaves(
      jax.tree_util.tree_map(leaf, err, y, y_new))
  return nan_max(jnp.stack(leaves)) if leaves else jnp.zeros(())


def _change_small(y, y_new, rtol, atol):
  def leaf(a, b):
    return jnp.all(jnp.abs(b - a) <= atol + rtol * jnp.abs(b))
  leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(leaf, y, y_new))
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def odeint(f: Callable, y0, ts: jax.Array, rtol: float = 1.4e-8,
           atol: float = 1.4e-8, max_steps: int = 100_000):
  """Solves ``dy/dt = f(y, t)``; returns ``y`` at ``ts`` on a leading axis.

  Args:
    f: the vector field ``f(y, t) -> dy/dt`` (same pytree structure as y).
    y0: the state at ``ts[0]``.
    ts: 1-D non-decreasing times; may end in ``inf`` (see module docstring).
    rtol, atol: tolerances of the local error per step.
    max_steps: total accepted + rejected steps allowed (beyond it the state
      reached is returned).
  """
  ts = jnp.asarray(ts)
  leaves = jax.tree_util.tree_leaves(y0)
  dtype = jnp.result_type(*leaves) if leaves else ts.dtype
  ts = ts.astype(dtype)
  eps = float(jnp.finfo(dtype).eps)
  t0 = ts[0]
  k1 = f(y0, t0)

  # Hairer & Wanner's initial step from the scale of y0 and f(y0).
  def rms(tree):
    ls = jax.tree_util.tree_leaves(tree)
    tot = sum(jnp.sum(jnp.abs(x) ** 2) for x in ls)
    cnt = sum(x.size for x in ls)
    return jnp.sqrt(tot / max(cnt, 1))
  d0, d1 = rms(y0), rms(k1)
  dt0 = jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1)
  dt0 = jnp.asarray(jnp.minimum(dt0, 1.), dtype)

  def advance(carry, target):
    y, t, dt, k1, steps = carry

    def cond(c):
      y, t, dt, k1, steps, done = c
      return (~done) & (steps < max_steps)

    def body(c):
      y, t, dt, k1, steps, _ = c
      infinite = jnp.isinf(target)
      h = jnp.where(infinite, dt, jnp.minimum(dt, target - t))
      y_new, k_new, err = _step(f, y, t, h, k1)
      e = _err_norm(err, y, y_new, rtol, atol)
      # A NaN error is retried with ever shorter steps (a step too long for
      # a fast-growing field can overflow); once the step cannot shrink, the
      # field itself is NaN there and so is the state from then on, rather
      # than the last finite state standing for the times not reached.
      nan = jnp.isnan(e)
      failed = nan & (h <= 4 * eps * jnp.maximum(jnp.abs(t), 1.))
      accept = (e <= 1.) | failed
      factor = jnp.where(
          nan, 0.2,
          jnp.clip(0.9 * jnp.where(e > 0, e, 1e-10) ** -0.2, 0.2, 10.))
      new_dt = jnp.asarray(h * factor, dtype)
      # Keep the unclipped step size when only clipped to hit the target.
      new_dt = jnp.where(accept & (h < dt) & ~failed,
                         jnp.maximum(new_dt, dt), new_dt)
      reached = jnp.where(infinite, accept & _change_small(y, y_new, rtol,
                                                           atol),
                          accept & (h >= target - t)) | failed
      t_new = jnp.where(accept, jnp.where(reached & ~infinite, target, t + h),
                        t)
      y_new = jax.tree_util.tree_map(
          lambda x: jnp.where(failed, jnp.nan, x), y_new)
      pick = lambda a, b: jax.tree_util.tree_map(
          lambda x, z: jnp.where(accept, x, z), a, b)
      return (pick(y_new, y), t_new, new_dt, pick(k_new, k1), steps + 1,
              reached)

    done0 = jnp.logical_and(~jnp.isinf(target), t >= target)
    y, t, dt, k1, steps, _ = jax.lax.while_loop(
        cond, body, (y, t, dt, k1, steps, done0))
    return (y, t, dt, k1, steps), y

  carry = (y0, t0, dt0, k1, jnp.int32(0))
  _, ys = jax.lax.scan(advance, carry, ts)
  return ys
