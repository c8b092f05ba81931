"""Evaluating a jaxpr equation by equation, with a substitute for chosen
equations (used by structured derivatives and the convolution-gradient
rewrite)."""
from __future__ import annotations

from typing import Callable, Sequence

from jax.extend import core as jcore

__all__ = ["CALLS", "bind", "eval_jaxpr"]

# Call-like primitives whose body is a closed jaxpr in ``params['jaxpr']``.
CALLS = frozenset({"jit", "pjit", "closed_call", "core_call"})


def bind(eqn, invals: Sequence) -> list:
  """Evaluates one jaxpr equation on ``invals``; always returns a list."""
  bound = eqn.primitive.get_bind_params(eqn.params)
  if isinstance(bound, tuple):  # older JAX: (subfuns, params)
    subfuns, params = bound
    out = eqn.primitive.bind(*subfuns, *invals, **params)
  else:
    out = eqn.primitive.bind(*invals, **bound)
  return list(out) if eqn.primitive.multiple_results else [out]


def eval_jaxpr(jaxpr, consts: Sequence, args: Sequence,
               step: Callable) -> list:
  """Evaluates ``jaxpr`` with ``step(index, eqn, invals) -> outputs`` for
  each equation (e.g. `bind`, or a substitute)."""
  env = {}

  def read(v):
    return v.val if isinstance(v, jcore.Literal) else env[v]

  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  for i, eqn in enumerate(jaxpr.eqns):
    outs = step(i, eqn, [read(v) for v in eqn.invars])
    for v, o in zip(eqn.outvars, outs):
      if not isinstance(v, jcore.DropVar):
        env[v] = o
  return [read(v) for v in jaxpr.outvars]
