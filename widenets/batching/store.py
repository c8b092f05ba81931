"""Zarr stores for batched kernels: written block by block, resumable, checked.

Layout of a store (a directory holding a zarr group):

* ``widenets_store.json``: the marker (see `claims`), written first; nothing
  in a directory without it is ever written, overwritten or removed;
* attribute ``widenets_batch``: format version, the inputs' fingerprint
  (sha256 of the bytes, shapes and dtypes of x1, x2 and array arguments), the
  architecture (kernel function description, static ``get``/kwargs, the
  optional ``store_key``), the block grid, the output structure and one
  `LeafSpec` per output leaf;
* ``leaf_<k>``: the assembled leaf ``k``, chunked by block;
* ``blocks``: ``(nb1, nb2, 1 + n_leaves)`` uint64, one chunk per block:
  entry ``1 + k`` is the checksum (64-bit BLAKE2b) of the part of leaf ``k``
  the block wrote, entry 0 a non-zero done mark. It is written after the
  block's data, in one chunk (zarr writes a chunk atomically), so a job killed
  at any point leaves every marked block complete, and a chunk deleted,
  truncated, flipped or copied over another afterwards fails its checksum;
* ``claims/``: per-block claim files of running jobs (see `claims`);
* ``aux_cov1``/``aux_cov2``: nested stores for the full ``cov1``/``cov2`` of
  ``diagonal_batch=False`` kernels (symmetric jobs of their own).

A store made from other inputs or another network is refused, never mixed.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

import numpy as np

from . import assemble, blocks, claims

__all__ = ["BlockStore", "open_store", "from_store", "StoreMismatchError",
           "StoreCorruptionError", "FORMAT"]

FORMAT = 2
_ATTR = "widenets_batch"


class StoreMismatchError(ValueError):
  """The store holds a kernel of different inputs, network or layout."""


class StoreCorruptionError(ValueError):
  """A file of the store is missing, unreadable or fails its checksum."""


def import_zarr():
  try:
    import zarr
  except ImportError as e:
    raise ImportError("Kernel stores need zarr: pip install 'widenets[scale]' "
                      "(or pip install zarr).") from e
  return zarr


def digest(a) -> int:
  """A non-zero 64-bit checksum of an array's shape, dtype and bytes."""
  a = np.ascontiguousarray(a)
  h = hashlib.blake2b(digest_size=8)
  h.update(f"{a.shape}{a.dtype.str};".encode())
  h.update(memoryview(a).cast("B") if a.size else b"")
  return int.from_bytes(h.digest(), "little") | 1


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).split()) or type(e).__name__


def _diff(a: dict, b: dict) -> str:
  keys = sorted(set(a) | set(b))
  lines = [f"  {k}: store has {a.get(k)!r}, this call has {b.get(k)!r}"
           for k in keys if a.get(k) != b.get(k)]
  return "\n".join(lines)


def _open_group(path: str, mode: str):
  try:
    return import_zarr().open_group(path, mode=mode)
  except (ValueError, KeyError, TypeError) as e:
    raise StoreCorruptionError(
        f"Store {path!r}: {os.path.join(path, 'zarr.json')} does not parse "
        f"({_one_line(e)}).") from e


def read_meta(path: str) -> Optional[dict]:
  """The metadata of our store at ``path``; None if it has none yet.

  Raises for a directory that is not ours, and for metadata that does not
  parse (naming the file).
  """
  if not os.path.isdir(path):
    return None
  claims.refuse_foreign(path)
  if not os.path.isfile(os.path.join(path, "zarr.json")):
    return None
  meta = _open_group(path, "r").attrs.asdict().get(_ATTR)
  return None if meta is None else json.loads(json.dumps(meta))


