"""`serial`, `parallel`, `repeat`: networks from layers."""
from __future__ import annotations

import functools
from typing import Callable

import jax

from ..kernel import Kernel
from . import sharing
from . import runs
from .kernel_fn import KernelFn
from .overflow import FlagRecorder
from .requirements import Requirements


def _split(layers, name):
  if not layers:
    raise ValueError(f"{name}: needs at least one layer.")
  for i, l in enumerate(layers):
    if not (isinstance(l, (tuple, list)) and len(l) == 3):
      raise TypeError(f"{name}: argument {i} is not an (init_fn, apply_fn, "
                      f"kernel_fn) triple; got {type(l).__name__}.")
  return zip(*layers)


def _reqs_of(kernel_fn) -> Requirements:
  # Foreign kernel_fns (not ours) get conservative requirements.
  return getattr(kernel_fn, "reqs", Requirements(diagonal_spatial_ok=False,
                                                 packable=False,
                                                 blocker=getattr(
                                                     kernel_fn, "__name__",
                                                     "?")))


def _apply(kernel_fn, k, flags: FlagRecorder, **kwargs):
  """``kernel_fn`` on kernel ``k``; our layers record overflow in ``flags``
  (the enclosing computation's)."""
  if isinstance(kernel_fn, KernelFn):
    return kernel_fn.apply(k, flags, **kwargs)
  return kernel_fn(k, **kwargs)


def _apply_block(fns, k, flags: FlagRecorder, **kwargs):
  for f in fns:
    k = _apply(f, k, flags, **kwargs)
  return k


def serial(*layers):
  """Composes layers: ``serial(f, g)(x) = g(f(x))``.

  Returns the triple of the composition; parameters are a tuple of the
  layers' parameters.
  """
  init_fns, apply_fns, kernel_fns = _split(layers, "serial")

  def init_fn(rng, input_shape):
    params = []
    for f in init_fns:
      rng, key = jax.random.split(rng)
      input_shape, p = f(key, input_shape)
      params.append(p)
    return input_shape, tuple(params)

  def apply_fn(params, inputs, **kwargs):
    rng = kwargs.pop("rng", None)
    rngs = (jax.random.split(rng, len(apply_fns)) if rng is not None
            else (None,) * len(apply_fns))
    for f, p, r in zip(apply_fns, params, rngs):
      inputs = f(p, inputs, rng=r, **kwargs)
    return inputs

  # Identical consecutive blocks run as one loop (see `runs`), so compile
  # time grows with the number of distinct blocks, not with depth.
  kernel_runs = runs.find_runs(kernel_fns)

  def rule(k, flags, **kwargs):
    for start, period, repeats in kernel_runs:
      block = functools.partial(_apply_block, kernel_fns[start:start + period],
                                **kwargs)
      k = runs.scan_block(block, k, repeats, flags)
    return k

  reqs = functools.reduce(lambda a, b: a.then(b), map(_reqs_of, kernel_fns))
  names = ", ".join(getattr(f, "__name__", "?") for f in kernel_fns)
  kernel_fn = KernelFn(rule, reqs, f"serial({names})", records_flags=True)
  sharing.record(kernel_fn, serial, layers)
  return init_fn, apply_fn, kernel_fn


def _like(seq, items: list):
  """``items`` in the container type of ``seq`` (a tuple stays a tuple, as
  in neural-tangents; anything else gives a list)."""
  return tuple(items) if isinstance(seq, tuple) else items


def parallel(*layers):
  """Applies layer ``i`` to input ``i`` of a list or tuple: ``[f(x), g(y)]``
  (outputs in the inputs' container type)."""
  init_fns, apply_fns, kernel_fns = _split(layers, "parallel")

  def init_fn(rng, input_shape):
    if len(input_shape) != len(init_fns):
      raise ValueError(f"parallel: expected {len(init_fns)} inputs; got "
                       f"{len(input_shape)} input shapes.")
    keys = jax.random.split(rng, len(init_fns))
    outs = [f(key, s) for f, key, s in zip(init_fns, keys, input_shape)]
    return _like(input_shape, [o[0] for o in outs]), tuple(o[1] for o in outs)

  def apply_fn(params, inputs, **kwargs):
    rng = kwargs.pop("rng", None)
    rngs = (jax.random.split(rng, len(apply_fns)) if rng is not None
            else (None,) * len(apply_fns))
    return _like(inputs, [f(p, x, rng=r, **kwargs)
                          for f, p, x, r in zip(apply_fns, params, inputs,
                                                rngs)])

  def rule(ks, flags, **kwargs):
    if isinstance(ks, Kernel) or len(ks) != len(kernel_fns):
      got = 1 if isinstance(ks, Kernel) else len(ks)
      raise ValueError(f"parallel: expected {len(kernel_fns)} kernels (one "
                       f"per branch; use FanOut first); got {got}.")
    return _like(ks, [_apply(f, k, flags, **kwargs)
                      for f, k in zip(kernel_fns, ks)])

  reqs = functools.reduce(lambda a, b: a.both(b), map(_reqs_of, kernel_fns))
  names = ", ".join(getattr(f, "__name__", "?") for f in kernel_fns)
  kernel_fn = KernelFn(rule, reqs, f"parallel({names})", records_flags=True)
  sharing.record(kernel_fn, parallel, layers)
  return init_fn, apply_fn, kernel_fn


def repeat(layer, n: int):
  """``serial(*[layer] * n)`` compiled as a loop (`jax.lax.scan`).

  Compile time does not grow with ``n``. Parameters are the layer's
  parameters stacked along a new leading axis of size ``n`` (as in
  neural-tangents). The layer must keep its input shape and kernel metadata.
  """
  if n < 0:
    raise ValueError(f"repeat: n must be >= 0; got {n}.")
  init_fn, apply_fn, kernel_fn = layer

  def init_fn_repeat(rng, input_shape):
    out_shape, _ = init_fn(rng, input_shape)
    if tuple(out_shape) != tuple(input_shape):
      raise ValueError(
          f"repeat: the layer maps input shape {tuple(input_shape)} to "
          f"{tuple(out_shape)}; repeat needs a shape-preserving layer. Use "
          f"serial(*[layer] * n) instead.")

    def step(rng, _):
      rng, key = jax.random.split(rng)
      return rng, init_fn(key, input_shape)[1]

    _, params = jax.lax.scan(step, rng, None, n)
    return out_shape, params

  def apply_fn_repeat(params, inputs, **kwargs):
    def step(x, p):
      return apply_fn(p, x, **kwargs), None

    return jax.lax.scan(step, inputs, params, n)[0]

  def rule(k, flags, **kwargs):
    if n == 0:
      return k
    block = functools.partial(_apply, kernel_fn, **kwargs)
    return runs.scan_block(block, k, n, flags)

  name = f"repeat({getattr(kernel_fn, '__name__', '?')}, {n})"
  reqs = _reqs_of(kernel_fn)
  kernel_fn_repeat = KernelFn(rule, reqs, name, records_flags=True)
  sharing.record(kernel_fn_repeat, repeat, [layer], (n,))
  return init_fn_repeat, apply_fn_repeat, kernel_fn_repeat
