"""The upper triangle of a symmetric training kernel, block by block.

`TriangleStore` holds the blocks ``K[i, j]`` (``i <= j``, ``b x b`` examples
each) of the ``(n, n)`` training kernel(s) -- in a zarr group on disk
(``path``) or in memory (``path=None``). Lower blocks are never stored: a
product ``K v`` reads row panel ``i`` (blocks ``i..nb``) once and uses it
twice, ``y_i += K_{i,>=i} v_{>=i}`` and ``y_{>i} += K_{i,>i}^T v_i``, so the
disk holds ``n^2 / 2`` entries and one product reads them once.

Resumable: a block's ``done`` flag is written after its data, so a job killed
at any point loses at most the block being written; `fill` computes exactly
the unflagged blocks. Checkpoints of iterative solvers (`save_state` /
`load_state`) are ``.npz`` files in the store, replaced atomically
(``os.replace``), so a kill while writing one keeps the previous one.

A store written for other inputs, another network or another block size is
refused with `StoreMismatchError`: its metadata holds the sha256 of the
inputs, the kernel function's description and a *probe* (the kernel of the
first few examples), which differs between networks whose descriptions
happen to agree.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Callable, Optional

import numpy as np

from ..batching.job import fingerprint
from ..batching.progress import make_progress
from ..batching.store import StoreMismatchError
from .block_kernel import BlockKernel

__all__ = ["TriangleStore", "StoreMismatchError", "FillStats"]

FORMAT = 1
_ATTR = "widenets_triangle"
_PROBE = 4


def _zarr():
  try:
    import zarr
  except ImportError as e:
    raise ImportError("Kernel stores need zarr: pip install 'widenets[scale]' "
                      "(or pip install zarr).") from e
  return zarr


class FillStats:
  """Blocks computed by this call and found finished in the store."""

  def __init__(self, total: int):
    self.total, self.computed, self.skipped = total, 0, 0
    self.computed_blocks: list = []

  def __repr__(self):
    return (f"FillStats(total={self.total}, computed={self.computed}, "
            f"skipped={self.skipped})")


class TriangleStore:
  """Upper-triangle kernel blocks of ``x`` (see the module docstring).

  Args:
    kernel: the `BlockKernel` (its ``block_size`` is the block side).
    x: ``(n, ...)`` training inputs (NumPy).
    path: a directory for a zarr store, or None (blocks kept in memory).
  """

  def __init__(self, kernel: BlockKernel, x: np.ndarray,
               path: Optional[str] = None):
    self.kernel, self.x, self.path = kernel, x, path
    self.n, self.b = x.shape[0], kernel.block_size
    self.nb = -(-self.n // self.b)
    self._blocks: dict = {}
    self._group = None
    self.meta = self._metadata()
    if path is not None:
      self._open(os.fspath(path))

  # -- metadata ----------------------------------------------------------------
  def _metadata(self) -> dict:
    k = min(_PROBE, self.n)
    probe = self.kernel(self.x[:k])
    return json.loads(json.dumps({
        "format": FORMAT, "n": self.n, "block_size": self.b,
        "fingerprint": fingerprint(self.x),
        "kernel": self.kernel.description(),
        "probe": {g: np.asarray(v, np.float64).ravel().tolist()
                  for g, v in probe.items()}}))

  def _open(self, path: str) -> None:
    zarr = _zarr()
    if os.path.isfile(path):
      raise ValueError(f"store path {path!r} is a file; expected a "
                       f"directory (a zarr store) or a new path.")
    old = None
    if os.path.isdir(path) and os.listdir(path):
      try:
        old = zarr.open_group(path, mode="r").attrs.asdict().get(_ATTR)
      except Exception:  # noqa: BLE001 - not a zarr group
        old = None
      if old is None:
        raise ValueError(f"store path {path!r} is a non-empty directory that "
                         f"is not a widenets kernel store; pick a new path.")
      self._check_same(path, old)
      self._group = zarr.open_group(path, mode="r+")
      return
    group = zarr.open_group(path, mode="a")
    for g in self.kernel.kinds:
      group.create_array(f"k_{g}", shape=(self.n, self.n),
                         chunks=(self.b, self.b), dtype=self._dtype(),
                         fill_value=0, compressors=None, overwrite=True)
    group.create_array("done", shape=(self.nb, self.nb), chunks=(1, 1),
                       dtype="uint8", fill_value=0, overwrite=True)
    group.attrs[_ATTR] = self.meta  # last: a store without it is refused
    self._group = group

  def _dtype(self):
    if self.kernel.dtype is not None:
      return self.kernel.dtype
    return np.asarray(next(iter(self.kernel(self.x[:1]).values()))).dtype

  def _check_same(self, path: str, old: dict) -> None:
    new = self.meta
    if old.get("format") != FORMAT:
      raise StoreMismatchError(f"Store {path!r} has format "
                               f"{old.get('format')}; expected {FORMAT}.")
    if old["fingerprint"] != new["fingerprint"] or old["n"] != new["n"]:
      raise StoreMismatchError(
          f"Store {path!r} holds the kernel of other training inputs (n="
          f"{old['n']}, sha256 {old['fingerprint'][:16]}...); these inputs "
          f"have n={new['n']}, sha256 {new['fingerprint'][:16]}... Use a new "
          f"store path for a new dataset.")
    if old["kernel"] != new["kernel"]:
      raise StoreMismatchError(
          f"Store {path!r} holds the kernel of another network or call: "
          f"{old['kernel']} vs {new['kernel']}. Use a new store path.")
    if old["block_size"] != new["block_size"]:
      raise StoreMismatchError(
          f"Store {path!r} was written with block_size={old['block_size']}; "
          f"this call has block_size={new['block_size']}. Pass "
          f"block_size={old['block_size']} to reuse it.")
    for g, vals in new["probe"].items():
      ref = np.asarray(old["probe"].get(g, []))
      if ref.shape != np.shape(vals) or not np.allclose(
          ref, vals, rtol=1e-4, atol=1e-6 * float(np.max(np.abs(ref)) + 1)):
        raise StoreMismatchError(
            f"Store {path!r}: the {g!r} kernel of the first {_PROBE} "
            f"examples differs from this network's ({ref[:3]} vs "
            f"{np.asarray(vals)[:3]}...): another network wrote it. Use a "
            f"new store path.")

  # -- blocks ------------------------------------------------------------------
  def rows(self, i: int) -> slice:
    return slice(i * self.b, min(self.n, (i + 1) * self.b))

  def tasks(self):
    return [(i, j) for i in range(self.nb) for j in range(i, self.nb)]

  def done_mask(self) -> np.ndarray:
    if self._group is None:
      mask = np.zeros((self.nb, self.nb), bool)
      for ij in self._blocks:
        mask[ij] = True
      return mask
    return np.asarray(self._group["done"][...]).astype(bool)

  def _write(self, i: int, j: int, blocks: dict) -> None:
    if self._group is None:
      self._blocks[(i, j)] = blocks
      return
    r, c = self.rows(i), self.rows(j)
    for g, v in blocks.items():
      self._group[f"k_{g}"][r, c] = v
    self._group["done"][i, j] = 1  # after the data: see the module doc

  def fill(self, progress=False, callback: Optional[Callable] = None
           ) -> FillStats:
    """Computes the missing blocks; ``callback(i, j)`` after each one."""
    done = self.done_mask()
    tasks = self.tasks()
    stats = FillStats(len(tasks))
    todo = [t for t in tasks if not done[t]]
    stats.skipped = len(tasks) - len(todo)
    bar = make_progress(progress, len(tasks), stats.skipped,
                        desc="kernel blocks")
    try:
      for i, j in todo:
        xi = self.x[self.rows(i)]
        blocks = self.kernel(xi) if i == j else \
            self.kernel(xi, self.x[self.rows(j)], pad2=True)
        self._write(i, j, blocks)
        stats.computed += 1
        stats.computed_blocks.append((i, j))
        bar.update(1)
        if callback is not None:
          callback(i, j)
    finally:
      bar.close()
    return stats

  def panel(self, kind: str, i: int) -> np.ndarray:
    """Row panel ``K[rows(i), rows(i).start:]`` (blocks ``i..nb``)."""
    if self._group is None:
      return np.concatenate([self._blocks[(i, j)][kind]
                             for j in range(i, self.nb)], axis=1)
    r = self.rows(i)
    return np.asarray(self._group[f"k_{kind}"][r, r.start:])

  def matvec(self, kind: str, v: np.ndarray) -> np.ndarray:
    """``K v`` for ``v`` of shape ``(n, c)``, one pass over the triangle."""
    out = np.zeros((self.n, v.shape[1]), np.result_type(v.dtype, np.float32))
    for i in range(self.nb):
      r = self.rows(i)
      p = self.panel(kind, i).astype(out.dtype, copy=False)
      out[r] += p @ v[r.start:]
      if r.stop < self.n:
        out[r.stop:] += p[:, r.stop - r.start:].T @ v[r]
    return out

  def diagonal(self, kind: str) -> np.ndarray:
    parts = []
    for i in range(self.nb):
      r = self.rows(i)
      if self._group is None:
        blk = self._blocks[(i, i)][kind]
      else:
        blk = np.asarray(self._group[f"k_{kind}"][r, r])
      parts.append(np.diagonal(blk))
    return np.concatenate(parts)

  def nbytes_on_disk(self) -> int:
    if self.path is None:
      return 0
    total = 0
    for root, _, files in os.walk(self.path):
      total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total

  # -- solver checkpoints ---------------------------------------------------
  def _state_path(self, name: str) -> Optional[str]:
    return None if self.path is None else os.path.join(self.path,
                                                       f"{name}.npz")

  def save_state(self, name: str, key: str, arrays: dict) -> None:
    """Atomically writes ``arrays`` (tagged with ``key``) as ``name``."""
    path = self._state_path(name)
    if path is None:
      return
    fd, tmp = tempfile.mkstemp(dir=self.path, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
      np.savez(f, __key__=np.asarray(key), **arrays)
    os.replace(tmp, path)

  def load_state(self, name: str, key: str) -> Optional[dict]:
    """The arrays saved as ``name`` with the same ``key``, or None."""
    path = self._state_path(name)
    if path is None or not os.path.exists(path):
      return None
    with np.load(path) as f:
      if str(f["__key__"]) != key:
        return None
      return {k: f[k] for k in f.files if k != "__key__"}