class BlockStore:
  """One batched kernel in a zarr group (see the module docstring)."""

  def __init__(self, path: str, meta: dict, mode: str = "r"):
    self.path = path
    self.meta = meta
    self.mode = mode
    self.group = _open_group(path, mode)
    self.grid = blocks.Grid(**meta["grid"])
    self.specs = [blocks.LeafSpec(
        **{**s, "block_shape": tuple(s["block_shape"])})
        for s in meta["leaves"]]
    self._arrays = {}

  # -- open / create -----------------------------------------------------------
  @classmethod
  def open(cls, path, meta: dict) -> "BlockStore":
    """Opens (checking it matches ``meta``) or creates the store at ``path``.

    A complete store is opened read-only (it may live on a read-only disk).
    """
    path = claims.check_path(path)
    meta = json.loads(json.dumps(meta))  # tuples/lists compare as stored
    old = read_meta(path)
    if old is None:
      claims.prepare_dir(path, FORMAT)
      lock = claims.Claims(path)
      lock.claim_waiting("create")
      try:
        old = read_meta(path)  # another process may have made it meanwhile
        if old is None:
          store = cls._create(path, meta)
      finally:
        lock.release_all()
      if old is None:
        return store
    check_same(path, old, meta)
    return cls(path, old, "r" if old.get("complete") else "r+")

  @classmethod
  def _create(cls, path: str, meta: dict) -> "BlockStore":
    if not claims.is_ours(path):  # never overwrite what is not ours
      raise ValueError(f"batch: {path!r} is not a widenets store.")
    group = import_zarr().open_group(path, mode="a")
    grid = blocks.Grid(**meta["grid"])
    specs = [blocks.LeafSpec(**{**s, "block_shape": tuple(s["block_shape"])})
             for s in meta["leaves"]]
    for k, spec in enumerate(specs):
      if spec.kind in (blocks.ROWROW, blocks.COLCOL):
        continue  # nested stores
      shape = blocks.full_shape(spec, grid)
      if spec.kind == blocks.PAIR:
        chunks = (grid.b1, grid.b2) + shape[2:]
      elif spec.kind == blocks.ROW:
        chunks = (grid.b1,) + shape[1:]
      elif spec.kind == blocks.COL:
        chunks = (grid.b2,) + shape[1:]
      else:
        chunks = shape
      group.create_array(f"leaf_{k}", shape=shape, chunks=chunks,
                         dtype=spec.dtype, fill_value=0, overwrite=True)
    n = 1 + len(specs)
    group.create_array("blocks", shape=(grid.nb1, grid.nb2, n),
                       chunks=(1, 1, n), dtype="uint64", fill_value=0,
                       overwrite=True)
    group.attrs[_ATTR] = meta  # last: a store without it is recreated
    return cls(path, meta, "r+")

  def _array(self, name):
    if name not in self._arrays:
      try:
        self._arrays[name] = self.group[name]
      except (ValueError, KeyError, TypeError) as e:
        raise StoreCorruptionError(
            f"Store {self.path!r}: array {name!r} cannot be opened: "
            f"{os.path.join(self.path, name, 'zarr.json')} is missing or "
            f"does not parse ({_one_line(e)}).") from e
    return self._arrays[name]

  def chunk_file(self, k: Optional[int], i: int, j: int) -> str:
    """The file holding block ``(i, j)`` of leaf ``k`` (None: its checksum)."""
    if k is None:
      coords = (i, j, 0)
      name = "blocks"
    else:
      spec = self.specs[k]
      nd = len(blocks.full_shape(spec, self.grid))
      lead = {blocks.PAIR: (i, j), blocks.ROW: (i,), blocks.COL: (j,)}.get(
          spec.kind, ())
      coords = lead + (0,) * (nd - len(lead))
      name = f"leaf_{k}"
    return os.path.join(self.path, name, "c", *map(str, coords))

  # -- checksums ---------------------------------------------------------------
  def checksums(self, strict: bool) -> np.ndarray:
    """``(nb1, nb2, 1 + n_leaves)`` checksums; entry 0 non-zero: done.

    An unreadable checksum chunk raises (``strict``) or reads as not done.
    """
    a = self._array("blocks")
    try:
      return np.asarray(a[...])
    except Exception:  # noqa: BLE001 - find the broken chunk below
      pass
    out = np.zeros(a.shape, np.uint64)
    for i in range(a.shape[0]):
      for j in range(a.shape[1]):
        try:
          out[i, j] = a[i, j]
        except Exception as e:  # noqa: BLE001 - corrupted chunk
          if strict:
            raise StoreCorruptionError(
                f"Store {self.path!r}: block {(i, j)}: its checksum file "
                f"{self.chunk_file(None, i, j)} is unreadable "
                f"({_one_line(e)}).") from e
    return out

  def done_mask(self) -> np.ndarray:
    return self.checksums(strict=False)[..., 0] != 0

  def block_done(self, i: int, j: int) -> bool:
    try:
      return bool(self._array("blocks")[i, j, 0] != 0)
    except Exception:  # noqa: BLE001 - a corrupted chunk: not done
      return False

  def _region_error(self, k: int, i: int, j: int, e=None) -> str:
    where = (f"Store {self.path!r}: block {(i, j)} of "
             f"{self.specs[k].path!r}")
    if e is not None:
      return (f"{where} cannot be read from {self.chunk_file(k, i, j)} "
              f"({_one_line(e)}).")
    return (f"{where} fails its checksum: {self.chunk_file(k, i, j)} was "
            f"changed, truncated, deleted or copied over after it was "
            f"written.")

  def read_region(self, k: int, i: int, j: int, expected: int):
    """Leaf ``k``'s part of block ``(i, j)``, checked against ``expected``."""
    region = blocks.owned_region(self.specs[k], self.grid, i, j)
    try:
      v = np.asarray(self._array(f"leaf_{k}")[region])
    except StoreCorruptionError:
      raise
    except Exception as e:  # noqa: BLE001 - zarr/codec errors vary
      raise StoreCorruptionError(self._region_error(k, i, j, e)) from e
    if digest(v) != int(expected):
      raise StoreCorruptionError(self._region_error(k, i, j))
    return v

  def _owners(self, k: int) -> list:
    spec, grid = self.specs[k], self.grid
    return [(i, j) for i in range(grid.nb1) for j in range(grid.nb2)
            if blocks.owned_region(spec, grid, i, j) is not None]

  def checked_leaf(self, k: int, sums: np.ndarray) -> tuple[np.ndarray, dict]:
    """``(leaf k, {block: message})``: the full leaf (blocks not done read as
    zeros) and the done blocks that cannot be read or fail their checksum.
    """
    spec, a = self.specs[k], self._array(f"leaf_{k}")
    owners = self._owners(k)
    errors = {}
    try:  # one read; block by block only to find what is broken
      full = np.asarray(a[...])
    except Exception:  # noqa: BLE001 - zarr/codec errors vary
      full = np.zeros(blocks.full_shape(spec, self.grid), spec.dtype)
      for i, j in owners:
        region = blocks.owned_region(spec, self.grid, i, j)
        try:
          full[region] = a[region]
        except Exception as e:  # noqa: BLE001
          errors[(i, j)] = self._region_error(k, i, j, e)
    for i, j in owners:
      region = blocks.owned_region(spec, self.grid, i, j)
      if not sums[i, j, 0]:
        full[region] = 0
      elif (i, j) not in errors and sums[i, j, 1 + k] and (
          digest(full[region]) != int(sums[i, j, 1 + k])):
        errors[(i, j)] = self._region_error(k, i, j)
    return full, errors

  def damaged(self, sums: np.ndarray) -> dict:
    """``{(i, j): message}`` for done blocks whose data fail their checks."""
    bad = {}
    for k, spec in enumerate(self.specs):
      if spec.kind in (blocks.PAIR, blocks.ROW, blocks.COL, blocks.CONST):
        for b, msg in self.checked_leaf(k, sums)[1].items():
          bad.setdefault(b, msg)
    return bad

  # -- writing -----------------------------------------------------------------
  def write_block(self, i: int, j: int, leaves: dict, mirror: bool) -> None:
    """Writes block ``(i, j)`` (trimmed numpy leaves by path, only those this
    block provides: see `assemble.trim`), then its checksums.

    ``mirror``: also write block ``(j, i)`` as the mirror and its checksums.
    """
    grid, n = self.grid, 1 + len(self.specs)
    sums, mirror_sums = np.zeros(n, np.uint64), np.zeros(n, np.uint64)
    for k, spec in enumerate(self.specs):
      v = leaves.get(spec.path)
      if v is None or spec.kind in (blocks.ROWROW, blocks.COLCOL,
                                    blocks.FLAG):
        continue
      a = self._array(f"leaf_{k}")
      v = np.asarray(v, spec.dtype)
      a[blocks.owned_region(spec, grid, i, j)] = v
      sums[1 + k] = digest(v)
      if mirror and spec.kind == blocks.PAIR:
        m = np.ascontiguousarray(blocks.mirror(v, spec.mirror))
        a[blocks.owned_region(spec, grid, j, i)] = m
        mirror_sums[1 + k] = digest(m)
    sums[0] = digest(sums[1:])
    self._array("blocks")[i, j] = sums
    if mirror:
      mirror_sums[0] = digest(mirror_sums[1:])
      self._array("blocks")[j, i] = mirror_sums

  def set_complete(self, flags: dict) -> None:
    """Marks the job finished, with the host-computed flag leaves."""
    if self.meta.get("complete"):
      return
    meta = dict(self.meta, complete=True,
                flags={str(k): bool(v) for k, v in flags.items()})
    self.meta = meta
    self.group.attrs[_ATTR] = meta

  # -- reading -----------------------------------------------------------------
  def read_leaf(self, k: int, lazy: bool = False,
                allow_incomplete: bool = False):
    """The full leaf ``k``, every block checked against its checksum."""
    spec, grid = self.specs[k], self.grid
    if spec.kind == blocks.FLAG:
      return np.asarray(self.meta.get("flags", {}).get(str(k), False),
                        spec.dtype)
    sums = self.checksums(strict=True)
    for i, j in self._owners(k):
      if not sums[i, j, 0] and not allow_incomplete:
        raise StoreCorruptionError(
            f"Store {self.path!r}: block {(i, j)} is marked missing although "
            f"the job finished ({self.chunk_file(None, i, j)} was deleted or "
            f"reset). Rerun the batched call to recompute it.")
    if lazy and spec.kind == blocks.PAIR:
      try:
        import dask.array as da
      except ImportError:
        lazy = False
      else:
        return da.from_array(_CheckedLeaf(self, k, sums),
                             chunks=(grid.b1, grid.b2) + tuple(
                                 spec.block_shape[2:]), asarray=True,
                             lock=False, fancy=False)
    full, errors = self.checked_leaf(k, sums)
    if errors:
      raise StoreCorruptionError(errors[min(errors)])
    return full


