"""`Requirements`: what a layer can compute with, and how networks compose it.

Each layer states, in `Requirements`, what it can work with; `serial` and
`parallel` compose them (`Requirements.then`, `Requirements.both`), and the
network-level result picks the cheapest covariance layout that still gives
exact outputs:

* ``diagonal_spatial``: covariances keep only ``x == x'`` spatial entries. A
  pointwise-in-space layer (Dense, Conv's diagonal part, activations) maps
  diagonal to diagonal; a readout (``Flatten``) consumes only the diagonal; a
  spatial-mixing layer (pooling, attention) needs all pairs. The network runs
  diagonal iff a readout removes the spatial axes and every layer before it
  accepts diagonals.
* ``diagonal_batch``: ``cov1`` keeps only the sample diagonal (all layers here
  accept it; a layer mixing samples would not).
* ``packable``: output pair ``(i, j)`` depends only on input pair ``(i, j)``, so
  ``x2=None`` can run on the ``i <= j`` pairs alone and be mirrored
  (`packing`), and ``x1`` can run in row blocks (`chunking`).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

__all__ = ["Requirements"]


@dataclasses.dataclass(frozen=True)
class Requirements:
  """What a layer (or a network) can compute with.

  Attributes:
    diagonal_spatial_ok: accepts spatially diagonal covariances.
    readout: its outputs have no spatial axes left.
    diagonal_batch_ok: accepts sample-diagonal ``cov1``/``cov2``.
    packable: pairs ``(i, j)`` are independent (``x2=None`` at half cost).
    blocker: name of the first layer that needs full spatial covariances.
    batch_axis, channel_axis: the input layout the first layer needs.
  """
  diagonal_spatial_ok: bool = True
  readout: bool = False
  diagonal_batch_ok: bool = True
  packable: bool = True
  blocker: Optional[str] = None
  batch_axis: Optional[int] = None
  channel_axis: Optional[int] = None

  def then(self, other: "Requirements") -> "Requirements":
    """Requirements of ``other(self(x))``."""
    spatial_ok = self.diagonal_spatial_ok and (
        self.readout or other.diagonal_spatial_ok)
    blocker = self.blocker if not self.diagonal_spatial_ok else (
        None if self.readout else other.blocker)
    return Requirements(
        diagonal_spatial_ok=spatial_ok,
        readout=self.readout or other.readout,
        diagonal_batch_ok=self.diagonal_batch_ok and other.diagonal_batch_ok,
        packable=self.packable and other.packable,
        blocker=blocker,
        batch_axis=self.batch_axis,
        channel_axis=self.channel_axis)

  def both(self, other: "Requirements") -> "Requirements":
    """Requirements of two parallel branches."""
    return Requirements(
        diagonal_spatial_ok=self.diagonal_spatial_ok and
        other.diagonal_spatial_ok,
        readout=self.readout and other.readout,
        diagonal_batch_ok=self.diagonal_batch_ok and other.diagonal_batch_ok,
        packable=self.packable and other.packable,
        blocker=self.blocker or other.blocker,
        batch_axis=self.batch_axis if self.batch_axis is not None
        else other.batch_axis,
        channel_axis=self.channel_axis if self.channel_axis is not None
        else other.channel_axis)

  @property
  def default_diagonal_spatial(self) -> bool:
    return self.diagonal_spatial_ok and self.readout
