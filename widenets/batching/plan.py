"""Planning a batched kernel: validated inputs and how each leaf assembles.

Shared by `runner` (in-process blocks) and `widenets.scale` (Dask chunks).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import numpy as np

from . import blocks
from .job import BlockJob

__all__ = ["validated_inputs", "check_finite", "n_samples",
           "hints", "leaf_specs", "probe_mirror"]


def validated_inputs(x1, x2, host_copies: bool = True):
  """Host numpy copies of the inputs (or, without ``host_copies``, the
  inputs themselves: tracers inside `jit`), checked like ``kernel_fn``
  would."""
  def host(tree, name):
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
      raise ValueError(f"batch: {name} has no arrays.")
    for a in leaves:
      if not hasattr(a, "shape") or np.ndim(a) < 1:
        raise ValueError(f"batch: {name} must be arrays with a leading "
                         f"sample axis; got {type(a).__name__} of shape "
                         f"{getattr(a, 'shape', ())}.")
    return jax.tree_util.tree_map(np.asarray, tree) if host_copies else tree

  def count(tree, name):
    n = {a.shape[0] for a in jax.tree_util.tree_leaves(tree)}
    if len(n) > 1:
      raise ValueError(f"batch: the arrays of {name} have different numbers "
                       f"of samples {sorted(n)}.")
    if n == {0}:
      shape = jax.tree_util.tree_leaves(tree)[0].shape
      raise ValueError(f"batch: {name} has 0 samples (shape {shape}); a "
                       f"kernel needs at least one.")

  x1 = host(x1, "x1")
  count(x1, "x1")
  if x2 is None:
    return x1, None
  x2 = host(x2, "x2")
  count(x2, "x2")
  l1, t1 = jax.tree_util.tree_flatten(x1)
  l2, t2 = jax.tree_util.tree_flatten(x2)
  if t1 != t2:
    raise ValueError(f"batch: x1 and x2 must have the same structure; got "
                     f"{t1} and {t2}.")
  for a, b in zip(l1, l2):
    if a.shape[1:] != b.shape[1:]:
      raise ValueError(f"batch: x1 and x2 must have the same shape apart from "
                       f"the sample axis; got x1 {a.shape} and x2 {b.shape}.")
  return x1, x2


def check_finite(x, name: str, block: int, mask_constant=None) -> None:
  """Raises like ``kernel_fn`` for NaN or infinite inputs, naming the row
  block; entries equal to ``mask_constant`` (NaN included) are masked, not
  bad."""
  for a in jax.tree_util.tree_leaves(x):
    if not np.issubdtype(a.dtype, np.inexact):
      continue
    bad = ~np.isfinite(a)
    if mask_constant is not None:
      bad &= ~(np.isnan(a) if np.isnan(mask_constant) else a == mask_constant)
    if bad.any():
      s = int(np.argmax(bad.reshape(a.shape[0], -1).any(axis=1)))
      i = s // block
      stop = min(a.shape[0], (i + 1) * block)
      raise ValueError(
          f"batch: {name} of shape {a.shape}: rows {i * block}:{stop} (row "
          f"block {i}) contain NaN or infinite values (first at sample {s}); "
          f"kernel_fn refuses them too.")


def n_samples(tree) -> int:
  return jax.tree_util.tree_leaves(tree)[0].shape[0]


def hints(job: BlockJob) -> tuple[Optional[bool], Optional[bool]]:
  """``(diagonal_batch, diagonal_spatial)`` the call will use, if known."""
  kw = job.static_kwargs
  db, ds = kw.get("diagonal_batch"), kw.get("diagonal_spatial")
  reqs = getattr(job.kernel_fn, "reqs", None)
  if reqs is not None and hasattr(reqs, "default_diagonal_spatial"):
    db = reqs.diagonal_batch_ok if db is None else db
    ds = reqs.default_diagonal_spatial if ds is None else ds
  return db, ds


def leaf_specs(job, leaves, grid: blocks.Grid, x1p, pair1, keys,
               probe: bool = True) -> list:
  """`LeafSpec` per output leaf: kind, and for symmetric grids the mirror.

  A pair leaf whose layout the output does not state gets its mirror rule
  from a small computed kernel (`probe_mirror`); without ``probe`` (inside a
  trace, where nothing can be computed) it gets none: both halves are
  computed."""
  db_hint, ds_hint = hints(job)
  specs, to_probe = [], []
  for path, v, kernel in leaves:
    field = path.rsplit("/", 1)[-1]
    db = kernel.diagonal_batch if kernel is not None else db_hint
    kind = blocks.leaf_kind(field, tuple(v.shape), grid.b1, grid.b2, db)
    rule, source = None, None
    if kind == blocks.PAIR and grid.symmetric:
      ds = kernel.diagonal_spatial if kernel is not None else (
          ds_hint if field in ("nngp", "ntk") else None)
      if ds is not None:
        rule = blocks.BATCH if ds else blocks.ZIPPED
      else:
        to_probe.append(len(specs))
    specs.append(blocks.LeafSpec(path, kind, tuple(v.shape),
                            np.dtype(v.dtype).name, rule, source))
  # rowrow/colcol: the full cov1/cov2 is the nngp of x1 (x2) with itself.
  for k, s in enumerate(specs):
    if s.kind in (blocks.ROWROW, blocks.COLCOL):
      prefix = s.path[:-len(s.field)]
      nngp = [m for m, t in enumerate(specs)
              if t.path == prefix + "nngp" and t.kind == blocks.PAIR]
      if grid.symmetric and s.kind == blocks.ROWROW and nngp:
        src = f"leaf:{nngp[0]}"
      elif grid.symmetric:
        src = None if s.kind == blocks.COLCOL else "aux_cov1"
      else:
        src = "aux_cov1" if s.kind == blocks.ROWROW else "aux_cov2"
      specs[k] = dataclasses.replace(s, source=src)
  if probe and to_probe:
    rules = probe_mirror(job, [specs[k] for k in to_probe], x1p, pair1, keys,
                          grid)
    for k, rule in zip(to_probe, rules):
      specs[k] = dataclasses.replace(specs[k], mirror=rule)
  return specs


def probe_mirror(job, specs, x1p, pair1, keys, grid) -> list:
  """Mirror rules for pair leaves of unknown layout, read off a small
  symmetric kernel: the rule that maps ``K(x, x)`` onto itself, or None."""
  m = min(grid.n1, 3)
  if m < 2:  # one sample: one block, nothing to mirror
    return [blocks.BATCH] * len(specs)
  take = lambda t: jax.tree_util.tree_map(lambda a: a[:m], t)
  dyn_args, dyn_kwargs = job.dynamic()
  try:
    out = job.fn(True)(take(x1p), None, dyn_args, dyn_kwargs, take(pair1),
                       take(pair1), keys)
    vals = {p: np.asarray(v) for p, v, _ in blocks.flatten_output(out)[1]}
  except jax.errors.JaxRuntimeError:
    # kernel_fn reported an error from inside the compiled probe (e.g. an
    # overflow): no rule; the blocks fail their own check and explain it.
    return [None] * len(specs)
  rules = []
  for s in specs:
    v = vals[s.path].astype(np.float64)
    if not np.all(np.isfinite(v)):  # the blocks will fail their check
      rules.append(None)
      continue
    tol = 1e-4 * max(float(np.max(np.abs(v))), 1e-30)
    candidates = (blocks.ZIPPED, blocks.BATCH) if (v.ndim - 2) % 2 == 0 \
        else (blocks.BATCH,)
    # A rule that changes the shape (zipped pairs of unequal axes, e.g. a
    # diagonal axis beside an output axis) cannot be this leaf's.
    ok = [r for r in candidates
          if blocks.mirror(v, r).shape == v.shape and
          np.allclose(v, blocks.mirror(v, r), rtol=1e-4, atol=tol)]
    if v.ndim == 2 and ok:
      rules.append(blocks.BATCH)
    else:
      rules.append(ok[0] if len(ok) == 1 else None)
  return rules


class Layout:
  """Padded inputs of a grid and the inputs of each block.

  ``inputs(i, j)`` is ``(x1 rows, x2 rows or None, pair kwargs of the rows,
  pair kwargs of the columns, (row key, column key) or None)``; a diagonal
  block of a symmetric grid gets ``x2=None`` (it computes its own upper
  triangle).
  """

  def __init__(self, job: BlockJob, x1, x2, grid: blocks.Grid):
    self.grid = grid
    self.symmetric = grid.symmetric
    pad = lambda t, n: jax.tree_util.tree_map(
        lambda a: blocks.pad_rows(a, n), t)
    self.x1p = pad(x1, grid.padded1)
    self.x2p = self.x1p if grid.symmetric else pad(x2, grid.padded2)
    self.pair1, self.pair2 = job.padded_pairs(grid)
    self.keys1, self.keys2 = job.row_keys(grid)

  def inputs(self, i: int, j: int):
    g = self.grid
    r = slice(i * g.b1, (i + 1) * g.b1)
    c = slice(j * g.b2, (j + 1) * g.b2)
    take = lambda t, s: jax.tree_util.tree_map(lambda a: a[s], t)
    keys = None if self.keys1 is None else (self.keys1[i], self.keys2[j])
    xb2 = None if self.symmetric and i == j else take(self.x2p, c)
    return (take(self.x1p, r), xb2, take(self.pair1, r),
            take(self.pair2, c), keys)

  def where(self, i: int, j: int) -> str:
    """Block ``(i, j)`` in words, for error messages."""
    r, c = self.grid.rows(i), self.grid.cols(j)
    second = "x1" if self.symmetric else "x2"
    return (f"block {(i, j)} (x1 rows {r.start}:{r.stop}, {second} rows "
            f"{c.start}:{c.stop})")
