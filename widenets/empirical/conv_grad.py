"""Per-sample convolution weight gradients as shifted slices times a matmul.

``y = conv(x, w)`` has ``dL/dw[o, c, k] = sum_{n, y} g[n, o, y] x_pad[n, c,
y * stride + k * dilation]``. JAX's transpose rule computes it as another
convolution; under ``vmap`` over samples (the per-sample Jacobians of
`NtkImplementation.JACOBIAN_CONTRACTION`, the cotangents of structured
derivatives) both operands carry the batch and it becomes a *grouped*
convolution, which XLA's CPU backend runs slowly. Written as ``K`` strided
slices of the padded input stacked on a new axis and one ``dot_general`` over
``(n, y)``, vmap turns the contraction into a batched matmul (timings:
benchmarks/RESULTS.md, "Measurements behind the code").

`weight_grad` is that formula; `with_fast_conv_grads` rewrites a function's
convolutions to use it in reverse mode (a `jax.custom_vjp` per convolution,
via the function's jaxpr) and leaves everything else, including the values,
unchanged.
"""
from __future__ import annotations

import itertools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import tree_flatten, tree_unflatten

from . import jaxpr_eval

__all__ = ["supported", "weight_grad", "has_conv", "with_fast_conv_grads"]

_LETTERS = "abdefghijlmpqrstuvwxyz"  # spatial ids; c, k, n, o are taken


def supported(params: dict) -> bool:
  """Plain convolutions only: no input dilation (transposed convolution),
  no feature or batch groups."""
  return (all(d == 1 for d in params["lhs_dilation"]) and
          params["feature_group_count"] == 1 and
          params["batch_group_count"] == 1)


def weight_grad(lhs: jax.Array, ct: jax.Array, rhs_shape, params: dict
                ) -> Optional[jax.Array]:
  """``d <ct, conv(lhs, w)> / dw`` in ``w``'s layout, or None if not
  `supported`. ``params``: the ``conv_general_dilated`` equation's."""
  if not supported(params):
    return None
  lhs_spec, rhs_spec, out_spec = params["dimension_numbers"]
  n_sp = lhs.ndim - 2
  # Channels last, (N, *S, C) and (N, *Y, O): the contraction over (n, y)
  # then runs over major axes, the fast form of XLA's CPU dot (and NHWC
  # needs no transposes at all).
  x = jnp.transpose(lhs, (lhs_spec[0], *lhs_spec[2:], lhs_spec[1]))
  g = jnp.transpose(ct, (out_spec[0], *out_spec[2:], out_spec[1]))
  kernel = [rhs_shape[a] for a in rhs_spec[2:]]
  strides = list(params["window_strides"])
  dilation = list(params["rhs_dilation"])
  pads = ([(0, 0, 0)] + [(lo, hi, 0) for lo, hi in params["padding"]] +
          [(0, 0, 0)])
  x = jax.lax.pad(x, jnp.zeros((), x.dtype), pads)
  out_sp = g.shape[1:-1]
  taps = []
  for k in itertools.product(*[range(s) for s in kernel]):
    start = [0] + [ki * di for ki, di in zip(k, dilation)] + [0]
    limit = ([x.shape[0]] +
             [st + (yi - 1) * si + 1 for st, yi, si in zip(start[1:-1],
                                                          out_sp, strides)] +
             [x.shape[-1]])
    taps.append(jax.lax.slice(x, start, limit, [1] + strides + [1]))
  patches = jnp.stack(taps, axis=-2)  # (N, *Y, K, C)
  sp = _LETTERS[:n_sp]
  dw = jnp.einsum(f"n{sp}kc,n{sp}o->kco", patches, g,
                  precision=params.get("precision"))
  dw = dw.reshape(tuple(kernel) + dw.shape[1:]).astype(ct.dtype)
  # (*kernel, C, O) -> the layout of w.
  canon = {rhs_spec[0]: n_sp + 1, rhs_spec[1]: n_sp}
  canon.update({a: i for i, a in enumerate(rhs_spec[2:])})
  return jnp.transpose(dw, tuple(canon[j] for j in range(dw.ndim)))


def _fast_conv(eqn) -> Callable:
  """``conv(lhs, rhs)`` equal to ``eqn``, with `weight_grad` in its VJP."""

  @jax.custom_vjp
  def conv(lhs, rhs):
    return jaxpr_eval.bind(eqn, [lhs, rhs])[0]

  def fwd(lhs, rhs):
    return conv(lhs, rhs), (lhs, rhs)

  def bwd(res, ct):
    lhs, rhs = res
    _, pull = jax.vjp(lambda l: jaxpr_eval.bind(eqn, [l, rhs])[0], lhs)
    d_rhs = weight_grad(lhs, ct, rhs.shape, eqn.params).astype(rhs.dtype)
    return pull(ct)[0], d_rhs

  conv.defvjp(fwd, bwd)
  return conv


def _has_conv(jaxpr) -> bool:
  for eqn in jaxpr.eqns:
    if (eqn.primitive.name == "conv_general_dilated" and
        supported(eqn.params)):
      return True
    if (eqn.primitive.name in jaxpr_eval.CALLS and
        _has_conv(eqn.params["jaxpr"].jaxpr)):
      return True
  return False


def _eval(jaxpr, consts, args):
  def step(i, eqn, invals):
    name = eqn.primitive.name
    if name == "conv_general_dilated" and supported(eqn.params):
      return [_fast_conv(eqn)(*invals)]
    if name in jaxpr_eval.CALLS and _has_conv(eqn.params["jaxpr"].jaxpr):
      inner = eqn.params["jaxpr"]
      return _eval(inner.jaxpr, inner.consts, invals)
    return jaxpr_eval.bind(eqn, invals)

  return jaxpr_eval.eval_jaxpr(jaxpr, consts, args, step)


def has_conv(fn: Callable, *args) -> bool:
  """Whether ``fn(*args)`` runs a (supported) convolution."""
  return _has_conv(jax.make_jaxpr(fn)(*args).jaxpr)


def with_fast_conv_grads(fn: Callable) -> Callable:
  """``fn`` (positional arguments) with its convolutions' weight gradients
  computed by `weight_grad`; ``fn`` itself where it has none."""

  def wrapped(*args):
    # Array leaves are traced; anything else (strings, flags, Python
    # numbers) stays a constant of the jaxpr, as it is for ``fn``.
    flat, tree = tree_flatten(args)
    dyn = [i for i, leaf in enumerate(flat)
           if isinstance(leaf, (jax.Array, np.ndarray, np.generic))]

    def on_arrays(*arrays):
      full = list(flat)
      for i, a in zip(dyn, arrays):
        full[i] = a
      return fn(*tree_unflatten(tree, full))

    arrays = [flat[i] for i in dyn]
    closed, out_shape = jax.make_jaxpr(on_arrays, return_shape=True)(*arrays)
    if not _has_conv(closed.jaxpr):
      return fn(*args)
    outs = _eval(closed.jaxpr, closed.consts, arrays)
    return tree_unflatten(jax.tree_util.tree_structure(out_shape), outs)

  return wrapped
