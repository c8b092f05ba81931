"""The layer protocol: ``(init_fn, apply_fn, kernel_fn)`` triples.

A primitive layer is written as a function returning ``(init_fn, apply_fn,
rule, reqs[, mask_rule])``: ``rule(kernel, **kwargs) -> kernel`` is its
covariance rule and ``reqs`` its `Requirements`. `layer` (as a decorator) or
`make_layer` (with an explicit name) turns that into the public triple whose
``kernel_fn`` is a `KernelFn`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

from . import custom, masking, sharing
from .kernel_fn import KernelFn
from .requirements import Requirements

__all__ = ["layer", "make_layer", "Requirements", "KernelFn"]


def make_layer(name: str, init_fn: Callable, apply_fn: Callable,
               rule: Callable, reqs: Requirements, mask_rule: Any = None,
               records_flags: bool = False) -> tuple:
  """The public ``(init_fn, apply_fn, kernel_fn)`` triple of a primitive
  layer called ``name`` (in messages and ``__name__``).

  ``apply_fn`` learns to take masked inputs, ``kernel_fn`` to move masks
  (``mask_rule``: a `masking.MaskRule`; default: masks unchanged,
  covariances of masked positions zeroed). ``records_flags``: ``rule`` is
  ``rule(kernel, flags, **kwargs)`` and records overflow flags (see
  `KernelFn`).
  """
  apply_fn = masking.masked_apply(apply_fn, mask_rule)
  kernel_fn = KernelFn(rule, reqs, name, init_fn=init_fn, mask_rule=mask_rule,
                       masks=True, records_flags=records_flags)
  # As neural-tangents: the three functions are named after the layer
  # (``'Relu'``); messages and reprs use ``name`` (with its arguments).
  for f in (init_fn, apply_fn, kernel_fn):
    try:
      f.__name__ = name.split("(", 1)[0]
    except (AttributeError, TypeError):
      pass
  return init_fn, apply_fn, kernel_fn


def layer(fn: Callable[..., tuple]) -> Callable[..., tuple]:
  """Decorator for primitive layers.

  ``fn(*args, **kwargs)`` returns ``(init_fn, apply_fn, rule, reqs)`` where
  ``rule(kernel, **kwargs) -> kernel`` is the covariance rule; the decorated
  function returns the public triple with a `KernelFn` (see `make_layer`),
  named after ``fn`` and its arguments. An optional fifth element, a
  `masking.MaskRule`, says how the layer moves masks.

  The ``kernel_fn`` records its `sharing.Architecture` with every argument
  structural; declare float hyperparameters with `sharing.hyperparameters`
  above ``@layer`` so that networks differing only in them share a program.

  A function returning neural-tangents' triple ``(init_fn, apply_fn,
  kernel_fn)``, with ``kernel_fn(kernel, **kwargs) -> kernel`` (see
  `widenets.stax.custom` for `requires` and `supports_masking`), works too.
  """

  @functools.wraps(fn)
  def make(*args, **kwargs):
    parts = fn(*args, **kwargs)
    if len(parts) == 3:  # neural-tangents' form (see `custom`)
      parts = custom.from_triple(*parts)
    init_fn, apply_fn, rule, reqs, *mask_rule = parts
    return make_layer(_layer_name(fn.__name__, args, kwargs), init_fn,
                      apply_fn, rule, reqs,
                      mask_rule[0] if mask_rule else None)

  return sharing.hyperparameters()(make)


def _layer_name(base: str, args, kwargs) -> str:
  parts = [repr(a) for a in args if isinstance(a, (int, float, str, tuple))]
  parts += [f"{k}={v!r}" for k, v in kwargs.items()
            if isinstance(v, (int, float, str, tuple, bool))]
  return f"{base}({', '.join(parts)})"
