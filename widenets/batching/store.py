"""Zarr stores for batched kernels: written block by block, resumable.

Layout of a store (a zarr group):

* attribute ``widenets_batch``: format version, the inputs' fingerprint
  (sha256 of the bytes, shapes and dtypes of x1, x2 and array arguments), the
  architecture (kernel function description, static ``get``/kwargs), the block
  grid, the output structure and one `LeafSpec` per output leaf;
* ``leaf_<k>``: the assembled leaf ``k``, chunked by block;
* ``done``: ``(nb1, nb2)`` flags, one chunk each. A block's flag is written
  only after all its data (zarr writes each chunk atomically), so a job killed
  at any point leaves every flagged block complete; rerunning the same call
  computes exactly the unflagged blocks.
* ``aux_cov1``/``aux_cov2``: nested stores for the full ``cov1``/``cov2`` of
  ``diagonal_batch=False`` kernels (symmetric jobs of their own).

A store made from other inputs or another network is refused, never mixed.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from . import blocks as B

__all__ = ["BlockStore", "open_store", "StoreMismatchError"]

FORMAT = 1
_ATTR = "widenets_batch"


class StoreMismatchError(ValueError):
  """The store holds a kernel of different inputs, network or layout."""


def _zarr():
  try:
    import zarr
  except ImportError as e:
    raise ImportError("Kernel stores need zarr: pip install 'widenets[scale]' "
                      "(or pip install zarr).") from e
  return zarr


def check_path(path) -> str:
  """Validates a store path: a directory or a path that does not exist."""
  path = os.fspath(path)
  if os.path.isfile(path):
    raise ValueError(f"batch: store path {path!r} is a file; expected a "
                     f"directory (a zarr store) or a path that does not "
                     f"exist yet.")
  if os.path.isdir(path) and os.listdir(path) and not any(
      os.path.exists(os.path.join(path, f))
      for f in ("zarr.json", ".zgroup")):
    raise ValueError(f"batch: store path {path!r} is a non-empty directory "
                     f"that is not a zarr store; pick a new path.")
  return path


def _diff(a: dict, b: dict) -> str:
  keys = sorted(set(a) | set(b))
  lines = [f"  {k}: store has {a.get(k)!r}, this call has {b.get(k)!r}"
           for k in keys if a.get(k) != b.get(k)]
  return "\n".join(lines)


class BlockStore:
  """One batched kernel in a zarr group (see the module docstring)."""

  def __init__(self, group, meta: dict, path: str):
    self.group = group
    self.path = path
    self.meta = meta
    self.grid = B.Grid(**meta["grid"])
    self.specs = [B.LeafSpec(**{**s, "block_shape": tuple(s["block_shape"])})
                  for s in meta["leaves"]]
    self._arrays = {}

  # -- open / create -----------------------------------------------------------
  @classmethod
  def existing_meta(cls, path) -> Optional[dict]:
    """The metadata of the store at ``path``, or None if there is none."""
    path = check_path(path)
    if not os.path.isdir(path):
      return None
    try:
      group = _zarr().open_group(path, mode="r")
    except Exception:
      return None
    meta = group.attrs.asdict().get(_ATTR)
    return None if meta is None else json.loads(json.dumps(meta))

  @classmethod
  def open(cls, path, meta: dict) -> "BlockStore":
    """Opens (checking it matches ``meta``) or creates the store at ``path``."""
    path = check_path(path)
    zarr = _zarr()
    old = cls.existing_meta(path)
    # Round-trip through JSON so tuples/lists compare as stored.
    meta = json.loads(json.dumps(meta))
    if old is not None:
      _check_same(path, old, meta)
      return cls(zarr.open_group(path, mode="r+"), old, path)
    group = zarr.open_group(path, mode="a")
    store = cls(group, meta, path)
    store._create()
    group.attrs[_ATTR] = meta  # last: a store without it is recreated
    return store

  def _create(self) -> None:
    g, grid = self.group, self.grid
    for k, spec in enumerate(self.specs):
      if spec.kind in (B.ROWROW, B.COLCOL):
        continue  # nested stores
      shape = B.full_shape(spec, grid)
      if spec.kind == B.PAIR:
        chunks = (grid.b1, grid.b2) + shape[2:]
      elif spec.kind == B.ROW:
        chunks = (grid.b1,) + shape[1:]
      elif spec.kind == B.COL:
        chunks = (grid.b2,) + shape[1:]
      else:
        chunks = shape
      g.create_array(f"leaf_{k}", shape=shape, chunks=chunks,
                     dtype=spec.dtype, fill_value=0, overwrite=True)
    g.create_array("done", shape=(grid.nb1, grid.nb2), chunks=(1, 1),
                   dtype="uint8", fill_value=0, overwrite=True)

  def _array(self, name):
    if name not in self._arrays:
      self._arrays[name] = self.group[name]
    return self._arrays[name]

  # -- blocks --------------------------------------------------------------------
  def done_mask(self) -> np.ndarray:
    return np.asarray(self._array("done")[...]).astype(bool)

  def write_block(self, i: int, j: int, leaves: dict, mirror: bool) -> None:
    """Writes block ``(i, j)`` (trimmed numpy leaves by path, only those this
    block provides: see `assemble.trim`), then its flag.

    ``mirror``: also write block ``(j, i)`` as the mirror and flag it.
    """
    grid = self.grid
    r, c = grid.rows(i), grid.cols(j)
    for k, spec in enumerate(self.specs):
      v = leaves.get(spec.path)
      if v is None or spec.kind in (B.ROWROW, B.COLCOL, B.FLAG):
        continue
      a = self._array(f"leaf_{k}")
      if spec.kind == B.PAIR:
        a[r, c] = v
        if mirror:
          a[c, r] = B.mirror(v, spec.mirror)
      elif spec.kind == B.ROW:
        a[r] = v
      elif spec.kind == B.COL:
        a[c] = v
      else:
        a[...] = v
    done = self._array("done")
    done[i, j] = 1
    if mirror:
      done[j, i] = 1

  def write_flag(self, k: int, value) -> None:
    self._array(f"leaf_{k}")[...] = np.asarray(value)

  def read_leaf(self, k: int, lazy: bool = False):
    a = self._array(f"leaf_{k}")
    if not lazy:
      return np.asarray(a[...])
    try:
      import dask.array as da
      return da.from_zarr(a)
    except ImportError:
      return a

  def set_complete(self) -> None:
    meta = dict(self.meta)
    meta["complete"] = True
    self.meta = meta
    self.group.attrs[_ATTR] = meta


def _check_same(path: str, old: dict, new: dict) -> None:
  if old.get("format") != FORMAT:
    raise StoreMismatchError(f"Store {path!r} has format {old.get('format')}; "
                             f"this widenets writes format {FORMAT}.")
  if old["fingerprint"] != new["fingerprint"]:
    raise StoreMismatchError(
        f"Store {path!r} holds a kernel of different inputs: its fingerprint "
        f"(sha256 of x1, x2 and array arguments) is {old['fingerprint'][:16]}"
        f"..., these inputs give {new['fingerprint'][:16]}... Use a new store "
        f"path for new inputs.")
  if old["architecture"] != new["architecture"]:
    raise StoreMismatchError(
        f"Store {path!r} holds a kernel of a different network or call:\n"
        f"{_diff(old['architecture'], new['architecture'])}\nUse a new store "
        f"path for a new network.")
  if old["grid"] != new["grid"]:
    raise StoreMismatchError(
        f"Store {path!r} was written with another block grid:\n"
        f"{_diff(old['grid'], new['grid'])}\nRerun with "
        f"batch_size={old['grid']['b1']} (or 'auto', which reuses it).")
  if old["leaves"] != new["leaves"] or old["structure"] != new["structure"]:
    raise StoreMismatchError(
        f"Store {path!r} holds another output structure (a different `get` "
        f"or kernel layout).")


def open_store(path, lazy: Optional[bool] = None,
               lazy_bytes: int = 2**30, allow_incomplete: bool = False):
  """The kernel held by a store written by ``batch(..., store=path)``.

  Args:
    path: the store directory.
    lazy: return leaves as dask arrays (zarr arrays without dask) instead of
      numpy arrays. Default: lazy when the kernel is over ``lazy_bytes``.
    allow_incomplete: open a store whose job has not finished (missing blocks
      read as zeros); otherwise that is an error.

  Returns:
    The same structure the batched call returns (`Kernel`, namedtuple, array
    or pytree).
  """
  from . import assemble
  meta = BlockStore.existing_meta(path)
  if meta is None:
    raise ValueError(f"open_store: {os.fspath(path)!r} is not a widenets "
                     f"kernel store.")
  store = BlockStore(_zarr().open_group(os.fspath(path), mode="r"), meta,
                     os.fspath(path))
  if not meta.get("complete") and not allow_incomplete:
    missing = int((~store.done_mask()).sum())
    raise ValueError(f"open_store: the job writing {os.fspath(path)!r} has "
                     f"not finished ({missing} blocks missing). Rerun the same "
                     f"batched call to complete it, or pass "
                     f"allow_incomplete=True.")
  return assemble.from_store(store, lazy=lazy, lazy_bytes=lazy_bytes)
