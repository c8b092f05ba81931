"""Resuming a stored batched kernel: which blocks to compute, and a check
that the store holds this very computation.

Every block marked done is checked against its checksum; a damaged one is
computed again. The first intact block is also computed again and compared
with the stored one: a store written by another computation (another
``empirical_ntk_fn``, two ``Elementwise`` lambdas, a closure over another
number) differs there and is refused with `StoreMismatchError`.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable, Iterator, Optional

import numpy as np

from .claims import Claims
from .store import BlockStore, StoreMismatchError

__all__ = ["blocks_to_compute", "check_same_computation", "claimed",
           "claim_name", "RTOL"]

# Tolerance of the recomputed block (relative to the block's largest entry):
# round-off of another device or compile, not another computation.
RTOL = 1e-4


def claim_name(i: int, j: int) -> str:
  return f"{i}_{j}"


def blocks_to_compute(store: BlockStore, all_tasks: list, mirrored: bool
                      ) -> tuple[list, dict, Optional[tuple]]:
  """``(tasks, damaged, intact)``: tasks not done or damaged (in order),
  ``{block: message}`` of damaged blocks, and the first intact done task."""
  sums = store.checksums(strict=False)
  done = sums[..., 0] != 0
  damaged = store.damaged(sums)
  bad = set()
  for i, j in damaged:
    bad.add((min(i, j), max(i, j)) if mirrored else (i, j))
  todo, intact = [], None
  for i, j in all_tasks:
    ok = done[i, j] and (not mirrored or i == j or done[j, i])
    if ok and (i, j) not in bad:
      intact = intact or (i, j)
    else:
      todo.append((i, j))
  return todo, damaged, intact


def check_same_computation(store: BlockStore, block: tuple,
                           compute: Callable[[int, int], dict]) -> None:
  """Recomputes ``block`` (``compute(i, j) -> {path: trimmed leaf}``) and
  raises `StoreMismatchError` unless it matches the stored one."""
  i, j = block
  sums = store.checksums(strict=True)
  new = compute(i, j)
  for k, spec in enumerate(store.specs):
    if not sums[i, j, 1 + k] or spec.path not in new:
      continue
    old = store.read_region(k, i, j, sums[i, j, 1 + k]).astype(np.float64)
    v = np.asarray(new[spec.path], np.float64)
    scale = max(float(np.max(np.abs(old), initial=0.0)), 1e-30)
    err = float(np.max(np.abs(v - old), initial=0.0)) if v.shape == \
        old.shape else np.inf
    if not err <= RTOL * scale:
      raise StoreMismatchError(
          f"Store {store.path!r} holds a kernel of a different computation: "
          f"block {block} of {spec.path!r} computed now differs from the "
          f"stored one by {err:.3g} (largest entry {scale:.3g}; tolerance "
          f"{RTOL:g} relative). The inputs, architecture description and "
          f"arguments matched, so the kernel function computes something "
          f"else (another function of the same name, closure values, "
          f"parameters). Use a new store path.")


def claimed(tasks: Iterable[tuple], store: BlockStore, claims: Claims,
            redo: frozenset = frozenset(), poll: float = 0.2
            ) -> Iterator[Optional[tuple]]:
  """The tasks this process claims, in order. Blocks claimed by running
  processes are skipped and waited for at the end (taken over if their
  process dies); blocks another process finished meanwhile are dropped,
  except those in ``redo`` (damaged: their old done mark proves nothing).

  Yields None before waiting: the caller then finishes (and releases) the
  blocks it has in flight, which others may be waiting for.
  """
  waiting = list(tasks)
  while waiting:
    later = []
    for i, j in waiting:
      name = claim_name(i, j)
      if not claims.try_claim(name):
        later.append((i, j))
      elif (i, j) not in redo and store.block_done(i, j):
        claims.release(name)  # finished by another process meanwhile
      else:
        yield i, j
    if later:
      yield None
      time.sleep(poll)
    waiting = [t for t in later if t in redo or not store.block_done(*t)]
