"""Writing your own layer the neural-tangents way.

neural-tangents documents one way to write a layer: a function returning
``(init_fn, apply_fn, kernel_fn)`` with ``kernel_fn(k: Kernel, **kw) -> Kernel``,
decorated with `layer` (from `widenets.stax.layer`) and, optionally,
`supports_masking`; ``kernel_fn`` states what it needs with `requires`::

  @stax.layer
  @stax.supports_masking(remask_kernel=False)
  def Square():
    init_fn = lambda key, shape: (shape, ())
    apply_fn = lambda params, x, **kw: x ** 2

    @stax.requires(diagonal_spatial=stax.Diagonal())
    def kernel_fn(k, **kw):
      ...
    return init_fn, apply_fn, kernel_fn

This module holds that vocabulary (`Bool`, `Diagonal`, `requires`,
`supports_masking`) and `from_triple`, which turns such a triple into this
library's layer parts ``(init_fn, apply_fn, rule, Requirements, MaskRule)``.

`Diagonal(input, output)` says whether a layer can work with covariances that
keep only the diagonal (of spatial positions, or of samples):

* ``input``: `Bool.YES` accepts diagonal-only inputs; `Bool.NO` needs all
  entries; `Bool.MAYBE` accepts them only if the off-diagonal entries are zero
  (as after a readout).
* ``output``: `Bool.YES` means nothing after the layer needs off-diagonal
  entries (a readout such as ``Flatten``); `Bool.MAYBE` means the layer's own
  outputs have zero off-diagonal entries, but later layers may create them;
  `Bool.NO` makes no promise.

``a >> b`` is the requirement of ``b(a(.))`` (``b << a`` the same); ``a & b``
that of two parallel branches. Both are associative; ``&`` is also commutative
and idempotent.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
from typing import Any, Callable, Optional

from ..kernel import Kernel
from .requirements import Requirements
from .masking import MaskRule

__all__ = ["Bool", "Diagonal", "requires", "supports_masking", "from_triple",
           "requirements_of"]

# The attribute under which `requires` records a kernel_fn's requirements.
_REQS_ATTR = "input_req"
# The attribute under which `supports_masking` records how masks move.
_MASK_ATTR = "_widenets_mask_rule"


class Bool(enum.IntEnum):
  """Three-valued logic ordered ``NO < MAYBE < YES``; ``&`` is the minimum."""
  NO = 0
  MAYBE = 1
  YES = 2

  def __and__(self, other: "Bool") -> "Bool":
    return Bool(min(int(self), int(other)))

  __rand__ = __and__


@dataclasses.dataclass(frozen=True)
class Diagonal:
  """Whether diagonal-only covariances suffice (see the module docstring)."""
  input: Bool = Bool.YES
  output: Bool = Bool.NO

  def __rshift__(self, other: "Diagonal") -> "Diagonal":
    """The requirement of ``other(self(.))``."""
    if self.output == Bool.YES:
      # Nothing downstream needs off-diagonal entries: ``other`` is free.
      return self
    # If ``self`` zeroes off-diagonal entries (MAYBE), ``other`` may take
    # diagonal inputs when it accepts them at least conditionally; otherwise
    # it must accept them unconditionally.
    needed = Bool.MAYBE if self.output == Bool.MAYBE else Bool.YES
    inp = self.input if other.input >= needed else Bool.NO
    return Diagonal(input=inp, output=other.output)

  def __lshift__(self, other: "Diagonal") -> "Diagonal":
    """The requirement of ``self(other(.))``."""
    return other >> self

  def __and__(self, other: "Diagonal") -> "Diagonal":
    """The requirement of two parallel branches."""
    return Diagonal(input=self.input & other.input,
                    output=self.output & other.output)

  __rand__ = __and__

  def __bool__(self) -> bool:
    """Whether a network with this requirement can run diagonal-only."""
    return self.input == Bool.YES and self.output != Bool.NO


def _accepts(v: Any) -> bool:
  """Whether a ``diagonal_*`` requirement value accepts diagonal inputs."""
  if isinstance(v, Diagonal):
    return v.input == Bool.YES
  return v is not False


def requirements_of(kernel_fn: Callable) -> Requirements:
  """Our `Requirements` from what `requires` recorded on ``kernel_fn``.

  A ``diagonal_spatial`` of ``Diagonal(input, output)`` maps to
  ``diagonal_spatial_ok = (input == YES)`` and ``readout = (output == YES)``;
  ``MAYBE`` maps to the conservative side (full covariances), which gives the
  same numbers at a higher cost. A missing key constrains nothing.
  """
  reqs = dict(getattr(kernel_fn, _REQS_ATTR, None) or {})
  spatial = reqs.get("diagonal_spatial", None)
  readout = isinstance(spatial, Diagonal) and spatial.output == Bool.YES
  return Requirements(
      diagonal_spatial_ok=spatial is None or _accepts(spatial),
      readout=readout,
      diagonal_batch_ok=reqs.get("diagonal_batch", None) is None or
      _accepts(reqs["diagonal_batch"]),
      blocker=None if spatial is None or _accepts(spatial) else
      getattr(kernel_fn, "__name__", "custom layer"),
      batch_axis=reqs.get("batch_axis", None),
      channel_axis=reqs.get("channel_axis", None))


def _check_kernel(name: str, reqs: dict, k: Kernel) -> None:
  for key in ("diagonal_batch", "diagonal_spatial"):
    v = reqs.get(key, None)
    if v is not None and getattr(k, key) and not _accepts(v):
      raise ValueError(
          f"{name} requires {key}={v}, but got a kernel with {key}=True, "
          f"which lacks the off-diagonal entries it needs. Recompute the "
          f"input kernel with {key}=False.")
  for key in ("batch_axis", "channel_axis"):
    v = reqs.get(key, None)
    if v is None or k.shape1 is None or getattr(k, key) is None:
      continue
    want = v % len(k.shape1)
    if getattr(k, key) % len(k.shape1) != want:
      raise ValueError(
          f"{name} requires {key}={want}, but got a kernel with "
          f"{key}={getattr(k, key)}; the infinite-width limit is not "
          f"defined for that layout.")


def requires(**static_reqs) -> Callable[[Callable], Callable]:
  """Decorates ``kernel_fn(k, **kw)`` with what it needs of its input kernel.

  Args:
    **static_reqs: any of ``diagonal_spatial``, ``diagonal_batch`` (a `Diagonal`
      or a bool), ``batch_axis``, ``channel_axis`` (ints). Other names are
      recorded and ignored (neural-tangents threads them to the inputs).

  Returns:
    A decorator; the decorated ``kernel_fn`` checks its input `Kernel` against
    the requirements (a clear ValueError naming the layer otherwise) and
    carries them for `layer` to compose.
  """

  def decorate(kernel_fn: Callable) -> Callable:
    name = getattr(kernel_fn, "__name__", "kernel_fn")

    @functools.wraps(kernel_fn)
    def checked(k, **kwargs):
      if isinstance(k, Kernel):
        _check_kernel(name, static_reqs, k)
      return kernel_fn(k, **kwargs)

    setattr(checked, _REQS_ATTR, dict(static_reqs))
    return checked

  return decorate


def supports_masking(remask_kernel: bool) -> Callable[[Callable], Callable]:
  """Decorates a layer function so that its layer moves masks.

  The layer function returns ``(init_fn, apply_fn, kernel_fn)`` or
  ``(init_fn, apply_fn, kernel_fn, mask_fn)``, where
  ``mask_fn(mask, input_shape) -> mask`` moves a boolean mask (True = masked)
  through the layer (default: unchanged). ``apply_fn`` then receives
  ``mask=`` (the input mask) when inputs are masked. With
  ``remask_kernel=True`` covariances involving masked outputs are zeroed after
  ``kernel_fn``. Apply it below `layer` (``@layer`` on top).
  """

  def decorate(layer_fn: Callable) -> Callable:

    @functools.wraps(layer_fn)
    def with_masking(*args, **kwargs):
      parts = layer_fn(*args, **kwargs)
      if len(parts) not in (3, 4):
        raise ValueError(
            f"{layer_fn.__name__}: expected (init_fn, apply_fn, kernel_fn) or "
            f"(init_fn, apply_fn, kernel_fn, mask_fn), got {len(parts)} items.")
      init_fn, apply_fn, kernel_fn = parts[:3]
      mask_fn = parts[3] if len(parts) == 4 else None
      rule = MaskRule(mask_fn=mask_fn, remask=bool(remask_kernel))

      @functools.wraps(kernel_fn)
      def kernel_fn_masked(k, **kw):
        return kernel_fn(k, **kw)

      setattr(kernel_fn_masked, _MASK_ATTR, rule)
      return init_fn, apply_fn, kernel_fn_masked

    return with_masking

  return decorate


def from_triple(init_fn: Callable, apply_fn: Callable, kernel_fn: Callable
                ) -> tuple:
  """``(init_fn, apply_fn, rule, Requirements, MaskRule)`` of an NT-style layer.

  Layers without `supports_masking` keep masks unchanged (channels collapsed
  if the channel count changes) and zero covariances of masked positions.
  """
  mask_rule: Optional[MaskRule] = getattr(kernel_fn, _MASK_ATTR, None)

  def rule(k, **kwargs):
    return kernel_fn(k, **kwargs)

  return init_fn, apply_fn, rule, requirements_of(kernel_fn), mask_rule
