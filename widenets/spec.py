"""Architectures from short strings, parsed safely (no ``eval``).

A spec is a sequence of layers separated by spaces (or commas at the top
level), each a `widenets.stax` layer name with optional literal arguments::

    "Conv(64, (3, 3), SAME) Relu Conv(64, (3, 3), SAME) Relu GlobalAvgPool Dense(10)"
    "Flatten Dense(512, W_std=1.5, b_std=0.05) Erf Dense(10)"

* A bare name (``Relu``) is the layer called with no arguments.
* Arguments are Python literals (numbers, strings, tuples, lists, ``None``,
  ``True``...) read with `ast.literal_eval`; a bare identifier argument is
  a string. A bare padding name among the positional arguments (``SAME``,
  ``VALID``, ``CIRCULAR``) is the ``padding=`` keyword wherever it stands, so
  ``Conv(64, (3, 3), SAME)`` means ``Conv(64, (3, 3), padding='SAME')``.
* Names match case-insensitively (``relu`` is ``Relu``).

The layers are combined with `stax.serial`. Only names of layer constructors
in `widenets.stax` are accepted; combinators (``serial``, ``FanOut``...) and
layers that need Python callables (``Elementwise``) are not, since a string
cannot express their arguments. Use a Python file for those.
"""
from __future__ import annotations

import ast
import inspect
from typing import Any

__all__ = ["SpecError", "parse", "layer_calls", "layer_names"]

# Public stax names that are not layer constructors a spec can call.
_NOT_LAYERS = {"serial", "parallel", "repeat", "FanOut", "FanInSum",
               "FanInProd", "FanInConcat", "KernelFn", "Requirements", "layer",
               "Padding", "Elementwise", "ElementwiseNumerical"}
_OPEN, _CLOSE = "([{", ")]}"
_PADDINGS = ("SAME", "VALID", "CIRCULAR")


class SpecError(ValueError):
  """A spec string that cannot be turned into a network."""


def layer_names() -> dict[str, Any]:
  """``{name: constructor}`` of every layer a spec may use."""
  from . import stax
  out = {}
  for name in dir(stax):
    obj = getattr(stax, name)
    if (name.startswith("_") or name in _NOT_LAYERS or
        not callable(obj) or inspect.isclass(obj) or inspect.ismodule(obj)):
      continue
    out[name] = obj
  return out


def _tokens(spec: str) -> list[str]:
  """Splits at top-level whitespace/commas, keeping parenthesized args."""
  tokens, cur, depth = [], [], 0
  for ch in spec:
    if ch in _OPEN:
      depth += 1
    elif ch in _CLOSE:
      depth -= 1
      if depth < 0:
        raise SpecError(f"unbalanced {ch!r} in spec {spec!r}.")
    if depth == 0 and (ch.isspace() or ch == ","):
      if cur:
        tokens.append("".join(cur))
      cur = []
      continue
    cur.append(ch)
  if depth:
    raise SpecError(f"unclosed parenthesis in spec {spec!r}.")
  if cur:
    tokens.append("".join(cur))
  # "Dense (10)" -> one token: an argument list glued to the name before it.
  merged: list[str] = []
  for tok in tokens:
    if tok[0] == "(" and merged:
      merged[-1] += tok
    else:
      merged.append(tok)
  return merged


def _value(node: ast.AST, token: str) -> Any:
  if isinstance(node, ast.Name):
    return node.id  # bare identifier, e.g. SAME -> 'SAME'
  try:
    return ast.literal_eval(node)
  except (ValueError, TypeError, SyntaxError, MemoryError,
          RecursionError):
    raise SpecError(f"argument {ast.unparse(node)!r} of {token!r} is not a "
                    f"literal (numbers, strings, tuples, None...).") from None


def layer_calls(spec: str) -> list[tuple[str, tuple, dict]]:
  """The ``(name, args, kwargs)`` of each layer in ``spec`` (validated)."""
  if not isinstance(spec, str) or not spec.strip():
    raise SpecError(f"empty architecture spec {spec!r}.")
  known = layer_names()
  lower = {k.lower(): k for k in known}
  calls = []
  for token in _tokens(spec):
    try:
      node = ast.parse(token, mode="eval").body
    except SyntaxError:
      raise SpecError(f"cannot parse {token!r} in spec {spec!r}.") from None
    if isinstance(node, ast.Name):
      func, args, kwargs = node, [], []
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
      func, args, kwargs = node.func, node.args, node.keywords
    else:
      raise SpecError(f"{token!r} is not a layer like Name or Name(args).")
    name = lower.get(func.id.lower())
    if name is None:
      raise SpecError(f"unknown layer {func.id!r} in spec; known layers: "
                      f"{', '.join(sorted(known))}.")
    if any(isinstance(a, ast.Starred) for a in args) or any(
        k.arg is None for k in kwargs):
      raise SpecError(f"*args/**kwargs are not allowed in {token!r}.")
    pos = []
    kw = {k.arg: _value(k.value, token) for k in kwargs}
    takes_padding = "padding" in inspect.signature(known[name]).parameters
    for a in args:
      if (takes_padding and isinstance(a, ast.Name) and
          a.id.upper() in _PADDINGS):
        if "padding" in kw:
          raise SpecError(f"{token!r} gives the padding twice.")
        kw["padding"] = a.id.upper()
      else:
        pos.append(_value(a, token))
    calls.append((name, tuple(pos), kw))
  return calls


def parse(spec: str):
  """``(init_fn, apply_fn, kernel_fn)`` of the network ``spec`` describes.

  Raises:
    SpecError: unknown layer, non-literal argument, or arguments the layer
      rejects (the message names the layer).
  """
  from . import stax
  known = layer_names()
  layers = []
  for name, args, kwargs in layer_calls(spec):
    try:
      layers.append(known[name](*args, **kwargs))
    except (TypeError, ValueError) as e:
      call = ", ".join([repr(a) for a in args] +
                       [f"{k}={v!r}" for k, v in kwargs.items()])
      raise SpecError(f"{name}({call}): {e}") from None
  return layers[0] if len(layers) == 1 else stax.serial(*layers)