class _CheckedLeaf:
  """Array-like over a pair leaf whose chunk reads are checksum-checked
  (``dask.array.from_array`` reads it one block at a time)."""

  def __init__(self, store: BlockStore, k: int, sums: np.ndarray):
    self.store, self.k, self.sums = store, k, sums
    spec = store.specs[k]
    self.shape = blocks.full_shape(spec, store.grid)
    self.dtype = np.dtype(spec.dtype)
    self.ndim = len(self.shape)

  def __getitem__(self, index):
    grid = self.store.grid
    rows, cols = index[0], index[1]
    i, j = rows.start // grid.b1, cols.start // grid.b2
    if (rows, cols) != (grid.rows(i), grid.cols(j)) or not self.sums[i, j, 0]:
      full = self.store.read_leaf(self.k)  # not one block: read all
      return full[index]
    v = self.store.read_region(self.k, i, j, self.sums[i, j, 1 + self.k])
    return v[(slice(None), slice(None)) + tuple(index[2:])]


def check_same(path: str, old: dict, new: dict) -> None:
  """Raises `StoreMismatchError` unless ``old`` metadata matches ``new``."""
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


def from_store(store: BlockStore, lazy: Optional[bool] = None,
               lazy_bytes: int = 2**30, allow_incomplete: bool = False):
  """The kernel in a `BlockStore`, every block checked (see `open_store`)."""
  grid = store.grid
  nested = (blocks.ROWROW, blocks.COLCOL)
  total = sum(int(np.prod(blocks.full_shape(s, grid))) *
              np.dtype(s.dtype).itemsize
              for s in store.specs if s.kind not in nested)
  if lazy is None:
    lazy = total > lazy_bytes
  values = {}
  for k, spec in enumerate(store.specs):
    if spec.kind not in nested:
      values[k] = store.read_leaf(k, lazy=lazy,
                                  allow_incomplete=allow_incomplete)
  for k, spec in enumerate(store.specs):
    if spec.kind not in nested or (grid.symmetric and
                                   spec.kind == blocks.COLCOL):
      continue
    if spec.source.startswith("leaf:"):
      values[k] = values[int(spec.source[5:])]
    else:
      values[k] = open_store(os.path.join(store.path, spec.source), lazy=lazy,
                             lazy_bytes=lazy_bytes,
                             allow_incomplete=allow_incomplete)
  return assemble.build_output(store.meta["structure"], store.specs, grid,
                               values)


def open_store(path, lazy: Optional[bool] = None,
               lazy_bytes: int = 2**30, allow_incomplete: bool = False):
  """The kernel held by a store written by ``batch(..., store=path)``.

  Every block is checked against the checksum written with it; a missing,
  truncated, changed or swapped chunk raises `StoreCorruptionError` naming
  the block and the file (lazily: when that chunk is computed).

  Args:
    path: the store directory.
    lazy: return pair leaves as dask arrays instead of numpy arrays.
      Default: lazy when the kernel is over ``lazy_bytes``.
    allow_incomplete: open a store whose job has not finished (missing blocks
      read as zeros); otherwise that is an error.

  Returns:
    The same structure the batched call returns (`Kernel`, namedtuple, array
    or pytree).
  """
  spath = claims.check_path(path)
  meta = read_meta(spath) if claims.is_ours(spath) else None
  if meta is None:
    raise ValueError(f"open_store: {spath!r} is not a widenets kernel store.")
  if meta.get("format") != FORMAT:
    raise ValueError(f"open_store: {spath!r} has format {meta.get('format')};"
                     f" this widenets reads format {FORMAT}.")
  store = BlockStore(spath, meta, "r")
  if not meta.get("complete") and not allow_incomplete:
    missing = int((~store.done_mask()).sum())
    raise ValueError(f"open_store: the job writing {spath!r} has not "
                     f"finished ({missing} blocks missing). Rerun the same "
                     f"batched call to complete it, or pass "
                     f"allow_incomplete=True.")
  return from_store(store, lazy=lazy, lazy_bytes=lazy_bytes,
                    allow_incomplete=allow_incomplete)
